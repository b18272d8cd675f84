//! Flows about custom data on every action and device receipts, run on
//! both fixtures like the rest of the suite (tests/acts_flows.rs).
//!
//! Each flow asserts, per device and in order, which callbacks fired with
//! which data, and what the event stream said.

use std::sync::{Arc, Mutex};

use invitation::prelude::*;
use invitation_core::{DeviceId, SessionConfig};
use tokio::sync::broadcast;

use super::{Dev, Fixture, assert_callbacks, invite, next_event};
use Callback::*;

fn data(s: &str) -> CustomData {
    CustomData::new(s).unwrap()
}

fn room() -> CustomData {
    data("{\"room\":\"r1\"}")
}

fn did(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

/// Records what each of the caller's outcome callbacks found in
/// `ctx.custom_data()`, in the order they ran.
#[derive(Default)]
struct ContextData(Mutex<Vec<(Callback, Option<CustomData>)>>);

impl ContextData {
    fn note(&self, callback: Callback, ctx: &CallContext) {
        let got = ctx.custom_data().cloned();
        self.0.lock().unwrap().push((callback, got));
    }

    fn seen(&self) -> Vec<(Callback, Option<CustomData>)> {
        self.0.lock().unwrap().clone()
    }
}

#[async_trait]
impl InvitationEvents for ContextData {
    async fn on_outgoing_call_accepted(&self, ctx: &CallContext, _: &CallId, _: &UserId) {
        self.note(OutgoingCallAccepted, ctx);
    }

    async fn on_outgoing_call_declined(&self, ctx: &CallContext, _: &CallId, _: &UserId) {
        self.note(OutgoingCallDeclined, ctx);
    }

    async fn on_outgoing_call_rejected_cause_busy(
        &self,
        ctx: &CallContext,
        _: &CallId,
        _: &UserId,
        custom_data: Option<&CustomData>,
    ) {
        assert_eq!(custom_data, ctx.custom_data(), "argument and context agree");
        self.note(OutgoingCallRejectedCauseBusy, ctx);
    }

    async fn on_outgoing_call_timeout(
        &self,
        ctx: &CallContext,
        _: &CallId,
        _: &UserId,
        custom_data: Option<&CustomData>,
    ) {
        assert_eq!(custom_data, ctx.custom_data(), "argument and context agree");
        self.note(OutgoingCallTimeout, ctx);
    }
}

/// Every callback a device got: which, for which call, with which data.
fn callbacks_with_data(dev: &Dev) -> Vec<(Callback, CallId, Option<CustomData>)> {
    dev.rec
        .records()
        .into_iter()
        .map(|r| (r.callback, r.call_id, r.event.custom_data().cloned()))
        .collect()
}

/// Every event on `rx` up to and including the first matching `pred`.
async fn events_until(
    f: &impl Fixture,
    rx: &mut broadcast::Receiver<AppEvent>,
    what: &str,
    pred: impl Fn(&AppEvent) -> bool,
) -> Vec<AppEvent> {
    let mut seen = Vec::new();
    loop {
        let e = next_event(f, rx, what, |_| true).await;
        let done = pred(&e);
        seen.push(e);
        if done {
            return seen;
        }
    }
}

/// Three calls from alice to bob's phone and laptop: accepted with data on
/// the phone (then hung up with data), declined with data on the laptop,
/// timed out. Each callback carries the data of the action behind it.
pub async fn action_data(f: &impl Fixture) {
    let probe = Arc::new(ContextData::default());
    let alice = f.device_with("alice", "phone", Some(probe.clone())).await;
    let phone = f.device("bob", "phone").await;
    let laptop = f.device("bob", "laptop").await;
    let mut alice_events = alice.client.events();
    let mut laptop_events = laptop.client.events();

    // 1: accepted on the phone with data, hung up with data.
    let first = invite(&alice, &["bob"], 60).await.call_id;
    phone.rec.wait_for(IncomingCallReceived, 1).await;
    laptop.rec.wait_for(IncomingCallReceived, 1).await;
    phone
        .client
        .accept_with(&first, Some(data("accepted on the phone")))
        .await
        .unwrap();
    alice.rec.wait_for(OutgoingCallAccepted, 1).await;
    laptop.rec.wait_for(IncomingCallCanceled, 1).await;
    let elsewhere = next_event(f, &mut laptop_events, "answered elsewhere", |e| {
        matches!(e, AppEvent::AnsweredElsewhere { .. })
    })
    .await;
    match elsewhere {
        AppEvent::AnsweredElsewhere {
            call_id,
            device,
            custom_data,
            ..
        } => {
            assert_eq!(call_id, first);
            assert_eq!(device, Some(did("phone")));
            assert_eq!(custom_data, Some(data("accepted on the phone")));
        }
        other => panic!("{other:?}"),
    }
    phone
        .client
        .hang_up_with(&first, Some(data("talk later")))
        .await
        .unwrap();
    let ended = next_event(f, &mut alice_events, "call ended", |e| {
        matches!(e, AppEvent::CallEnded { .. })
    })
    .await;
    assert_eq!(
        (ended.call_id().cloned(), ended.custom_data().cloned()),
        (Some(first.clone()), Some(data("talk later")))
    );

    // 2: declined on the laptop with data.
    let second = invite(&alice, &["bob"], 60).await.call_id;
    laptop.rec.wait_for(IncomingCallReceived, 2).await;
    phone.rec.wait_for(IncomingCallReceived, 2).await;
    laptop
        .client
        .decline_with(&second, Some(data("not now")))
        .await
        .unwrap();
    alice.rec.wait_for(OutgoingCallDeclined, 1).await;
    phone.rec.wait_for(IncomingCallCanceled, 1).await;

    // 3: nobody answers: the timeout gives alice her own invite's data.
    let third = invite(&alice, &["bob"], f.ring_s()).await.call_id;
    alice.rec.wait_for(OutgoingCallTimeout, 1).await;
    phone.rec.wait_for(IncomingCallTimeout, 1).await;
    laptop.rec.wait_for(IncomingCallTimeout, 1).await;

    assert_eq!(
        callbacks_with_data(&alice),
        [
            (
                OutgoingCallAccepted,
                first.clone(),
                Some(data("accepted on the phone"))
            ),
            (OutgoingCallDeclined, second.clone(), Some(data("not now"))),
            (OutgoingCallTimeout, third.clone(), Some(room())),
        ]
    );
    assert_eq!(
        probe.seen(),
        [
            (OutgoingCallAccepted, Some(data("accepted on the phone"))),
            (OutgoingCallDeclined, Some(data("not now"))),
            (OutgoingCallTimeout, Some(room())),
        ],
        "ctx.custom_data() in the callbacks"
    );
    assert_eq!(
        callbacks_with_data(&phone),
        [
            (IncomingCallReceived, first.clone(), Some(room())),
            (IncomingCallAcceptButtonPressed, first.clone(), None),
            (IncomingCallReceived, second.clone(), Some(room())),
            (IncomingCallCanceled, second.clone(), Some(data("not now"))),
            (IncomingCallReceived, third.clone(), Some(room())),
            (IncomingCallTimeout, third.clone(), None),
        ]
    );
    assert_eq!(
        callbacks_with_data(&laptop),
        [
            (IncomingCallReceived, first.clone(), Some(room())),
            (
                IncomingCallCanceled,
                first.clone(),
                Some(data("accepted on the phone"))
            ),
            (IncomingCallReceived, second.clone(), Some(room())),
            (IncomingCallDeclineButtonPressed, second.clone(), None),
            (IncomingCallReceived, third.clone(), Some(room())),
            (IncomingCallTimeout, third.clone(), None),
        ]
    );
}

/// bob's phone acknowledges; carol's device is connected and rings but
/// never acknowledges (a frozen app); bob's laptop acknowledges too. alice
/// learns "ringing" for both callees, "delivered" once per acknowledging
/// device, and nothing of the kind for carol.
pub async fn delivery_receipts(f: &impl Fixture) {
    let alice = f.device("alice", "phone").await;
    let phone = f.device("bob", "phone").await;
    let laptop = f.device("bob", "laptop").await;
    let mut frozen = SessionConfig::default();
    frozen.send_receipts = false;
    let carol = f.device_configured("carol", "phone", None, frozen).await;
    let mut alice_events = alice.client.events();

    let call = invite(&alice, &["bob", "carol"], 60).await.call_id;
    phone.rec.wait_for(IncomingCallReceived, 1).await;
    laptop.rec.wait_for(IncomingCallReceived, 1).await;
    carol.rec.wait_for(IncomingCallReceived, 1).await;
    // carol's decline comes after anything her device sent before it: by
    // the time alice hears of it, a receipt from carol would have arrived.
    carol.client.decline(&call).await.unwrap();
    let seen = events_until(f, &mut alice_events, "carol's decline", |e| {
        matches!(e, AppEvent::OutgoingCallDeclined { callee, .. } if callee.as_str() == "carol")
    })
    .await;
    let mut ringing: Vec<String> = Vec::new();
    let mut delivered: Vec<(String, String)> = Vec::new();
    for e in &seen {
        match e {
            AppEvent::CalleeRinging {
                call_id, callee, ..
            } if *call_id == call => {
                ringing.push(callee.to_string());
            }
            AppEvent::CalleeDelivered {
                call_id,
                callee,
                device,
                ..
            } if *call_id == call => delivered.push((callee.to_string(), device.to_string())),
            _ => {}
        }
    }
    ringing.sort_unstable();
    assert_eq!(ringing, ["bob", "carol"], "both rang: {seen:?}");
    // bob's two receipts may overtake carol's decline or not; wait for any
    // still missing, then check there is exactly one per device.
    while delivered.len() < 2 {
        let e = next_event(f, &mut alice_events, "bob's receipts", |e| {
            matches!(e, AppEvent::CalleeDelivered { .. })
        })
        .await;
        let AppEvent::CalleeDelivered { callee, device, .. } = e else {
            unreachable!()
        };
        delivered.push((callee.to_string(), device.to_string()));
    }
    delivered.sort_unstable();
    let pair = |u: &str, d: &str| (u.to_owned(), d.to_owned());
    assert_eq!(
        delivered,
        [pair("bob", "laptop"), pair("bob", "phone")],
        "one receipt per acknowledging device, none from carol's frozen app"
    );
    // One more round trip through the switchboard: still nothing from carol
    // and no receipt twice.
    phone.client.decline(&call).await.unwrap();
    let rest = events_until(
        f,
        &mut alice_events,
        "bob's decline",
        |e| matches!(e, AppEvent::OutgoingCallDeclined { callee, .. } if callee.as_str() == "bob"),
    )
    .await;
    assert!(
        !rest
            .iter()
            .any(|e| matches!(e, AppEvent::CalleeDelivered { .. })),
        "{rest:?}"
    );
    assert_callbacks(
        &alice,
        &[(OutgoingCallDeclined, &call), (OutgoingCallDeclined, &call)],
    );
}
