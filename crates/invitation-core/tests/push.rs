//! Push for devices that are not connected: a callee with push credentials
//! and no device in the foreground gets one `ring` push per registered
//! device, with the ring time left as its time to live; when that callee's
//! ring ends, whatever ended it, the same devices get a `stop` push (but
//! the device that answered or declined). Registrations are validated and
//! bounded per user.

mod harness;

use std::time::Duration;

use harness::{Net, did, uid};
use invitation_core::protocol::{Command, PushPlatform, PushRegistration, ReplyResult};
use invitation_core::switchboard::{PushNotice, PushWhat};
use invitation_core::{
    CallId, CallType, CommandError, OfflinePolicy, Reason, SwitchboardConfig, ValidationError,
};

fn config() -> SwitchboardConfig {
    let mut c = SwitchboardConfig::default();
    c.push = true;
    c
}

fn register(net: &mut Net, user: &str, device: &str, platform: PushPlatform, token: &str) {
    let r = net.act(
        user,
        device,
        Command::RegisterPush(PushRegistration::new(platform, token)),
    );
    assert_eq!(r, Ok(ReplyResult::Done));
}

/// Registers push credentials on `device` of `user`, then goes offline.
fn registered_offline(net: &mut Net, user: &str, device: &str, token: &str) {
    net.connect(user, device);
    register(net, user, device, PushPlatform::Apns, token);
    net.disconnect(user, device);
}

