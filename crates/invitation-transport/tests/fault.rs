//! The connection-level faults of the fault layer, each on its own, over
//! the memory hub.

use std::time::Duration;

use invitation_core::protocol::{ClientMessage, Control, ServerBody};
use invitation_core::{CloseCause, DeviceId, RequestId, User};
use invitation_transport::fault::{FaultConfig, FaultyTransport};
use invitation_transport::memory::{MemoryHub, OUTBOUND_QUEUE};
use invitation_transport::{BoxConnection, Transport};

async fn hello(
    hub: &MemoryHub,
    config: FaultConfig,
) -> (FaultyTransport<impl Transport>, BoxConnection) {
    let faulty = FaultyTransport::new(hub.transport(User::named("a", "A")), config, 1);
    let mut conn = faulty.connect().await.unwrap();
    let hello = Control::Hello {
        device: DeviceId::new("d").unwrap(),
        token: None,
        last_seq: None,
    };
    conn.send(ClientMessage::new(RequestId::new("h").unwrap(), hello))
        .await
        .unwrap();
    (faulty, conn)
}

#[tokio::test(start_paused = true)]
async fn a_lost_welcome_is_the_only_thing_lost() {
    let hub = MemoryHub::new();
    let config = FaultConfig {
        drop_welcome: 1.0,
        ..FaultConfig::default()
    };
    let (faulty, mut conn) = hello(&hub, config).await;
    let first = conn.recv().await.unwrap();
    assert!(matches!(first.body, ServerBody::Sync(_)), "{first:?}");
    assert_eq!(faulty.stats().welcomes_dropped, 1);
}

#[tokio::test(start_paused = true)]
async fn burst_syncs_are_answered_once_each_and_kept_from_the_client() {
    let hub = MemoryHub::new();
    let config = FaultConfig {
        sync_burst: 1.0,
        sync_burst_size: (5, 5),
        ..FaultConfig::default()
    };
    let (faulty, mut conn) = hello(&hub, config).await;
    let _welcome = conn.recv().await.unwrap();
    let _sync = conn.recv().await.unwrap();
    conn.send(ClientMessage::new(
        RequestId::new("p").unwrap(),
        Control::Ping,
    ))
    .await
    .unwrap();
    let next = conn.recv().await.unwrap();
    assert!(
        matches!(&next.body, ServerBody::Pong { re: Some(re), .. } if re.as_str() == "p"),
        "the burst's answers never reach the client: {next:?}"
    );
    let stats = faulty.stats();
    assert_eq!((stats.sync_bursts, stats.syncs_sent), (1, 5));
    assert_eq!(stats.syncs_answered, 5);
    assert_eq!(stats.syncs_answered_twice, 0);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_and_keeps_writing_is_dropped_as_too_slow() {
    let hub = MemoryHub::new();
    let config = FaultConfig {
        stall: 1.0,
        stall_for: (Duration::from_secs(2), Duration::from_secs(2)),
        stall_writes: (1100, 1100),
        ..FaultConfig::default()
    };
    let (faulty, mut conn) = hello(&hub, config).await;
    let _welcome = conn.recv().await.unwrap(); // the stall starts here
    let began = tokio::time::Instant::now();
    let mut read = 0;
    while conn.recv().await.is_ok() {
        read += 1;
    }
    assert_eq!(
        began.elapsed(),
        Duration::from_secs(2),
        "nothing read meanwhile"
    );
    assert!(read < OUTBOUND_QUEUE, "{read} messages after the welcome");
    assert_eq!(hub.closes(CloseCause::TooSlow), 1);
    let stats = faulty.stats();
    assert_eq!((stats.stalls, stats.syncs_sent), (1, 1100));
    assert!(stats.syncs_answered < 1100, "{stats:?}");
}
