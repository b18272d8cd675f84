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
use tokio::sync::{broadcast, mpsc};

/// Prints every callback, and answers incoming calls the way the caller's
/// custom data asks (a demo shortcut: a real app asks its user). Each
/// callback, once printed, is also sent to `fired`, so that the story below
/// moves on only after the previous step's lines are out.
struct Printer {
    who: &'static str,
    fired: mpsc::UnboundedSender<Callback>,
}

impl Printer {
    fn done(&self, ctx: &CallContext) {
        if let Some(callback) = Callback::of(ctx.event()) {
            let _ = self.fired.send(callback);
        }
    }
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
        self.done(ctx);
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
        self.done(ctx);
    }
    async fn on_incoming_call_timeout(&self, ctx: &CallContext, call_id: &CallId, caller: &User) {
        println!(
            "  [{}] on_incoming_call_timeout        {call_id} from {}",
            self.who, caller.name
        );
        self.done(ctx);
    }
    async fn on_incoming_call_accept_button_pressed(&self, ctx: &CallContext, call_id: &CallId) {
        println!(
            "  [{}] on_incoming_call_accept_button_pressed  {call_id}",
            self.who
        );
        self.done(ctx);
    }
    async fn on_incoming_call_decline_button_pressed(&self, ctx: &CallContext, call_id: &CallId) {
        println!(
            "  [{}] on_incoming_call_decline_button_pressed {call_id}",
            self.who
        );
        self.done(ctx);
    }
    async fn on_outgoing_call_cancel_button_pressed(&self, ctx: &CallContext, call_id: &CallId) {
        println!(
            "  [{}] on_outgoing_call_cancel_button_pressed  {call_id}",
            self.who
        );
        self.done(ctx);
    }
    async fn on_outgoing_call_accepted(
        &self,
        ctx: &CallContext,
        call_id: &CallId,
        callee: &UserId,
    ) {
        println!(
            "  [{}] on_outgoing_call_accepted       {call_id} by {callee}",
            self.who
        );
        self.done(ctx);
    }
    async fn on_outgoing_call_rejected_cause_busy(
        &self,
        ctx: &CallContext,
        call_id: &CallId,
        callee: &UserId,
        _: Option<&CustomData>,
    ) {
        println!(
            "  [{}] on_outgoing_call_rejected_cause_busy {call_id}: {callee} is busy",
            self.who
        );
        self.done(ctx);
    }
    async fn on_outgoing_call_declined(
        &self,
        ctx: &CallContext,
        call_id: &CallId,
        callee: &UserId,
    ) {
        println!(
            "  [{}] on_outgoing_call_declined       {call_id} by {callee}",
            self.who
        );
        self.done(ctx);
    }
    async fn on_outgoing_call_timeout(
        &self,
        ctx: &CallContext,
        call_id: &CallId,
        callee: &UserId,
        _: Option<&CustomData>,
    ) {
        println!(
            "  [{}] on_outgoing_call_timeout        {call_id}: {callee} did not answer",
            self.who
        );
        self.done(ctx);
    }
}

async fn client(
    hub: &MemoryHub,
    id: &'static str,
    name: &str,
    fired: &mpsc::UnboundedSender<Callback>,
) -> Result<Client> {
    let user = User::named(id, name);
    let client = Client::builder()
        .user(user.clone())
        .device("phone")
        .transport(hub.transport(user))
        .handler(Printer {
            who: id,
            fired: fired.clone(),
        })
        .ring_timeout(Duration::from_secs(3))
        .build()?;
    client.connect().await?;
    Ok(client)
}

/// Every callback that fired so far, on any device, in order.
struct Tally {
    rx: mpsc::UnboundedReceiver<Callback>,
    fired: Vec<Callback>,
}

impl Tally {
    fn count(&self, callback: Callback) -> usize {
        self.fired.iter().filter(|c| **c == callback).count()
    }

    /// Waits until `callback` has fired `n` times in all (10 s at most).
    async fn wait(&mut self, callback: Callback, n: usize) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.count(callback) < n {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(c)) => self.fired.push(c),
                _ => bail!("{callback} #{n} did not fire; fired: {:?}", self.fired),
            }
        }
        Ok(())
    }
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
    let (fired, rx) = mpsc::unbounded_channel();
    let alice = client(&hub, "alice", "Alice", &fired).await?;
    let bob = client(&hub, "bob", "Bob", &fired).await?;
    let carol = client(&hub, "carol", "Carol", &fired).await?;
    let mut b = bob.events();

    // Waiting on the printed callbacks (not the raw event stream) keeps the
    // output in the order of the story.
    let mut t = Tally {
        rx,
        fired: Vec::new(),
    };
    println!("1. alice calls bob; bob accepts; alice hangs up");
    let call = alice
        .invite(["bob"], CallType::Video, data_of("please accept"))
        .await?;
    t.wait(Callback::OutgoingCallAccepted, 1).await?;
    t.wait(Callback::IncomingCallAcceptButtonPressed, 1).await?;
    alice.hang_up(&call.call_id).await?;
    wait_for(&mut b, "call ended", |e| {
        matches!(e, AppEvent::CallEnded { .. })
    })
    .await?;

    println!("2. alice calls bob; nobody answers (3 s ring)");
    alice
        .invite(["bob"], CallType::Voice, data_of("let it ring"))
        .await?;
    t.wait(Callback::OutgoingCallTimeout, 1).await?;
    t.wait(Callback::IncomingCallTimeout, 1).await?;

    println!("3. alice calls bob; bob declines");
    alice
        .invite(["bob"], CallType::Voice, data_of("please decline"))
        .await?;
    t.wait(Callback::OutgoingCallDeclined, 1).await?;
    t.wait(Callback::IncomingCallDeclineButtonPressed, 1)
        .await?;

    println!("4. carol calls bob and bob accepts; then alice calls bob: busy");
    let with_carol = carol
        .invite(["bob"], CallType::Voice, data_of("please accept"))
        .await?;
    t.wait(Callback::IncomingCallAcceptButtonPressed, 2).await?;
    t.wait(Callback::OutgoingCallAccepted, 2).await?;
    alice
        .invite(["bob"], CallType::Voice, data_of("please accept"))
        .await?;
    t.wait(Callback::OutgoingCallRejectedCauseBusy, 1).await?;
    carol.hang_up(&with_carol.call_id).await?;
    wait_for(&mut b, "call ended", |e| {
        matches!(e, AppEvent::CallEnded { .. })
    })
    .await?;

    println!("5. alice calls bob and cancels");
    let call = alice
        .invite(["bob"], CallType::Video, data_of("let it ring"))
        .await?;
    t.wait(Callback::IncomingCallReceived, 5).await?;
    alice.cancel(&call.call_id).await?;
    t.wait(Callback::IncomingCallCanceled, 1).await?;
    t.wait(Callback::OutgoingCallCancelButtonPressed, 1).await?;

    while let Ok(c) = t.rx.try_recv() {
        t.fired.push(c);
    }
    println!("\nall ten callbacks:");
    let mut missing = Vec::new();
    for &callback in Callback::ALL {
        let n = t.count(callback);
        println!("  {:<42} fired {n}x", callback.name());
        if n == 0 {
            missing.push(callback);
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
