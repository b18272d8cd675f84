//! The memory hub passes the transport conformance suite, and drops a
//! client that never reads.

use async_trait::async_trait;
use invitation_core::User;
use invitation_transport::conformance::{self, Fixture};
use invitation_transport::memory::MemoryHub;
use invitation_transport::{BoxTransport, TransportErrorKind};

struct Memory(MemoryHub);

#[async_trait]
impl Fixture for Memory {
    async fn transport(&self, user: &User) -> BoxTransport {
        std::sync::Arc::new(self.0.transport(user.clone()))
    }
}

#[tokio::test(start_paused = true)]
async fn memory_hub_passes_conformance() {
    conformance::run_all(&Memory(MemoryHub::new())).await;
}

#[tokio::test(start_paused = true)]
async fn kicked_connection_observes_close() {
    use invitation_core::protocol::{ClientMessage, Control};
    use invitation_core::{DeviceId, RequestId, UserId};
    use invitation_transport::Transport;
    let hub = MemoryHub::new();
    let mut conn = hub
        .transport(User::named("k", "K"))
        .connect()
        .await
        .unwrap();
    let hello = Control::Hello {
        device: DeviceId::new("d").unwrap(),
        token: None,
        last_seq: None,
    };
    conn.send(ClientMessage::new(RequestId::new("h").unwrap(), hello))
        .await
        .unwrap();
    conn.recv().await.unwrap(); // welcome
    conn.recv().await.unwrap(); // sync
    hub.kick(&UserId::new("k").unwrap(), &DeviceId::new("d").unwrap());
    let err = conn.recv().await.unwrap_err();
    assert_eq!(err.kind(), TransportErrorKind::Closed);
    let online = hub
        .inspect(|sb| sb.online_devices(&UserId::new("k").unwrap()).len())
        .await;
    assert_eq!(online, Some(0));
}

#[tokio::test(start_paused = true)]
async fn f5_client_that_never_reads_is_dropped_and_the_hub_stays_bounded() {
    use invitation_core::protocol::{
        ClientMessage, Command, Control, InviteRequest, ReplyResult, ServerBody,
    };
    use invitation_core::{CallType, DeviceId, RequestId, UserId};
    use invitation_transport::Transport;
    use invitation_transport::memory::OUTBOUND_QUEUE;
    let hub = MemoryHub::new();
    let hello = |d: &str| Control::Hello {
        device: DeviceId::new(d).unwrap(),
        token: None,
        last_seq: None,
    };
    let mut sleepy = hub
        .transport(User::named("sleepy", "S"))
        .connect()
        .await
        .unwrap();
    sleepy
        .send(ClientMessage::new(RequestId::new("h").unwrap(), hello("d")))
        .await
        .unwrap();
    let mut caller = hub
        .transport(User::named("caller", "C"))
        .connect()
        .await
        .unwrap();
    caller
        .send(ClientMessage::new(RequestId::new("h").unwrap(), hello("d")))
        .await
        .unwrap();
    // Each round gives the sleepy callee two events (incoming, ended).
    for i in 0..OUTBOUND_QUEUE {
        let invite = Command::Invite(InviteRequest {
            callees: vec![UserId::new("sleepy").unwrap()],
            call_type: CallType::Voice,
            custom_data: None,
            timeout_s: None,
        });
        caller
            .send(ClientMessage::new(
                RequestId::new(format!("i{i}")).unwrap(),
                invite,
            ))
            .await
            .unwrap();
        let call_id = loop {
            if let ServerBody::Reply {
                result: ReplyResult::Invited { call_id, .. },
                ..
            } = caller.recv().await.unwrap().body
            {
                break call_id;
            }
        };
        caller
            .send(ClientMessage::new(
                RequestId::new(format!("c{i}")).unwrap(),
                Command::Cancel { call_id },
            ))
            .await
            .unwrap();
    }
    let online = hub
        .inspect(|sb| sb.online_devices(&UserId::new("sleepy").unwrap()).len())
        .await;
    assert_eq!(
        online,
        Some(0),
        "the hub dropped the client that never reads"
    );
    // What it had queued is bounded, then the close is observed.
    let mut n = 0;
    while sleepy.recv().await.is_ok() {
        n += 1;
    }
    assert!(n <= OUTBOUND_QUEUE, "{n} messages were queued");
}
