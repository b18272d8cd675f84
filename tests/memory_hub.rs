//! End to end on the in-process hub, with paused time: each of the ten
//! callbacks, answered elsewhere, offline delivery, group outcomes, caller
//! gone, reconnects, and the handler guarantees (acting from a callback,
//! panics and slow handlers isolated, fan-out).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use invitation::prelude::*;
use invitation::testing::Recorder;
use invitation::{BuildError, ConnectionState, Fanout};
use invitation_core::{DeviceId, SwitchboardConfig};

struct Dev {
    client: Client,
    rec: Recorder,
}

async fn dev_with(
    hub: &MemoryHub,
    user: &str,
    device: &str,
    extra: Option<Arc<dyn InvitationEvents>>,
) -> Dev {
    let rec = Recorder::new();
    let u = User::named(user, &user.to_uppercase());
    let mut builder = Client::builder()
        .user(u.clone())
        .device(device)
        .transport(hub.transport(u))
        .handler(rec.clone());
    if let Some(h) = extra {
        builder = builder.handler(h);
    }
    let client = builder.build().unwrap();
    client.connect().await.unwrap();
    Dev { client, rec }
}

async fn dev(hub: &MemoryHub, user: &str, device: &str) -> Dev {
    dev_with(hub, user, device, None).await
}

async fn invite(d: &Dev, callees: &[&str], timeout_s: u32) -> CallId {
    d.client
        .invite_with(invitation_core::protocol::InviteRequest {
            callees: callees.iter().map(|c| UserId::new(c).unwrap()).collect(),
            call_type: CallType::Video,
            custom_data: Some(CustomData::new("{\"room\":\"r1\"}").unwrap()),
            timeout_s: Some(timeout_s),
        })
        .await
        .unwrap()
        .call_id
}

#[tokio::test(start_paused = true)]
async fn received_accept_pressed_and_outgoing_accepted() {
    let hub = MemoryHub::new();
    let alice = dev(&hub, "alice", "phone").await;
    let bob = dev(&hub, "bob", "phone").await;
    let call = invite(&alice, &["bob"], 60).await;
    let r = bob.rec.wait_for(Callback::IncomingCallReceived, 1).await;
    match r.event {
        AppEvent::IncomingCallReceived {
            caller,
            custom_data,
            callees,
            ..
        } => {
            assert_eq!(caller.id.as_str(), "alice");
            assert_eq!(custom_data.unwrap().as_str(), "{\"room\":\"r1\"}");
            assert_eq!(callees[0].id.as_str(), "bob");
        }
        other => panic!("{other:?}"),
    }
    bob.client.accept(&call).await.unwrap();
    bob.rec
        .wait_for(Callback::IncomingCallAcceptButtonPressed, 1)
        .await;
    let r = alice.rec.wait_for(Callback::OutgoingCallAccepted, 1).await;
    assert!(
        matches!(r.event, AppEvent::OutgoingCallAccepted { ref callee, .. } if callee.as_str() == "bob")
    );
    assert_eq!(r.call_id, call);
}

