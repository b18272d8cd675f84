//! Handler guarantees on the in-process hub, with paused time: panics and
//! slow handlers isolated, fan-out, the builder's checks, and the test
//! `Recorder` failing (not hanging) when a callback never comes.
//!
//! The call flows themselves (each of the ten callbacks, answered elsewhere,
//! offline delivery, group outcomes, caller gone, reconnects, acting from a
//! callback) are one suite run on the memory hub and on the server:
//! crates/invitation-server/tests/flows.rs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use invitation::prelude::*;
use invitation::testing::Recorder;
use invitation::{BuildError, Fanout};
use invitation_core::SwitchboardConfig;

struct Dev {
    client: Client,
    rec: Recorder,
}

async fn dev(hub: &MemoryHub, user: &str, device: &str) -> Dev {
    let rec = Recorder::new();
    let u = User::named(user, &user.to_uppercase());
    let client = Client::builder()
        .user(u.clone())
        .device(device)
        .transport(hub.transport(u))
        .handler(rec.clone())
        .build()
        .unwrap();
    client.connect().await.unwrap();
    Dev { client, rec }
}

async fn invite(d: &Dev, callees: &[&str], timeout_s: u32) -> CallId {
    d.client
        .invite_with(
            invitation_core::protocol::InviteRequest::new(
                callees.iter().map(|c| UserId::new(c).unwrap()).collect(),
                CallType::Video,
            )
            .with_custom_data(Some(CustomData::new("{\"room\":\"r1\"}").unwrap()))
            .with_timeout_s(Some(timeout_s)),
        )
        .await
        .unwrap()
        .call_id
}

/// Panics on the first incoming call, sleeps 10 s on the second.
struct Troublemaker(AtomicUsize);

#[async_trait]
impl InvitationEvents for Troublemaker {
    async fn on_incoming_call_received(
        &self,
        _: &CallContext,
        _: &CallId,
        _: &User,
        _: CallType,
        _: &[User],
        _: Option<&CustomData>,
    ) {
        match self.0.fetch_add(1, Ordering::SeqCst) {
            0 => panic!("handler bug"),
            1 => tokio::time::sleep(Duration::from_secs(10)).await,
            _ => {}
        }
    }
}

#[tokio::test(start_paused = true)]
async fn c5_panicking_and_slow_handlers_are_isolated() {
    let hub = MemoryHub::with_config(
        {
            let mut c = SwitchboardConfig::default();
            c.busy_policy = invitation_core::BusyPolicy::RingAnyway;
            c
        },
        invitation_core::SequentialCallIds::default(),
    );
    let alice = dev(&hub, "alice", "phone").await;
    let carol = dev(&hub, "carol", "phone").await;
    let dave = dev(&hub, "dave", "phone").await;
    // The troublemaker runs before the recorder in the fan-out.
    let rec = Recorder::new();
    let u = User::named("bob", "BOB");
    let bob = Client::builder()
        .user(u.clone())
        .transport(hub.transport(u))
        .handler(Fanout(vec![
            Arc::new(Troublemaker(AtomicUsize::new(0))),
            Arc::new(rec.clone()),
        ]))
        .build()
        .unwrap();
    bob.connect().await.unwrap();

    let first = invite(&alice, &["bob"], 60).await; // handler panics
    let second = invite(&carol, &["bob"], 60).await; // handler sleeps 10 s
    let started = tokio::time::Instant::now();
    let _third = invite(&dave, &["bob"], 60).await; // runs at once
    rec.wait_for(Callback::IncomingCallReceived, 1).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the slow call held back another call"
    );
    // The connection kept working: commands succeed on the panicked call.
    bob.accept(&first).await.unwrap();
    alice.rec.wait_for(Callback::OutgoingCallAccepted, 1).await;
    // The slow call's own callbacks resume after its handler finishes.
    rec.wait_for(Callback::IncomingCallReceived, 2).await;
    assert!(started.elapsed() >= Duration::from_secs(10));
    bob.decline(&second).await.unwrap();
    carol.rec.wait_for(Callback::OutgoingCallDeclined, 1).await;
}

#[tokio::test(start_paused = true)]
async fn fanout_forwards_every_callback_to_each_handler() {
    let hub = MemoryHub::new();
    let alice = dev(&hub, "alice", "phone").await;
    let (r1, r2) = (Recorder::new(), Recorder::new());
    let u = User::named("bob", "BOB");
    let bob = Client::builder()
        .user(u.clone())
        .transport(hub.transport(u))
        .handler(Fanout(vec![
            Arc::new(r1.clone()),
            Arc::new(Box::new(r2.clone())),
        ]))
        .build()
        .unwrap();
    bob.connect().await.unwrap();
    let call = invite(&alice, &["bob"], 60).await;
    r2.wait_for(Callback::IncomingCallReceived, 1).await;
    bob.decline(&call).await.unwrap();
    r2.wait_for(Callback::IncomingCallDeclineButtonPressed, 1)
        .await;
    assert_eq!(r1.records(), r2.records());
}

#[tokio::test(start_paused = true)]
async fn a_recorder_wait_that_never_completes_fails_listing_what_arrived() {
    let hub = MemoryHub::new();
    let alice = dev(&hub, "alice", "phone").await;
    let bob = dev(&hub, "bob", "phone").await;
    let call = invite(&alice, &["bob"], 60).await;
    bob.rec.wait_for(Callback::IncomingCallReceived, 1).await;
    // Nobody answers within the deadline: the wait fails, it does not hang,
    // and it says what came instead.
    let short = Recorder::with_deadline(Duration::from_secs(5));
    let started = tokio::time::Instant::now();
    let err = tokio::join!(
        short.try_wait_for(Callback::IncomingCallTimeout, 1),
        bob.rec.try_wait_for(Callback::IncomingCallTimeout, 1),
    );
    assert!(err.0.unwrap_err().seen.is_empty());
    // bob's recorder (two-minute deadline) does see the timeout at 60 s.
    let r = err.1.unwrap();
    assert_eq!(r.call_id, call);
    assert_eq!(started.elapsed(), Duration::from_secs(60));
    let err = bob
        .rec
        .try_wait_for(Callback::IncomingCallAcceptButtonPressed, 1)
        .await
        .unwrap_err();
    assert_eq!(err.wanted, Callback::IncomingCallAcceptButtonPressed);
    assert_eq!(
        err.seen.iter().map(|r| r.callback).collect::<Vec<_>>(),
        [
            Callback::IncomingCallReceived,
            Callback::IncomingCallTimeout
        ]
    );
    assert_eq!(
        err.to_string(),
        format!(
            "on_incoming_call_accept_button_pressed #1 did not fire within 120s; \
             arrived: on_incoming_call_received ({call}), on_incoming_call_timeout ({call})"
        )
    );
}

#[test]
fn builder_validates_synchronously() {
    let hub_less = invitation::testing::mock::pair().0;
    let err = Client::builder()
        .transport(hub_less.clone())
        .build()
        .unwrap_err();
    assert_eq!(err, BuildError::MissingUser);
    let err = Client::builder()
        .user(User::named("a", "A"))
        .device("bad device")
        .transport(hub_less.clone())
        .build()
        .unwrap_err();
    assert!(matches!(err, BuildError::InvalidDevice(_)));
    let err = Client::builder()
        .user(User::named("a", "A"))
        .ring_timeout(Duration::ZERO)
        .transport(hub_less)
        .build()
        .unwrap_err();
    assert_eq!(err, BuildError::RingTimeout(Duration::ZERO));
}
