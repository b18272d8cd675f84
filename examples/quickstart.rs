//! alice and bob (and carol, for the busy case) on the in-process hub.
//! Five calls, and every one of the ten callbacks fires where it should:
//!
//! 1. alice calls bob, bob accepts, alice hangs up;
//! 2. alice calls bob, nobody answers: timeout (3 s ring);
//! 3. alice calls bob, bob declines;
//! 4. carol calls bob and bob accepts; alice calls bob: busy;
//! 5. alice calls bob and cancels.
//!
//! Run: `cargo run --example quickstart`

use std::time::Duration;

use anyhow::{Context, Result, bail};
use invitation::prelude::*;
use invitation::{Fanout, Recorder};
use tokio::sync::broadcast;

/// Prints every callback, and answers incoming calls the way the caller's
/// custom data asks (a demo shortcut: a real app asks its user).
struct Printer {
    who: &'static str,
}

fn data(d: Option<&CustomData>) -> &str {
    d.map_or("", |d| d.as_str())
}

#[async_trait]
impl InvitationEvents for Printer {
    async fn on_incoming_call_received(
        &self,
        ctx: &CallContext,
        call_id: &CallId,
        caller: &User,
        call_type: CallType,
        _callees: &[User],
        custom_data: Option<&CustomData>,
    ) {
        println!(
            "  [{}] on_incoming_call_received       {call_id} from {} ({call_type:?}) data={:?}",
            self.who,
            caller.name,
            data(custom_data)
        );
        let result = match data(custom_data) {
            "please accept" => ctx.accept().await,
            "please decline" => ctx.decline().await,
            _ => Ok(()), // let it ring
        };
        if let Err(e) = result {
            println!("  [{}] could not answer: {e}", self.who);
        }
    }
    async fn on_incoming_call_canceled(
        &self,
        ctx: &CallContext,
        call_id: &CallId,
        caller: &User,
        _: Option<&CustomData>,
    ) {
        println!(
            "  [{}] on_incoming_call_canceled       {call_id} from {} (reason: {})",
            self.who,
            caller.name,
            ctx.reason().map_or("?", |r| r.as_str())
        );
    }
    async fn on_incoming_call_timeout(&self, _: &CallContext, call_id: &CallId, caller: &User) {
        println!(
            "  [{}] on_incoming_call_timeout        {call_id} from {}",
            self.who, caller.name
        );
    }
    async fn on_incoming_call_accept_button_pressed(&self, _: &CallContext, call_id: &CallId) {
        println!(
            "  [{}] on_incoming_call_accept_button_pressed  {call_id}",
            self.who
        );
    }
    async fn on_incoming_call_decline_button_pressed(&self, _: &CallContext, call_id: &CallId) {
        println!(
            "  [{}] on_incoming_call_decline_button_pressed {call_id}",
            self.who
        );
    }
    async fn on_outgoing_call_cancel_button_pressed(&self, _: &CallContext, call_id: &CallId) {
        println!(
            "  [{}] on_outgoing_call_cancel_button_pressed  {call_id}",
            self.who
        );
    }
    async fn on_outgoing_call_accepted(&self, _: &CallContext, call_id: &CallId, callee: &UserId) {
        println!(
            "  [{}] on_outgoing_call_accepted       {call_id} by {callee}",
            self.who
        );
    }
    async fn on_outgoing_call_rejected_cause_busy(
        &self,
        _: &CallContext,
        call_id: &CallId,
        callee: &UserId,
        _: Option<&CustomData>,
    ) {
        println!(
            "  [{}] on_outgoing_call_rejected_cause_busy {call_id}: {callee} is busy",
            self.who
        );
    }
    async fn on_outgoing_call_declined(&self, _: &CallContext, call_id: &CallId, callee: &UserId) {
        println!(
            "  [{}] on_outgoing_call_declined       {call_id} by {callee}",
            self.who
        );
    }
    async fn on_outgoing_call_timeout(
        &self,
        _: &CallContext,
        call_id: &CallId,
        callee: &UserId,
        _: Option<&CustomData>,
    ) {
        println!(
            "  [{}] on_outgoing_call_timeout        {call_id}: {callee} did not answer",
            self.who
        );
    }
}

async fn client(
    hub: &MemoryHub,
    id: &'static str,
    name: &str,
    recorder: &Recorder,
) -> Result<Client> {
    let user = User::named(id, name);
    let client = Client::builder()
        .user(user.clone())
        .device("phone")
        .transport(hub.transport(user))
        .handler(Fanout(vec![
            std::sync::Arc::new(Printer { who: id }),
            std::sync::Arc::new(recorder.clone()),
        ]))
        .ring_timeout(Duration::from_secs(3))
        .build()?;
    client.connect().await?;
    Ok(client)
}