#[tokio::test(start_paused = true)]
async fn cancel_pressed_and_incoming_canceled_with_reason() {
    let hub = MemoryHub::new();
    let alice = dev(&hub, "alice", "phone").await;
    let bob = dev(&hub, "bob", "phone").await;
    let call = invite(&alice, &["bob"], 60).await;
    bob.rec.wait_for(Callback::IncomingCallReceived, 1).await;
    alice.client.cancel(&call).await.unwrap();
    alice
        .rec
        .wait_for(Callback::OutgoingCallCancelButtonPressed, 1)
        .await;
    let r = bob.rec.wait_for(Callback::IncomingCallCanceled, 1).await;
    assert!(matches!(
        r.event,
        AppEvent::IncomingCallCanceled {
            reason: Reason::Canceled,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn timeouts_on_both_sides() {
    let hub = MemoryHub::new();
    let alice = dev(&hub, "alice", "phone").await;
    let bob = dev(&hub, "bob", "phone").await;
    let started = tokio::time::Instant::now();
    invite(&alice, &["bob"], 30).await;
    bob.rec.wait_for(Callback::IncomingCallTimeout, 1).await;
    alice.rec.wait_for(Callback::OutgoingCallTimeout, 1).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(30) && took < Duration::from_secs(31),
        "{took:?}"
    );
    assert_eq!(bob.rec.count(Callback::IncomingCallTimeout), 1);
}

#[tokio::test(start_paused = true)]
async fn decline_pressed_and_outgoing_declined() {
    let hub = MemoryHub::new();
    let alice = dev(&hub, "alice", "phone").await;
    let bob = dev(&hub, "bob", "phone").await;
    let call = invite(&alice, &["bob"], 60).await;
    bob.rec.wait_for(Callback::IncomingCallReceived, 1).await;
    bob.client.decline(&call).await.unwrap();
    bob.rec
        .wait_for(Callback::IncomingCallDeclineButtonPressed, 1)
        .await;
    alice.rec.wait_for(Callback::OutgoingCallDeclined, 1).await;
}

#[tokio::test(start_paused = true)]
async fn rejected_cause_busy_server_side_and_declared() {
    let hub = MemoryHub::new();
    let alice = dev(&hub, "alice", "phone").await;
    let bob = dev(&hub, "bob", "phone").await;
    let carol = dev(&hub, "carol", "phone").await;
    // bob declares busy
    let call = invite(&alice, &["bob"], 60).await;
    bob.rec.wait_for(Callback::IncomingCallReceived, 1).await;
    bob.client.decline_busy(&call).await.unwrap();
    let r = alice
        .rec
        .wait_for(Callback::OutgoingCallRejectedCauseBusy, 1)
        .await;
    assert!(matches!(
        r.event,
        AppEvent::OutgoingCallRejectedCauseBusy {
            custom_data: Some(_),
            ..
        }
    ));
    // the server decides: bob is in a call with carol
    let with_carol = invite(&carol, &["bob"], 60).await;
    bob.rec.wait_for(Callback::IncomingCallReceived, 2).await;
    bob.client.accept(&with_carol).await.unwrap();
    let busy = alice
        .client
        .invite(["bob"], CallType::Voice, None)
        .await
        .unwrap();
    assert_eq!(
        busy.callees[0].status,
        invitation_core::protocol::InitialStatus::Busy
    );
    alice
        .rec
        .wait_for(Callback::OutgoingCallRejectedCauseBusy, 2)
        .await;
    assert_eq!(
        bob.rec.count(Callback::IncomingCallReceived),
        2,
        "bob never rang for the busy call"
    );
}

#[tokio::test(start_paused = true)]
async fn answered_elsewhere_stops_the_other_device() {
    let hub = MemoryHub::new();
    let alice = dev(&hub, "alice", "phone").await;
    let phone = dev(&hub, "bob", "phone").await;
    let laptop = dev(&hub, "bob", "laptop").await;
    let mut laptop_events = laptop.client.events();
    let call = invite(&alice, &["bob"], 60).await;
    phone.rec.wait_for(Callback::IncomingCallReceived, 1).await;
    laptop.rec.wait_for(Callback::IncomingCallReceived, 1).await;
    phone.client.accept(&call).await.unwrap();
    let r = laptop.rec.wait_for(Callback::IncomingCallCanceled, 1).await;
    assert!(matches!(
        r.event,
        AppEvent::IncomingCallCanceled {
            reason: Reason::AnsweredElsewhere,
            ..
        }
    ));
    loop {
        if let AppEvent::AnsweredElsewhere { device, .. } = laptop_events.recv().await.unwrap() {
            assert_eq!(device, Some(DeviceId::new("phone").unwrap()));
            break;
        }
    }
    let late = laptop.client.accept(&call).await;
    assert!(matches!(
        late,
        Err(ClientError::Command(CommandError::Ended {
            reason: Reason::AnsweredElsewhere
        }))
    ));
    assert_eq!(alice.rec.count(Callback::OutgoingCallAccepted), 1);
}

#[tokio::test(start_paused = true)]
async fn offline_callee_gets_the_call_on_connect() {
    let hub = MemoryHub::new();
    let alice = dev(&hub, "alice", "phone").await;
    let call = invite(&alice, &["bob"], 60).await;
    tokio::time::sleep(Duration::from_secs(10)).await; // bob is offline for 10 s
    let bob = dev(&hub, "bob", "phone").await;
    let r = bob.rec.wait_for(Callback::IncomingCallReceived, 1).await;
    match r.event {
        AppEvent::IncomingCallReceived { ring_remaining, .. } => {
            assert_eq!(
                ring_remaining,
                Duration::from_secs(50),
                "server-relative time left"
            )
        }
        other => panic!("{other:?}"),
    }
    bob.client.accept(&call).await.unwrap();
    alice.rec.wait_for(Callback::OutgoingCallAccepted, 1).await;
}

#[tokio::test(start_paused = true)]
async fn group_call_has_per_callee_outcomes() {
    let hub = MemoryHub::new();
    let alice = dev(&hub, "alice", "phone").await;
    let bob = dev(&hub, "bob", "phone").await;
    let carol = dev(&hub, "carol", "phone").await;
    let dave = dev(&hub, "dave", "phone").await;
    let call = invite(&alice, &["bob", "carol", "dave"], 20).await;
    for d in [&bob, &carol, &dave] {
        d.rec.wait_for(Callback::IncomingCallReceived, 1).await;
    }
    bob.client.accept(&call).await.unwrap();
    carol.client.decline(&call).await.unwrap();
    dave.rec.wait_for(Callback::IncomingCallTimeout, 1).await;
    let outcomes: Vec<(String, &str)> = {
        alice.rec.wait_for(Callback::OutgoingCallTimeout, 1).await;
        alice
            .rec
            .records()
            .into_iter()
            .filter_map(|r| match r.event {
                AppEvent::OutgoingCallAccepted { callee, .. } => {
                    Some((callee.to_string(), "accepted"))
                }
                AppEvent::OutgoingCallDeclined { callee, .. } => {
                    Some((callee.to_string(), "declined"))
                }
                AppEvent::OutgoingCallTimeout { callee, .. } => {
                    Some((callee.to_string(), "timeout"))
                }
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        outcomes,
        [
            ("bob".into(), "accepted"),
            ("carol".into(), "declined"),
            ("dave".into(), "timeout")
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn caller_gone_cancels_after_the_grace_period() {
    let hub = MemoryHub::new();
    let alice = dev(&hub, "alice", "phone").await;
    let bob = dev(&hub, "bob", "phone").await;
    invite(&alice, &["bob"], 60).await;
    bob.rec.wait_for(Callback::IncomingCallReceived, 1).await;
    alice.client.close().await; // alice's app dies
    let started = tokio::time::Instant::now();
    let r = bob.rec.wait_for(Callback::IncomingCallCanceled, 1).await;
    assert!(matches!(
        r.event,
        AppEvent::IncomingCallCanceled {
            reason: Reason::CallerGone,
            ..
        }
    ));
    assert!(started.elapsed() >= Duration::from_secs(15));
}

#[tokio::test(start_paused = true)]
async fn reconnect_while_ringing_loses_and_duplicates_nothing() {
    let hub = MemoryHub::new();
    let alice = dev(&hub, "alice", "phone").await;
    let bob = dev(&hub, "bob", "phone").await;
    let call = invite(&alice, &["bob"], 60).await;
    bob.rec.wait_for(Callback::IncomingCallReceived, 1).await;
    let mut bob_events = bob.client.events();
    hub.kick(
        &UserId::new("bob").unwrap(),
        &DeviceId::new("phone").unwrap(),
    );
    // The client notices, reconnects on its own, and resumes.
    loop {
        if let AppEvent::Connection(ConnectionState::Connected { resumed, .. }) =
            bob_events.recv().await.unwrap()
        {
            assert!(resumed);
            break;
        }
    }
    bob.client.accept(&call).await.unwrap();
    alice.rec.wait_for(Callback::OutgoingCallAccepted, 1).await;
    assert_eq!(
        bob.rec.count(Callback::IncomingCallReceived),
        1,
        "no duplicate ring"
    );
}

/// Accepts from inside the callback.
struct AutoAccept;

#[async_trait]
impl InvitationEvents for AutoAccept {
    async fn on_incoming_call_received(
        &self,
        ctx: &CallContext,
        _: &CallId,
        _: &User,
        _: CallType,
        _: &[User],
        _: Option<&CustomData>,
    ) {
        ctx.accept().await.expect("acting from a callback works");
    }
}

#[tokio::test(start_paused = true)]
async fn acting_from_inside_a_callback_does_not_deadlock() {
    let hub = MemoryHub::new();
    let alice = dev(&hub, "alice", "phone").await;
    let bob = dev_with(&hub, "bob", "phone", Some(Arc::new(AutoAccept))).await;
    invite(&alice, &["bob"], 60).await;
    alice.rec.wait_for(Callback::OutgoingCallAccepted, 1).await;
    bob.rec
        .wait_for(Callback::IncomingCallAcceptButtonPressed, 1)
        .await;
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
async fn commands_return_typed_results() {
    let hub = MemoryHub::new();
    let alice = dev(&hub, "alice", "phone").await;
    let unknown = CallId::new("nope").unwrap();
    assert!(matches!(
        alice.client.accept(&unknown).await,
        Err(ClientError::Command(CommandError::NotFound))
    ));
    assert!(matches!(
        alice.client.invite(["bad id"], CallType::Voice, None).await,
        Err(ClientError::Invalid(_))
    ));
    assert!(matches!(
        alice.client.invite(["alice"], CallType::Voice, None).await,
        Err(ClientError::Command(CommandError::Rejected { .. }))
    ));
    alice.client.close().await;
    assert!(matches!(
        alice.client.cancel(&unknown).await,
        Err(ClientError::Closed)
    ));
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
