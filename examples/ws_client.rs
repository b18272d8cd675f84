//! A command-line client for a running `invitation-server`: wait for calls
//! (and answer them), or call someone.
//!
//! ```text
//! cargo run --example ws_client -- --token "$BOB" --user bob --answer accept
//! cargo run --example ws_client -- --token "$ALICE" --user alice --call bob
//! ```
//! Options: `--url ws://127.0.0.1:7600/` (default), `--device NAME`,
//! `--answer accept|decline|busy|ring` (what to do with incoming calls),
//! `--call USER[,USER...]` (invite, then wait for the outcomes and hang up).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use invitation::prelude::*;
use invitation::transport::ws::WsTransport;

struct Answer(String);

#[async_trait]
impl InvitationEvents for Answer {
    async fn on_incoming_call_received(
        &self,
        ctx: &CallContext,
        call_id: &CallId,
        caller: &User,
        call_type: CallType,
        _: &[User],
        _: Option<&CustomData>,
    ) {
        println!(
            "incoming {call_type:?} call {call_id} from {} ({})",
            caller.name, caller.id
        );
        let r = match self.0.as_str() {
            "accept" => ctx.accept().await,
            "decline" => ctx.decline().await,
            "busy" => ctx.decline_busy().await,
            _ => Ok(()),
        };
        if let Err(e) = r {
            println!("could not answer: {e}");
        }
    }
    async fn on_incoming_call_canceled(
        &self,
        ctx: &CallContext,
        call_id: &CallId,
        _: &User,
        _: Option<&CustomData>,
    ) {
        println!("{call_id} stopped ringing: {:?}", ctx.reason());
    }
    async fn on_incoming_call_timeout(&self, _: &CallContext, call_id: &CallId, _: &User) {
        println!("{call_id} timed out");
    }
    async fn on_incoming_call_accept_button_pressed(&self, _: &CallContext, call_id: &CallId) {
        println!("accepted {call_id}");
    }
    async fn on_outgoing_call_accepted(&self, _: &CallContext, call_id: &CallId, callee: &UserId) {
        println!("{callee} accepted {call_id}");
    }
    async fn on_outgoing_call_declined(&self, _: &CallContext, call_id: &CallId, callee: &UserId) {
        println!("{callee} declined {call_id}");
    }
    async fn on_outgoing_call_rejected_cause_busy(
        &self,
        _: &CallContext,
        call_id: &CallId,
        callee: &UserId,
        _: Option<&CustomData>,
    ) {
        println!("{callee} is busy ({call_id})");
    }
    async fn on_outgoing_call_timeout(
        &self,
        _: &CallContext,
        call_id: &CallId,
        callee: &UserId,
        _: Option<&CustomData>,
    ) {
        println!("{callee} did not answer {call_id}");
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = arg(&args, "--url").unwrap_or_else(|| "ws://127.0.0.1:7600/".into());
    let token = arg(&args, "--token")
        .context("--token is required (mint one with `invitation-server token`)")?;
    let user = arg(&args, "--user").context("--user is required (the token's user)")?;
    let device = arg(&args, "--device").unwrap_or_else(|| "cli".into());
    let answer = arg(&args, "--answer").unwrap_or_else(|| "ring".into());
    let client = Client::builder()
        .user(User::new(UserId::new(&user)?, &user)?)
        .device(device)
        .token(token)
        .transport(WsTransport::new(url.clone()))
        .handler(Answer(answer))
        .build()?;
    client
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))?;
    println!("connected to {url} as {user}");
    let Some(callees) = arg(&args, "--call") else {
        println!("waiting for calls (Ctrl-C to quit)");
        tokio::signal::ctrl_c().await?;
        client.close().await;
        return Ok(());
    };
    let mut events = client.events();
    let call = client
        .invite(callees.split(','), CallType::Video, None)
        .await?;
    println!("invited: {} ({:?})", call.call_id, call.callees);
    let deadline = tokio::time::Instant::now() + call.ring_remaining + Duration::from_secs(5);
    loop {
        let e = tokio::time::timeout_at(deadline, events.recv()).await;
        match e {
            Ok(Ok(AppEvent::CallEnded { reason, .. })) => {
                println!("call over: {reason}");
                break;
            }
            Ok(Ok(AppEvent::OutgoingCallAccepted { .. })) => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                client.hang_up(&call.call_id).await?;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("event stream: {e}"),
            Err(_) => bail!("no outcome in time"),
        }
    }
    client.close().await;
    Ok(())
}