/// Waits for the first event matching `f` (10 s at most).
async fn wait_for(
    rx: &mut broadcast::Receiver<AppEvent>,
    what: &str,
    f: impl Fn(&AppEvent) -> bool,
) -> Result<AppEvent> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let e = rx.recv().await?;
            if f(&e) {
                return Ok::<_, anyhow::Error>(e);
            }
        }
    })
    .await
    .with_context(|| format!("waiting for {what}"))?
}

fn data_of(s: &str) -> Option<CustomData> {
    Some(CustomData::new(s).expect("short"))
}

#[tokio::main]
async fn main() -> Result<()> {
    let hub = MemoryHub::new();
    let recorder = Recorder::new();
    let alice = client(&hub, "alice", "Alice", &recorder).await?;
    let bob = client(&hub, "bob", "Bob", &recorder).await?;
    let carol = client(&hub, "carol", "Carol", &recorder).await?;
    let mut b = bob.events();

    // Waiting on the recorder (not the raw event stream) keeps the printed
    // callbacks in the order of the story.
    let r = &recorder;
    println!("1. alice calls bob; bob accepts; alice hangs up");
    let call = alice
        .invite(["bob"], CallType::Video, data_of("please accept"))
        .await?;
    r.wait_for("on_outgoing_call_accepted", 1).await;
    r.wait_for("on_incoming_call_accept_button_pressed", 1)
        .await;
    alice.hang_up(&call.call_id).await?;
    wait_for(&mut b, "call ended", |e| {
        matches!(e, AppEvent::CallEnded { .. })
    })
    .await?;

    println!("2. alice calls bob; nobody answers (3 s ring)");
    alice
        .invite(["bob"], CallType::Voice, data_of("let it ring"))
        .await?;
    r.wait_for("on_outgoing_call_timeout", 1).await;
    r.wait_for("on_incoming_call_timeout", 1).await;

    println!("3. alice calls bob; bob declines");
    alice
        .invite(["bob"], CallType::Voice, data_of("please decline"))
        .await?;
    r.wait_for("on_outgoing_call_declined", 1).await;
    r.wait_for("on_incoming_call_decline_button_pressed", 1)
        .await;

    println!("4. carol calls bob and bob accepts; then alice calls bob: busy");
    let with_carol = carol
        .invite(["bob"], CallType::Voice, data_of("please accept"))
        .await?;
    r.wait_for("on_incoming_call_accept_button_pressed", 2)
        .await;
    r.wait_for("on_outgoing_call_accepted", 2).await;
    alice
        .invite(["bob"], CallType::Voice, data_of("please accept"))
        .await?;
    r.wait_for("on_outgoing_call_rejected_cause_busy", 1).await;
    carol.hang_up(&with_carol.call_id).await?;
    wait_for(&mut b, "call ended", |e| {
        matches!(e, AppEvent::CallEnded { .. })
    })
    .await?;

    println!("5. alice calls bob and cancels");
    let call = alice
        .invite(["bob"], CallType::Video, data_of("let it ring"))
        .await?;
    r.wait_for("on_incoming_call_received", 5).await;
    alice.cancel(&call.call_id).await?;
    r.wait_for("on_incoming_call_canceled", 1).await;
    r.wait_for("on_outgoing_call_cancel_button_pressed", 1)
        .await;

    let ten = [
        "on_incoming_call_received",
        "on_incoming_call_canceled",
        "on_incoming_call_timeout",
        "on_incoming_call_accept_button_pressed",
        "on_incoming_call_decline_button_pressed",
        "on_outgoing_call_cancel_button_pressed",
        "on_outgoing_call_accepted",
        "on_outgoing_call_rejected_cause_busy",
        "on_outgoing_call_declined",
        "on_outgoing_call_timeout",
    ];
    println!("\nall ten callbacks:");
    let mut missing = Vec::new();
    for name in ten {
        let n = recorder.count(name);
        println!("  {:<42} fired {n}x", name);
        if n == 0 {
            missing.push(name);
        }
    }
    for c in [&alice, &bob, &carol] {
        c.close().await;
    }
    if !missing.is_empty() {
        bail!("callbacks that never fired: {missing:?}");
    }
    println!("done");
    Ok(())
}
