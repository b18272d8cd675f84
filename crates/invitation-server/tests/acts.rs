//! Raw protocol against a real `invitation-server` on 127.0.0.1:0: custom
//! data on every action (which event carries which action's data), and
//! device receipts (`received` → `callee_delivered`): never answered, once
//! per device, nothing for a foreign or repeated receipt, kept in `sync`.
//!
//! Absence is proven by order, never by waiting: a `sync` round trip goes
//! through the hub after everything sent before it on the same connection,
//! and its answer is queued after every event the hub queued before.

mod common;

use common::*;
use invitation_core::protocol::{
    ClientMessage, Command, Delivery, Event, InitialStatus, InviteRequest, ReplyResult, ServerBody,
    ServerMessage,
};
use invitation_core::{
    CallId, CallType, CustomData, DeviceId, ErrorCode, Reason, RequestId, UserId,
};

fn rid(s: &str) -> RequestId {
    RequestId::new(s).unwrap()
}

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn did(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

fn data(s: &str) -> CustomData {
    CustomData::new(s).unwrap()
}

fn invite(id: &str, callees: &[&str]) -> ClientMessage {
    ClientMessage::new(
        rid(id),
        Command::Invite(
            InviteRequest::new(callees.iter().map(|c| uid(c)).collect(), CallType::Voice)
                .with_custom_data(Some(data("invite-data")))
                .with_timeout_s(Some(60)),
        ),
    )
}

fn received(id: &str, call: &CallId) -> ClientMessage {
    ClientMessage::new(
        rid(id),
        Command::Received {
            call_id: call.clone(),
        },
    )
}

/// A fresh device: `welcome`, then the unasked snapshot a fresh start gets.
async fn hello(srv: &invitation_server::RunningServer, user: &str, device: &str) -> Raw {
    let (mut raw, _) = Raw::hello(srv, user, device, None).await;
    let m = raw.recv().await;
    assert!(
        matches!(&m.body, ServerBody::Sync(s) if s.re.is_none()),
        "{m:?}"
    );
    raw
}

/// Sends an invite and returns the call and the per-callee statuses.
async fn invited(raw: &mut Raw, msg: &ClientMessage) -> (CallId, Vec<InitialStatus>) {
    raw.send(msg).await;
    let m = raw
        .until(|b| b.success().is_some() || matches!(b, ServerBody::Error(_)))
        .await;
    match m.body.success() {
        Some((
            _,
            ReplyResult::Invited {
                call_id, callees, ..
            },
        )) => (call_id, callees.into_iter().map(|c| c.status).collect()),
        _ => panic!("{m:?}"),
    }
}

/// The next message: the event that answers command `id` (a command's
/// answer rides on the first event it caused).
async fn answer_event(raw: &mut Raw, id: &str) -> Event {
    let m = raw.recv().await;
    match m.body {
        ServerBody::Event {
            re: Some(re),
            result: None,
            event,
            ..
        } if re == rid(id) => event,
        other => panic!("expected the event answering {id}, got {other:?}"),
    }
}

/// The next event (skipping nothing else: an answer here is a failure).
async fn event(raw: &mut Raw) -> Event {
    match raw.recv().await.body {
        ServerBody::Event { event, .. } => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// A `sync` round trip: every message that arrived before its answer, and
/// the answer.
async fn sync_collect(raw: &mut Raw, id: &str) -> (Vec<ServerMessage>, ServerMessage) {
    raw.text(&format!(r#"{{"v":1,"id":"{id}","type":"sync"}}"#))
        .await;
    let mut before = Vec::new();
    loop {
        let m = raw.recv().await;
        if matches!(&m.body, ServerBody::Sync(s) if s.re == Some(rid(id))) {
            return (before, m);
        }
        before.push(m);
    }
}

fn events(ms: &[ServerMessage]) -> Vec<Event> {
    ms.iter()
        .map(|m| match &m.body {
            ServerBody::Event { event, .. } => event.clone(),
            other => panic!("expected only events, got {other:?}"),
        })
        .collect()
}

fn incoming_call_id(e: &Event) -> CallId {
    match e {
        Event::IncomingCall { call_id, .. } => call_id.clone(),
        other => panic!("expected incoming_call, got {other:?}"),
    }
}

// ----- receipts ---------------------------------------------------------

/// Two devices of bob that say nothing are "ringing" but not delivered;
/// each one's receipt then reaches alice once, naming it. A repeated
/// receipt is not answered and changes nothing; the snapshot keeps both.
#[tokio::test]
async fn receipts_are_per_device_once_each_and_never_answered() {
    let srv = server(|_| {}).await;
    let mut alice = hello(&srv, "alice", "phone").await;
    let mut phone = hello(&srv, "bob", "phone").await;
    let mut laptop = hello(&srv, "bob", "laptop").await;
    let (call, statuses) = invited(&mut alice, &invite("i1", &["bob"])).await;
    assert_eq!(statuses, [InitialStatus::Ringing]);
    assert_eq!(incoming_call_id(&event(&mut phone).await), call);
    assert_eq!(incoming_call_id(&event(&mut laptop).await), call);

    // Frozen so far: the server rang bob's devices, neither confirmed
    // (`outgoing_call` answered the invite; only the ringing follows).
    let (before, _) = sync_collect(&mut alice, "s0").await;
    let before = events(&before);
    assert!(
        matches!(
            &before[..],
            [Event::CalleeRinging { callee, .. }] if *callee == uid("bob")
        ),
        "{before:?}"
    );

    phone.send(&received("rc1", &call)).await;
    phone.send(&received("rc1", &call)).await; // a duplicate
    let (answers, _) = sync_collect(&mut phone, "s1").await;
    assert_eq!(answers, [], "a receipt is never answered");
    let (before, sync) = sync_collect(&mut alice, "s2").await;
    assert_eq!(
        events(&before),
        [Event::CalleeDelivered {
            call_id: call.clone(),
            callee: uid("bob"),
            device: did("phone"),
        }]
    );
    let ServerBody::Sync(sync) = sync.body else {
        unreachable!()
    };
    assert_eq!(
        sync.calls[0].delivered,
        [Delivery::new(uid("bob"), did("phone"))]
    );

    laptop.send(&received("rc9", &call)).await;
    sync_collect(&mut laptop, "s3").await;
    let (before, sync) = sync_collect(&mut alice, "s4").await;
    assert_eq!(
        events(&before),
        [Event::CalleeDelivered {
            call_id: call.clone(),
            callee: uid("bob"),
            device: did("laptop"),
        }]
    );
    let ServerBody::Sync(sync) = sync.body else {
        unreachable!()
    };
    assert_eq!(
        sync.calls[0].delivered,
        [
            Delivery::new(uid("bob"), did("phone")),
            Delivery::new(uid("bob"), did("laptop"))
        ]
    );

    // The receipts did not disturb the command flow: bob's next command
    // is answered with its own id.
    let accept = ClientMessage::new(rid("a1"), Command::accept(call.clone()));
    phone.send(&accept).await;
    let m = phone
        .until(|b| b.success().is_some() || matches!(b, ServerBody::Error(_)))
        .await;
    assert!(
        matches!(m.body.success(), Some((re, ReplyResult::Done)) if *re == rid("a1")),
        "{m:?}"
    );
}

/// Receipts for someone else's call, an unknown call, your own outgoing
/// call, or a call that no longer rings for you: nothing reaches anyone.
#[tokio::test]
async fn a_receipt_for_a_call_you_are_not_ringing_in_changes_nothing() {
    let srv = server(|_| {}).await;
    let mut alice = hello(&srv, "alice", "phone").await;
    let mut bob = hello(&srv, "bob", "phone").await;
    let mut carol = hello(&srv, "carol", "phone").await;
    let (call, _) = invited(&mut alice, &invite("i1", &["bob"])).await;
    assert_eq!(incoming_call_id(&event(&mut bob).await), call);
    sync_collect(&mut alice, "s0").await; // outgoing_call, callee_ringing

    carol.send(&received("x1", &call)).await; // foreign
    carol
        .send(&received("x2", &CallId::new("no-such-call").unwrap()))
        .await;
    alice.send(&received("x3", &call)).await; // the caller's own call
    let (answers, _) = sync_collect(&mut carol, "s1").await;
    assert_eq!(answers, [], "no answer, no error");
    let (before, _) = sync_collect(&mut alice, "s2").await;
    assert_eq!(before, [], "nothing for alice");

    // bob declines, then acknowledges: too late, the ring is over.
    bob.send(&ClientMessage::new(
        rid("d1"),
        Command::decline(call.clone(), false),
    ))
    .await;
    bob.until(|b| b.success().is_some()).await;
    bob.send(&received("late", &call)).await;
    sync_collect(&mut bob, "s3").await;
    let (before, sync) = sync_collect(&mut alice, "s4").await;
    let before = events(&before);
    assert!(
        matches!(
            &before[..],
            [
                Event::CalleeOutcome {
                    reason: Reason::Declined,
                    ..
                },
                Event::CallEnded {
                    reason: Reason::Declined,
                    ..
                }
            ]
        ),
        "no callee_delivered after the ring ended: {before:?}"
    );
    let ServerBody::Sync(sync) = sync.body else {
        unreachable!()
    };
    assert!(sync.calls.is_empty());
}

/// An offline callee is reported `offline` and held; when a device comes
/// online it rings (`callee_ringing`), and once it acknowledges, delivered.
#[tokio::test]
async fn an_offline_hold_rings_on_connect_then_is_delivered() {
    let srv = server(|_| {}).await;
    let mut alice = hello(&srv, "alice", "phone").await;
    let (call, statuses) = invited(&mut alice, &invite("i1", &["bob"])).await;
    assert_eq!(statuses, [InitialStatus::Offline]);
    // Nothing after the `outgoing_call` that answered the invite.
    let (before, _) = sync_collect(&mut alice, "s0").await;
    assert!(events(&before).is_empty(), "held, not ringing: {before:?}");

    // bob's first connection: a fresh start gets the call in a snapshot.
    let (mut bob, _) = Raw::hello(&srv, "bob", "phone", None).await;
    let snapshot = bob.recv().await;
    let ServerBody::Sync(snap) = snapshot.body else {
        panic!("{snapshot:?}")
    };
    assert_eq!(snap.calls.len(), 1);
    assert_eq!(snap.calls[0].call_id, call);
    let (before, _) = sync_collect(&mut alice, "s1").await;
    assert_eq!(
        events(&before),
        [Event::CalleeRinging {
            call_id: call.clone(),
            callee: uid("bob"),
        }]
    );
    // A receipt for a call learned from a snapshot counts too.
    bob.send(&received("rc", &call)).await;
    sync_collect(&mut bob, "s2").await;
    let (before, _) = sync_collect(&mut alice, "s3").await;
    assert_eq!(
        events(&before),
        [Event::CalleeDelivered {
            call_id: call.clone(),
            callee: uid("bob"),
            device: did("phone"),
        }]
    );
}

// ----- custom data on every action --------------------------------------

/// accept and hang-up data: the caller and the callee's other device get
/// the accept's data; both sides' `call_ended` carry the hang-up's.
#[tokio::test]
async fn accept_and_hang_up_carry_their_data() {
    let srv = server(|_| {}).await;
    let mut alice = hello(&srv, "alice", "phone").await;
    let mut phone = hello(&srv, "bob", "phone").await;
    let mut laptop = hello(&srv, "bob", "laptop").await;
    let (call, _) = invited(&mut alice, &invite("i1", &["bob"])).await;
    event(&mut phone).await;
    event(&mut laptop).await;
    sync_collect(&mut alice, "s0").await;

    let accept = Command::accept(call.clone()).with_custom_data(Some(data("hi")));
    phone.send(&ClientMessage::new(rid("a1"), accept)).await;
    let ended = Event::IncomingEnded {
        call_id: call.clone(),
        reason: Reason::Accepted,
        device: Some(did("phone")),
        custom_data: Some(data("hi")),
    };
    assert_eq!(answer_event(&mut phone, "a1").await, ended);
    assert_eq!(event(&mut laptop).await, ended);
    assert_eq!(
        event(&mut alice).await,
        Event::CalleeOutcome {
            call_id: call.clone(),
            callee: uid("bob"),
            reason: Reason::Accepted,
            custom_data: Some(data("hi")),
        }
    );

    let hang_up = Command::hang_up(call.clone()).with_custom_data(Some(data("bye")));
    phone.send(&ClientMessage::new(rid("h1"), hang_up)).await;
    let over = |reason| Event::CallEnded {
        call_id: call.clone(),
        reason,
        custom_data: Some(data("bye")),
    };
    assert_eq!(answer_event(&mut phone, "h1").await, over(Reason::HungUp));
    assert_eq!(event(&mut alice).await, over(Reason::HungUp));

    // A device that missed it all learns the same from a snapshot.
    let (_, sync) = sync_collect(&mut alice, "s1").await;
    let ServerBody::Sync(sync) = sync.body else {
        unreachable!()
    };
    let ended = sync.ended.iter().find(|e| e.call_id == call).unwrap();
    assert_eq!(ended.reason, Reason::HungUp);
    assert_eq!(ended.custom_data, Some(data("bye")));
    assert_eq!(ended.outcomes[0].custom_data, Some(data("hi")));
}

/// cancel data reaches the callee (not the invite's); the caller's other
/// devices see it with `call_ended`; the caller's `callee_outcome`
/// (canceled) carries none: it is the callee's data only.
#[tokio::test]
async fn cancel_carries_its_data_to_the_callee() {
    let srv = server(|_| {}).await;
    let mut alice = hello(&srv, "alice", "phone").await;
    let mut bob = hello(&srv, "bob", "phone").await;
    let (call, _) = invited(&mut alice, &invite("i1", &["bob"])).await;
    event(&mut bob).await;
    sync_collect(&mut alice, "s0").await;
    let cancel = Command::cancel(call.clone()).with_custom_data(Some(data("sorry")));
    alice.send(&ClientMessage::new(rid("c1"), cancel)).await;
    assert_eq!(
        event(&mut bob).await,
        Event::IncomingEnded {
            call_id: call.clone(),
            reason: Reason::Canceled,
            device: None,
            custom_data: Some(data("sorry")),
        }
    );
    assert_eq!(
        answer_event(&mut alice, "c1").await,
        Event::CalleeOutcome {
            call_id: call.clone(),
            callee: uid("bob"),
            reason: Reason::Canceled,
            custom_data: None,
        }
    );
    assert_eq!(
        event(&mut alice).await,
        Event::CallEnded {
            call_id: call.clone(),
            reason: Reason::Canceled,
            custom_data: Some(data("sorry")),
        }
    );
    let (_, sync) = sync_collect(&mut bob, "s1").await;
    let ServerBody::Sync(sync) = sync.body else {
        unreachable!()
    };
    let ended = sync.ended.iter().find(|e| e.call_id == call).unwrap();
    assert_eq!(
        (ended.reason, ended.custom_data.clone()),
        (Reason::Canceled, Some(data("sorry")))
    );
}

/// A busy decline's data reaches the caller; a busy the server decides
/// carries none; data over the limit is refused like an invite's, and
/// empty data is no data.
#[tokio::test]
async fn busy_data_limits_and_empty_data() {
    let srv = server(|c| c.max_custom_data = 16).await;
    let mut alice = hello(&srv, "alice", "phone").await;
    let mut bob = hello(&srv, "bob", "phone").await;
    let mut carol = hello(&srv, "carol", "phone").await;
    let msg = ClientMessage::new(
        rid("i1"),
        Command::Invite(InviteRequest::new(vec![uid("bob")], CallType::Voice)),
    );
    let (call, _) = invited(&mut alice, &msg).await;
    event(&mut bob).await;
    sync_collect(&mut alice, "s0").await;

    // 17 bytes: refused with the invite's error, nothing changes.
    let long =
        Command::decline(call.clone(), true).with_custom_data(Some(data("0123456789abcdefg")));
    bob.send(&ClientMessage::new(rid("d0"), long)).await;
    let m = bob.recv().await;
    match &m.body {
        ServerBody::Error(e) => {
            assert_eq!(
                (e.code, e.re.clone()),
                (ErrorCode::Invalid, Some(rid("d0")))
            );
        }
        other => panic!("{other:?}"),
    }
    let (before, _) = sync_collect(&mut alice, "s1").await;
    assert_eq!(before, [], "a refused decline changes nothing");

    let busy = Command::decline(call.clone(), true).with_custom_data(Some(data("in a meeting")));
    bob.send(&ClientMessage::new(rid("d1"), busy)).await;
    assert_eq!(
        answer_event(&mut bob, "d1").await,
        Event::IncomingEnded {
            call_id: call.clone(),
            reason: Reason::Busy,
            device: Some(did("phone")),
            custom_data: Some(data("in a meeting")),
        }
    );
    assert_eq!(
        event(&mut alice).await,
        Event::CalleeOutcome {
            call_id: call.clone(),
            callee: uid("bob"),
            reason: Reason::Busy,
            custom_data: Some(data("in a meeting")),
        }
    );

    // carol calls bob, bob accepts with empty data (= none), alice's new
    // invite finds bob busy: no data.
    let (with_carol, _) = invited(&mut carol, &invite("i2", &["bob"])).await;
    assert_eq!(incoming_call_id(&event(&mut bob).await), with_carol);
    let empty = Command::accept(with_carol.clone()).with_custom_data(Some(data("")));
    bob.send(&ClientMessage::new(rid("a1"), empty)).await;
    assert_eq!(
        answer_event(&mut bob, "a1").await,
        Event::IncomingEnded {
            call_id: with_carol.clone(),
            reason: Reason::Accepted,
            device: Some(did("phone")),
            custom_data: None,
        }
    );
    let (busy_call, statuses) = invited(&mut alice, &invite("i3", &["bob"])).await;
    assert_eq!(statuses, [InitialStatus::Busy]);
    let (before, _) = sync_collect(&mut alice, "s2").await;
    let outcome = events(&before)
        .into_iter()
        .find(|e| matches!(e, Event::CalleeOutcome { .. }))
        .unwrap();
    assert_eq!(
        outcome,
        Event::CalleeOutcome {
            call_id: busy_call,
            callee: uid("bob"),
            reason: Reason::Busy,
            custom_data: None,
        }
    );
}
