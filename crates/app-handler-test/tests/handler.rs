use std::time::Duration;

use invitation::core::protocol::Command;
use invitation::prelude::*;
use invitation::testing::mock;

/// Your handler (in your app it lives in src/): busy in a meeting.
struct InAMeeting;

#[async_trait]
impl InvitationEvents for InAMeeting {
    async fn on_incoming_call_received(
        &self,
        ctx: &CallContext,
        _: &CallId,
        _: &User,
        _: CallType,
        _: &[User],
        _: Option<&CustomData>,
    ) {
        ctx.decline_busy().await.expect("declined");
    }
}

#[tokio::test(start_paused = true)]
async fn declines_as_busy() {
    let me = User::named("me", "Me");
    let (transport, mut server) = mock::pair_as(me.clone());
    let client = Client::builder()
        .user(me)
        .transport(transport)
        .handler(InAMeeting)
        .build()
        .unwrap();
    client.connect().await.unwrap();
    let call = CallId::new("call-1").unwrap();
    let boss = User::named("boss", "Boss");
    // A minute of ring time passes in no time: the clock is paused.
    server.incoming_call(&call, &boss, CallType::Video, None, Duration::from_secs(60));
    let sent = server.next_call_command().await;
    assert_eq!(sent.command(), Some(&Command::decline(call, true)));
}
