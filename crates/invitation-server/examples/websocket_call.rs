//! A real server and real WebSocket clients in one process: the server
//! listens on an ephemeral loopback port; alice (phone + laptop), bob and
//! carol connect as separate clients. Flows: bob calls alice and her phone
//! accepts (her laptop is told "answered elsewhere"); carol calls alice
//! while she is in that call (busy).
//!
//! Run: `cargo run -p invitation-server --example websocket_call`

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use invitation::Fanout;
use invitation::prelude::*;
use invitation::testing::Recorder;
use invitation::transport::ws::WsTransport;
use invitation_server::{Config, RunningServer, Server};

/// Prints every callback; alice's phone accepts what rings.
struct Printer {
    label: &'static str,
    accept: bool,
}

#[async_trait]
impl InvitationEvents for Printer {
    async fn on_incoming_call_received(
        &self,
        ctx: &CallContext,
        call_id: &CallId,
        caller: &User,
        _: CallType,
        _: &[User],
        _: Option<&CustomData>,
    ) {
        println!(
            "  [{}] on_incoming_call_received {call_id} from {}",
            self.label, caller.name
        );
        if self.accept {
            if let Err(e) = ctx.accept().await {
                println!("  [{}] accept failed: {e}", self.label);
            }
        }
    }
    async fn on_incoming_call_canceled(
        &self,
        ctx: &CallContext,
        call_id: &CallId,
        _: &User,
        _: Option<&CustomData>,
    ) {
        println!(
            "  [{}] on_incoming_call_canceled {call_id} (reason: {})",
            self.label,
            ctx.reason().map_or("?", |r| r.as_str())
        );
    }
    async fn on_incoming_call_accept_button_pressed(&self, _: &CallContext, call_id: &CallId) {
        println!(
            "  [{}] on_incoming_call_accept_button_pressed {call_id}",
            self.label
        );
    }
    async fn on_outgoing_call_accepted(&self, _: &CallContext, call_id: &CallId, callee: &UserId) {
        println!(
            "  [{}] on_outgoing_call_accepted {call_id} by {callee}",
            self.label
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
            self.label
        );
    }
}

async fn client(
    srv: &RunningServer,
    user: &str,
    name: &str,
    device: &str,
    label: &'static str,
    accept: bool,
    rec: &Recorder,
) -> Result<Client> {
    let client = Client::builder()
        .user(User::named(user, name))
        .device(device)
        .token(srv.token(user, name)) // in production the app's backend mints tokens
        .transport(WsTransport::new(srv.url()))
        .handler(Fanout(vec![
            Arc::new(Printer { label, accept }),
            Arc::new(rec.clone()),
        ]))
        .build()?;
    client.connect().await?;
    Ok(client)
}

#[tokio::main]
async fn main() -> Result<()> {
    let config = Config {
        listen: "127.0.0.1:0".parse()?,
        ..Config::default()
    };
    let srv = Server::bind(config).await?.spawn();
    println!("server on {}", srv.url());
    // Every wait gives up (with what did arrive) after 10 s.
    let rec = Recorder::with_deadline(Duration::from_secs(10));
    let _phone = client(&srv, "alice", "Alice", "phone", "alice/phone", true, &rec).await?;
    let _laptop = client(
        &srv,
        "alice",
        "Alice",
        "laptop",
        "alice/laptop",
        false,
        &rec,
    )
    .await?;
    let bob = client(&srv, "bob", "Bob", "phone", "bob", false, &rec).await?;
    let carol = client(&srv, "carol", "Carol", "phone", "carol", false, &rec).await?;
    let wait = |callback, n| {
        let rec = rec.clone();
        async move { rec.try_wait_for(callback, n).await }
    };

    println!(
        "1. bob calls alice: both her devices ring, the phone accepts, the laptop stops (answered elsewhere)"
    );
    let call = bob.invite(["alice"], CallType::Video, None).await?;
    wait(Callback::OutgoingCallAccepted, 1).await?;
    wait(Callback::IncomingCallCanceled, 1).await?;

    println!("2. carol calls alice while she is in the call with bob: busy");
    carol.invite(["alice"], CallType::Voice, None).await?;
    wait(Callback::OutgoingCallRejectedCauseBusy, 1).await?;

    bob.hang_up(&call.call_id).await?;
    println!("metrics excerpt:");
    for line in srv.metrics.render().lines().filter(|l| {
        l.starts_with("invitation_sessions")
            || l.starts_with("invitation_callee_outcomes_total{reason=\"accepted\"}")
            || l.starts_with("invitation_callee_outcomes_total{reason=\"busy\"}")
    }) {
        println!("  {line}");
    }
    srv.stop().await;
    Ok(())
}