/// A push as (kind, user, device, token, ttl ms, stop reason).
type Seen = (&'static str, String, String, String, u128, Option<Reason>);

/// Every push since `from`.
fn seen(net: &Net, from: usize) -> Vec<Seen> {
    net.pushes[from..]
        .iter()
        .map(|(_, p)| {
            let (kind, reason) = match &p.what {
                PushWhat::Ring { .. } => ("ring", None),
                PushWhat::Stop { reason } => ("stop", Some(*reason)),
                _ => ("other", None),
            };
            (
                kind,
                p.user.to_string(),
                p.device.to_string(),
                p.registration.token.clone(),
                p.ttl.as_millis(),
                reason,
            )
        })
        .collect()
}

fn ring(user: &str, device: &str, token: &str, ttl_ms: u128) -> Seen {
    (
        "ring",
        user.into(),
        device.into(),
        token.into(),
        ttl_ms,
        None,
    )
}

fn stop(user: &str, device: &str, token: &str, ttl_ms: u128, reason: Reason) -> Seen {
    (
        "stop",
        user.into(),
        device.into(),
        token.into(),
        ttl_ms,
        Some(reason),
    )
}

fn only_call(net: &Net) -> CallId {
    net.pushes[0].1.call_id.clone()
}

#[test]
fn an_offline_callee_is_pushed_the_call_with_the_ring_time_left() {
    let mut net = Net::with_config(config());
    registered_offline(&mut net, "bob", "phone", "tok-phone");
    net.connect("alice", "laptop");
    let call = net.invite("alice", "laptop", &["bob"], Some(30)).unwrap();

    assert_eq!(
        seen(&net, 0),
        vec![ring("bob", "phone", "tok-phone", 30_000)]
    );
    let push: &PushNotice = &net.pushes[0].1;
    assert_eq!(push.call_id, call);
    assert_eq!(push.registration.platform, PushPlatform::Apns);
    match &push.what {
        PushWhat::Ring {
            caller,
            call_type,
            callees,
            custom_data,
        } => {
            assert_eq!(caller.id, uid("alice"));
            assert_eq!(*call_type, CallType::Voice);
            assert_eq!(callees.len(), 1);
            assert_eq!(callees[0].id, uid("bob"));
            assert_eq!(custom_data.as_ref().unwrap().as_str(), "{\"room\":1}");
        }
        other => panic!("{other:?}"),
    }

    // The phone wakes 4 s later and connects: the held invitation rings
    // there as always, no second push. It accepts: the device that
    // answered gets no stop.
    net.advance(Duration::from_secs(4));
    net.connect("bob", "phone");
    assert!(net.names("bob", "phone").contains(&"incoming_received"));
    net.accept("bob", "phone", &call).unwrap();
    assert_eq!(net.pushes.len(), 1, "{:?}", seen(&net, 0));
}

#[test]
fn every_registered_device_rings_and_the_others_stop_when_one_answers() {
    let mut net = Net::with_config(config());
    registered_offline(&mut net, "bob", "phone", "tok-phone");
    net.connect("bob", "tablet");
    register(&mut net, "bob", "tablet", PushPlatform::Fcm, "tok-tablet");
    net.disconnect("bob", "tablet");
    net.connect("alice", "laptop");
    let call = net.invite("alice", "laptop", &["bob"], Some(60)).unwrap();
    assert_eq!(
        seen(&net, 0),
        vec![
            ring("bob", "phone", "tok-phone", 60_000),
            ring("bob", "tablet", "tok-tablet", 60_000)
        ]
    );
    assert_eq!(net.pushes[1].1.registration.platform, PushPlatform::Fcm);

    net.advance(Duration::from_millis(12_500));
    net.connect("bob", "phone");
    net.accept("bob", "phone", &call).unwrap();
    // What was left of the ring when it stopped: 47.5 s.
    assert_eq!(
        seen(&net, 2),
        vec![stop(
            "bob",
            "tablet",
            "tok-tablet",
            47_500,
            Reason::Accepted
        )]
    );
    assert_eq!(net.pushes[2].1.call_id, call);
}

#[test]
fn a_cancel_a_timeout_and_a_decline_each_stop_the_pushed_devices() {
    let mut net = Net::with_config(config());
    registered_offline(&mut net, "bob", "phone", "tok");
    net.connect("alice", "laptop");

    // Canceled after 5 s.
    let call = net.invite("alice", "laptop", &["bob"], Some(30)).unwrap();
    net.advance(Duration::from_secs(5));
    net.cancel("alice", "laptop", &call).unwrap();
    assert_eq!(
        seen(&net, 0),
        vec![
            ring("bob", "phone", "tok", 30_000),
            stop("bob", "phone", "tok", 25_000, Reason::Canceled)
        ]
    );

    // Timed out: the stop has nothing left to live for.
    let mark = net.pushes.len();
    net.invite("alice", "laptop", &["bob"], Some(10)).unwrap();
    net.advance(Duration::from_secs(11));
    assert_eq!(
        seen(&net, mark),
        vec![
            ring("bob", "phone", "tok", 10_000),
            stop("bob", "phone", "tok", 0, Reason::Timeout)
        ]
    );

    // Declined on a connected device that is in the background: both the
    // background device and the phone were pushed; the decliner is not
    // told to stop, the phone is.
    net.connect("bob", "tablet");
    assert_eq!(
        net.act("bob", "tablet", Command::AppState { background: true }),
        Ok(ReplyResult::Done)
    );
    register(&mut net, "bob", "tablet", PushPlatform::Fcm, "tok-tablet");
    let mark = net.pushes.len();
    let call = net.invite("alice", "laptop", &["bob"], Some(20)).unwrap();
    net.advance(Duration::from_secs(1));
    net.decline("bob", "tablet", &call, false).unwrap();
    assert_eq!(
        seen(&net, mark),
        vec![
            ring("bob", "phone", "tok", 20_000),
            ring("bob", "tablet", "tok-tablet", 20_000),
            stop("bob", "phone", "tok", 19_000, Reason::Declined)
        ]
    );
}

#[test]
fn a_device_in_the_foreground_means_no_push() {
    let mut net = Net::with_config(config());
    registered_offline(&mut net, "bob", "phone", "tok");
    net.connect("bob", "laptop"); // in the foreground: it rings itself
    net.connect("alice", "laptop");
    let call = net.invite("alice", "laptop", &["bob"], Some(30)).unwrap();
    net.cancel("alice", "laptop", &call).unwrap();
    assert!(net.pushes.is_empty(), "{:?}", seen(&net, 0));

    // Back to the foreground after the background: no push either.
    net.act("bob", "laptop", Command::AppState { background: true })
        .unwrap();
    net.act("bob", "laptop", Command::AppState { background: false })
        .unwrap();
    net.invite("alice", "laptop", &["bob"], Some(30)).unwrap();
    assert!(net.pushes.is_empty(), "{:?}", seen(&net, 0));
}

#[test]
fn without_push_on_nothing_is_pushed() {
    let mut net = Net::new();
    registered_offline(&mut net, "bob", "phone", "tok");
    net.connect("alice", "laptop");
    net.invite("alice", "laptop", &["bob"], Some(30)).unwrap();
    assert!(net.pushes.is_empty());
    // The registration is kept all the same (an owner may turn push on).
    assert_eq!(net.sb.push_devices(&uid("bob")).len(), 1);
}

#[test]
fn registrations_are_validated_replaced_and_bounded_per_user() {
    let mut net = Net::with_config(config());
    net.connect("bob", "phone");
    for (token, want) in [
        (
            String::new(),
            ValidationError::Empty {
                field: "push token",
            },
        ),
        (
            "x".repeat(PushRegistration::MAX_TOKEN + 1),
            ValidationError::TooLong {
                field: "push token",
                max: PushRegistration::MAX_TOKEN,
                len: PushRegistration::MAX_TOKEN + 1,
            },
        ),
        (
            "a\nb".to_owned(),
            ValidationError::BadCharacter {
                field: "push token",
                byte: b'\n',
            },
        ),
    ] {
        let r = net.direct(
            "bob",
            "phone",
            Command::RegisterPush(PushRegistration::new(PushPlatform::Fcm, token)),
        );
        assert_eq!(r, Err(CommandError::Invalid(want)));
    }
    assert!(net.sb.push_devices(&uid("bob")).is_empty());

    register(&mut net, "bob", "phone", PushPlatform::Fcm, "one");
    register(&mut net, "bob", "phone", PushPlatform::Apns, "two");
    assert_eq!(
        net.sb.push_devices(&uid("bob")),
        &[(
            did("phone"),
            PushRegistration::new(PushPlatform::Apns, "two")
        )]
    );

    // The backend registers devices too; past the limit the oldest goes.
    let now = net.now;
    let limit = config().max_push_devices;
    for i in 0..limit + 2 {
        let device = did(&format!("d{i}"));
        let reg = PushRegistration::new(PushPlatform::WebPush, format!("t{i}"));
        net.sb
            .handle_backend_push(now, &uid("bob"), &device, Some(reg))
            .unwrap();
    }
    let kept: Vec<String> = net
        .sb
        .push_devices(&uid("bob"))
        .iter()
        .map(|(d, _)| d.to_string())
        .collect();
    let want: Vec<String> = (2..limit + 2).map(|i| format!("d{i}")).collect();
    assert_eq!(kept, want, "the phone and d0, d1 were the oldest");

    // Forgotten by the device itself, and by the backend.
    net.sb
        .handle_backend_push(now, &uid("bob"), &did("d5"), None)
        .unwrap();
    assert_eq!(net.sb.push_devices(&uid("bob")).len(), limit - 1);
    assert_eq!(
        net.sb.handle_backend_push(
            now,
            &uid("bob"),
            &did("backend"),
            Some(PushRegistration::new(PushPlatform::Apns, "x"))
        ),
        Err(CommandError::Invalid(ValidationError::Reserved {
            field: "device",
            value: "backend"
        }))
    );
    register(&mut net, "bob", "phone", PushPlatform::Apns, "three");
    assert_eq!(
        net.act("bob", "phone", Command::UnregisterPush),
        Ok(ReplyResult::Done)
    );
    assert!(
        !net.sb
            .push_devices(&uid("bob"))
            .iter()
            .any(|(d, _)| *d == did("phone"))
    );
}

#[test]
fn under_a_reject_offline_policy_a_pushable_callee_is_held_not_unreachable() {
    let mut c = config();
    c.offline_policy = OfflinePolicy::Reject;
    let mut net = Net::with_config(c);
    registered_offline(&mut net, "bob", "phone", "tok");
    net.connect("alice", "laptop");
    let call = net
        .invite("alice", "laptop", &["bob", "carol"], Some(30))
        .unwrap();
    // Carol has no credentials: unreachable at once. Bob is pushed and held.
    assert_eq!(seen(&net, 0), vec![ring("bob", "phone", "tok", 30_000)]);
    assert_eq!(only_call(&net), call);
    net.connect("bob", "phone");
    net.accept("bob", "phone", &call).unwrap();
    assert!(net.names("alice", "laptop").contains(&"outgoing_accepted"));
}

#[test]
fn a_callee_added_to_a_running_call_is_pushed_its_own_ring() {
    let mut net = Net::with_config(config());
    registered_offline(&mut net, "carol", "phone", "tok-carol");
    net.connect("alice", "laptop");
    net.connect("bob", "phone");
    let call = net.invite("alice", "laptop", &["bob"], Some(30)).unwrap();
    net.accept("bob", "phone", &call).unwrap();
    net.advance(Duration::from_secs(10));
    net.add("alice", "laptop", &call, &["carol"]).unwrap();
    assert_eq!(
        seen(&net, 0),
        vec![ring("carol", "phone", "tok-carol", 30_000)]
    );
    // Ending the call stops carol's ring.
    net.advance(Duration::from_secs(3));
    net.end("alice", "laptop", &call).unwrap();
    let after = seen(&net, 1);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].0, "stop");
    assert_eq!(after[0].4, 27_000);
}
