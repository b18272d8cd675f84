//! A link that reorders messages: the client session must not let a stale
//! snapshot or a late plain `reply` undo what the ordered event stream
//! already said. Each case was found by the simulation's slow profile.

use std::time::Instant;

use invitation_core::protocol::{Command, ServerMessage};
use invitation_core::{
    AppEvent, CallId, ClientSession, DecodeLimits, DeviceId, Reason, SessionConfig, UserId,
};

fn msg(json: &str) -> ServerMessage {
    ServerMessage::decode(json, &DecodeLimits::default()).unwrap_or_else(|e| panic!("{json}: {e}"))
}

fn origin() -> Instant {
    // Tests take time from one allowed origin (the core is sans-IO).
    #[allow(clippy::disallowed_methods)]
    Instant::now()
}

fn cid() -> CallId {
    CallId::new("c-1").unwrap()
}

/// bob, connected and synced at position 0.
fn session(t0: Instant) -> ClientSession {
    let mut s = ClientSession::new(
        UserId::new("bob").unwrap(),
        DeviceId::new("phone").unwrap(),
        "v",
        SessionConfig::default(),
    );
    s.handle_connected(t0, None);
    s.handle_message(
        t0,
        msg(r#"{"v":1,"type":"welcome","re":"h","user":{"id":"bob","name":"Bob"},"device":"phone","seq":0,"resumed":false}"#),
    );
    s.handle_message(
        t0,
        msg(r#"{"v":1,"type":"sync","seq":0,"calls":[],"ended":[]}"#),
    );
    drain(&mut s);
    s
}

fn drain(s: &mut ClientSession) -> Vec<AppEvent> {
    while s.poll_transmit().is_some() {}
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// The id of the last message the session sent (drains the rest).
fn sent_id(s: &mut ClientSession) -> String {
    let mut last = None;
    while let Some(m) = s.poll_transmit() {
        last = Some(m.id.as_str().to_owned());
    }
    last.expect("a message sent")
}

const RING: &str = r#"{"v":1,"type":"event","seq":1,"event":{"type":"incoming_call","call_id":"c-1","caller":{"id":"alice","name":"Alice"},"call_type":"voice","callees":[{"id":"bob","name":"Bob"}],"ring_remaining_ms":30000,"ring_timeout_ms":30000}}"#;
const RINGING_SNAPSHOT: &str = r#"{"v":1,"type":"sync","re":"S","seq":2,"calls":[{"call_id":"c-1","role":"callee","caller":{"id":"alice","name":"Alice"},"caller_device":"d","call_type":"voice","callees":[{"id":"bob","name":"Bob"}],"state":"ringing","ring_remaining_ms":25000,"ring_timeout_ms":30000}],"ended":[]}"#;

/// bob declines; the answer rides on his `incoming_ended` (seq 3), which
/// overtakes a snapshot taken before the decline (seq 2, still ringing)
/// while a gap makes the session wait for it. The decline fires once, and
/// the stale snapshot does not ring the call again.
#[test]
fn a_snapshot_older_than_a_decline_does_not_ring_the_call_again() {
    let t0 = origin();
    let mut s = session(t0);
    s.handle_message(t0, msg(RING));
    let rang = drain(&mut s);
    assert!(
        matches!(&rang[..], [AppEvent::IncomingCallReceived { .. }]),
        "{rang:?}"
    );
    // A pong says the stream is at 2: a gap; then the gap timer asks for a sync.
    s.handle_message(t0, msg(r#"{"v":1,"type":"pong","re":"p","seq":2}"#));
    let gap = s.poll_timeout().expect("a gap timer");
    s.handle_timeout(gap);
    drain(&mut s);
    s.command(t0, Command::decline(cid(), false));
    let d = sent_id(&mut s);
    s.handle_message(
        t0,
        msg(&format!(
            r#"{{"v":1,"type":"event","seq":3,"re":"{d}","event":{{"type":"incoming_ended","call_id":"c-1","reason":"declined","device":"phone"}}}}"#
        )),
    );
    s.handle_message(t0, msg(RINGING_SNAPSHOT));
    let names: Vec<String> = drain(&mut s)
        .iter()
        .map(|e| {
            format!("{e:?}")
                .split([' ', '('])
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        names,
        ["IncomingCallDeclineButtonPressed", "Resynced"],
        "declined once, never rung again"
    );
    assert!(!s.is_ringing(&cid()));
    assert_eq!(s.last_seq(), Some(3));
}

/// bob, in the call, sends `join` (a no-op: answered by a plain `reply`)
/// and then hangs up; the link delivers the hang-up's `call_ended` first,
/// then the join's late `reply`. The call stays over, and a later snapshot
/// without it ends nothing twice.
#[test]
fn a_late_reply_to_a_no_op_join_does_not_reopen_the_call() {
    let t0 = origin();
    let mut s = session(t0);
    s.handle_message(t0, msg(RING));
    s.command(t0, Command::accept(cid()));
    let a = sent_id(&mut s);
    s.handle_message(
        t0,
        msg(&format!(
            r#"{{"v":1,"type":"event","seq":2,"re":"{a}","event":{{"type":"incoming_ended","call_id":"c-1","reason":"accepted","device":"phone"}}}}"#
        )),
    );
    drain(&mut s);
    s.command(t0, Command::Join { call_id: cid() });
    let j = sent_id(&mut s);
    s.command(t0, Command::hang_up(cid()));
    let h = sent_id(&mut s);
    s.handle_message(
        t0,
        msg(&format!(
            r#"{{"v":1,"type":"event","seq":3,"re":"{h}","event":{{"type":"call_ended","call_id":"c-1","reason":"hung_up"}}}}"#
        )),
    );
    s.handle_message(
        t0,
        msg(&format!(
            r#"{{"v":1,"type":"reply","re":"{j}","result":{{"type":"done"}}}}"#
        )),
    );
    assert_eq!(s.live_calls().count(), 0, "the call stays over");
    s.handle_message(
        t0,
        msg(r#"{"v":1,"type":"sync","seq":3,"calls":[],"ended":[{"call_id":"c-1","reason":"hung_up"}]}"#),
    );
    let ended: Vec<AppEvent> = drain(&mut s)
        .into_iter()
        .filter(|e| matches!(e, AppEvent::CallEnded { .. }))
        .collect();
    assert!(
        matches!(
            &ended[..],
            [AppEvent::CallEnded {
                reason: Reason::HungUp,
                ..
            }]
        ),
        "ended once: {ended:?}"
    );
}
