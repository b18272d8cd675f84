//! How to unit-test your own handler: no hub, no sockets, paused time.
//!
//! `BusyAware` is an app handler: while the user is in a meeting it declines
//! incoming calls as busy; otherwise it keeps a list of ringing calls for
//! the UI. The tests at the bottom drive it through the mock transport with
//! `#[tokio::test(start_paused = true)]`; `cargo test --workspace` runs them,
//! and `cargo run --example test_your_handler` runs the same scenario once.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use invitation::prelude::*;

/// The handler under test.
#[derive(Default)]
pub struct BusyAware {
    /// Set by the app when the user joins a meeting.
    pub in_meeting: AtomicBool,
    /// Calls ringing right now (what the UI shows).
    pub ringing: Mutex<Vec<CallId>>,
}

impl BusyAware {
    fn stop_ringing(&self, call_id: &CallId) {
        self.ringing.lock().unwrap().retain(|c| c != call_id);
    }
}

#[async_trait]
impl InvitationEvents for BusyAware {
    async fn on_incoming_call_received(
        &self,
        ctx: &CallContext,
        call_id: &CallId,
        _: &User,
        _: CallType,
        _: &[User],
        _: Option<&CustomData>,
    ) {
        if self.in_meeting.load(Ordering::SeqCst) {
            if let Err(e) = ctx.decline_busy().await {
                eprintln!("could not decline {call_id}: {e}");
            }
        } else {
            self.ringing.lock().unwrap().push(call_id.clone());
        }
    }
    async fn on_incoming_call_canceled(
        &self,
        _: &CallContext,
        call_id: &CallId,
        _: &User,
        _: Option<&CustomData>,
    ) {
        self.stop_ringing(call_id);
    }
    async fn on_incoming_call_timeout(&self, _: &CallContext, call_id: &CallId, _: &User) {
        self.stop_ringing(call_id);
    }
    async fn on_incoming_call_accept_button_pressed(&self, _: &CallContext, call_id: &CallId) {
        self.stop_ringing(call_id);
    }
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> anyhow::Result<()> {
    use invitation::core::protocol::Command;
    use invitation::transport::mock;
    use std::sync::Arc;
    use std::time::Duration;

    let handler = Arc::new(BusyAware::default());
    handler.in_meeting.store(true, Ordering::SeqCst);
    let (transport, mut server) = mock::pair_as(User::named("me", "Me"));
    let client = Client::builder()
        .user(User::named("me", "Me"))
        .transport(transport)
        .handler(handler.clone())
        .build()?;
    client.connect().await?;
    let call = CallId::new("call-1")?;
    server.incoming_call(
        &call,
        &User::named("boss", "Boss"),
        CallType::Video,
        None,
        Duration::from_secs(60),
    );
    let sent = server.next_call_command().await;
    println!("the handler answered with: {}", sent.encode());
    assert_eq!(
        sent.command(),
        Some(&Command::Decline {
            call_id: call,
            busy: true,
            custom_data: None
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use invitation::core::protocol::Command;
    use invitation::testing::Recorder;
    use invitation::transport::mock::{self, MockServer};

    use super::*;

    async fn setup(in_meeting: bool) -> (Arc<BusyAware>, Recorder, Client, MockServer) {
        let handler = Arc::new(BusyAware::default());
        handler.in_meeting.store(in_meeting, Ordering::SeqCst);
        let recorder = Recorder::new();
        let (transport, server) = mock::pair_as(User::named("me", "Me"));
        let client = Client::builder()
            .user(User::named("me", "Me"))
            .transport(transport)
            .handler(handler.clone())
            .handler(recorder.clone())
            .build()
            .unwrap();
        client.connect().await.unwrap();
        (handler, recorder, client, server)
    }

    fn boss() -> User {
        User::named("boss", "Boss")
    }

    #[tokio::test(start_paused = true)]
    async fn declines_as_busy_during_a_meeting() {
        let (handler, recorder, _client, mut server) = setup(true).await;
        let call = CallId::new("call-1").unwrap();
        server.incoming_call(
            &call,
            &boss(),
            CallType::Video,
            None,
            Duration::from_secs(60),
        );
        let sent = server.next_call_command().await;
        assert_eq!(
            sent.command(),
            Some(&Command::Decline {
                call_id: call.clone(),
                busy: true,
                custom_data: None
            })
        );
        recorder
            .wait_for(Callback::IncomingCallDeclineButtonPressed, 1)
            .await;
        assert!(handler.ringing.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn rings_otherwise_and_stops_when_the_caller_cancels() {
        let (handler, recorder, _client, server) = setup(false).await;
        let call = CallId::new("call-2").unwrap();
        server.incoming_call(
            &call,
            &boss(),
            CallType::Voice,
            Some("{\"room\":7}"),
            Duration::from_secs(60),
        );
        recorder.wait_for(Callback::IncomingCallReceived, 1).await;
        assert_eq!(*handler.ringing.lock().unwrap(), vec![call.clone()]);
        server.incoming_ended(&call, Reason::Canceled, None);
        let r = recorder.wait_for(Callback::IncomingCallCanceled, 1).await;
        assert!(matches!(
            r.event,
            AppEvent::IncomingCallCanceled {
                reason: Reason::Canceled,
                ..
            }
        ));
        assert!(handler.ringing.lock().unwrap().is_empty());
        assert!(
            server
                .commands()
                .iter()
                .all(|m| !matches!(m.command(), Some(Command::Decline { .. })))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_server_still_ends_the_ring_locally() {
        let (handler, recorder, _client, server) = setup(false).await;
        let call = CallId::new("call-3").unwrap();
        server.incoming_call(
            &call,
            &boss(),
            CallType::Voice,
            None,
            Duration::from_secs(30),
        );
        recorder.wait_for(Callback::IncomingCallReceived, 1).await;
        let started = tokio::time::Instant::now();
        // The server never says how the call ended: the fallback timer does,
        // never before the server-relative deadline.
        recorder.wait_for(Callback::IncomingCallTimeout, 1).await;
        assert!(started.elapsed() >= Duration::from_secs(30));
        assert!(handler.ringing.lock().unwrap().is_empty());
    }
}
