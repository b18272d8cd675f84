//! One invitation to three callees with mixed outcomes: bob accepts, carol
//! declines, dave never answers (3 s ring). Each callee has its own outcome;
//! the call goes on with bob.
//!
//! Run: `cargo run --example group_call`

use std::time::Duration;

use anyhow::{Context, Result};
use invitation::Fanout;
use invitation::prelude::*;

/// bob accepts, carol declines, dave lets it ring.
struct Callee;

#[async_trait]
impl InvitationEvents for Callee {
    async fn on_incoming_call_received(
        &self,
        ctx: &CallContext,
        call_id: &CallId,
        caller: &User,
        _: CallType,
        callees: &[User],
        _: Option<&CustomData>,
    ) {
        let me = ctx.client().user().id.clone();
        let names: Vec<&str> = callees.iter().map(|u| u.id.as_str()).collect();
        println!(
            "  [{me}] {call_id} from {} (invited: {names:?})",
            caller.name
        );
        let _ = match me.as_str() {
            "bob" => ctx.accept().await,
            "carol" => ctx.decline().await,
            _ => Ok(()),
        };
    }
    async fn on_incoming_call_timeout(&self, ctx: &CallContext, call_id: &CallId, _: &User) {
        println!("  [{}] {call_id} timed out", ctx.client().user().id);
    }
}

async fn client(hub: &MemoryHub, id: &str, handler: impl InvitationEvents) -> Result<Client> {
    let user = User::named(id, &id.to_uppercase());
    let client = Client::builder()
        .user(user.clone())
        .transport(hub.transport(user))
        .handler(handler)
        .ring_timeout(Duration::from_secs(3))
        .build()?;
    client.connect().await?;
    Ok(client)
}

#[tokio::main]
async fn main() -> Result<()> {
    let hub = MemoryHub::new();
    // alice needs no callbacks here: she reads her event stream.
    let alice = client(&hub, "alice", Fanout::default()).await?;
    let mut events = alice.events();
    let mut callees = Vec::new();
    for id in ["bob", "carol", "dave"] {
        callees.push(client(&hub, id, Callee).await?);
    }

    let call = alice
        .invite(["bob", "carol", "dave"], CallType::Video, None)
        .await?;
    println!(
        "alice invited {} callees to {}",
        call.callees.len(),
        call.call_id
    );

    println!("\noutcomes seen by alice:");
    let mut outcomes = 0;
    while outcomes < call.callees.len() {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .context("an outcome for every callee within 10 s")??;
        let who = match &event {
            AppEvent::OutgoingCallAccepted { callee, .. }
            | AppEvent::OutgoingCallDeclined { callee, .. }
            | AppEvent::OutgoingCallTimeout { callee, .. } => callee.to_string(),
            _ => continue,
        };
        let callback = Callback::of(&event).expect("one of the ten");
        println!("  {who:<6} {callback}");
        outcomes += 1;
    }
    alice.hang_up(&call.call_id).await?;
    println!("alice hung up; the call with bob is over");
    Ok(())
}
