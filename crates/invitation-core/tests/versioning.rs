//! Versioning of protocol v1: what each side does with another `v`, unknown
//! fields and unknown message types, in both directions (docs/protocol.md,
//! "Versioning"). The server side (unknown client types are refused) is in
//! tests/protocol.rs and the conformance vectors; here the client side: a
//! newer server's additions are skipped without losing the stream position.

use std::time::{Duration, Instant};

use invitation_core::protocol::{ClientBody, Command, Control, ServerBody, ServerMessage};
use invitation_core::{
    AppEvent, CallId, ClientSession, DecodeLimits, DeviceId, ErrorCode, ProtocolError, Reason,
    SessionConfig, UserId,
};

fn decode(json: &str) -> Result<ServerMessage, ProtocolError> {
    ServerMessage::decode(json, &DecodeLimits::default())
}

fn msg(json: &str) -> ServerMessage {
    decode(json).unwrap_or_else(|e| panic!("{json}: {e}"))
}

#[test]
fn an_unknown_server_message_type_decodes_as_skippable() {
    let m = msg(r#"{"v":1,"type":"receipt_batch","items":[1,2,3]}"#);
    assert_eq!(
        m.body,
        ServerBody::Unknown {
            ty: "receipt_batch".into()
        }
    );
    // Re-encodes as its type alone, and decodes back the same.
    assert_eq!(m.encode(), r#"{"type":"receipt_batch","v":1}"#);
    assert_eq!(msg(&m.encode()), m);
    // A long type name is cut, not kept whole.
    let long = "x".repeat(1000);
    let m = msg(&format!(r#"{{"v":1,"type":"{long}"}}"#));
    assert_eq!(m.body, ServerBody::Unknown { ty: "x".repeat(64) });
}

#[test]
fn an_unknown_event_type_decodes_with_its_seq() {
    let json = r#"{"v":1,"type":"event","seq":12,"event":{"type":"participant_waved","call_id":"c-1","hand":"left"}}"#;
    let m = msg(json);
    assert_eq!(
        m.body,
        ServerBody::UnknownEvent {
            seq: 12,
            re: None,
            ty: "participant_waved".into()
        }
    );
    assert_eq!(
        msg(&m.encode()),
        m,
        "re-encodes to the same skippable event"
    );
    // One that answers a command keeps the answer's request id.
    let json = r#"{"v":1,"type":"event","seq":13,"re":"r7","event":{"type":"participant_waved"}}"#;
    let m = msg(json);
    assert_eq!(m.body.answers().map(|r| r.as_str()), Some("r7"));
    assert_eq!(msg(&m.encode()), m);
}

#[test]
fn what_stays_refused_on_the_client_side() {
    // Another version, even of an unknown type.
    for json in [
        r#"{"v":2,"type":"welcome","user":{"id":"a","name":""},"device":"d","seq":0,"resumed":false}"#,
        r#"{"v":2,"type":"hologram"}"#,
        r#"{"type":"pong"}"#,
    ] {
        let e = decode(json).unwrap_err();
        assert_eq!(e.code(), ErrorCode::UnsupportedVersion, "{json}");
    }
    // A known event type with a missing or mistyped field is invalid, not
    // skipped; so is an event without a readable seq.
    for json in [
        r#"{"v":1,"type":"event","seq":3,"event":{"type":"call_ended","call_id":"c-1"}}"#,
        r#"{"v":1,"type":"event","seq":3,"event":{"type":"callee_ringing","call_id":"c-1","callee":7}}"#,
        r#"{"v":1,"type":"event","event":{"type":"participant_waved"}}"#,
        r#"{"v":1,"type":"event","seq":-1,"event":{"type":"participant_waved"}}"#,
        r#"{"v":1,"type":"event","seq":3,"event":{}}"#,
        r#"{"v":1,"type":"welcome"}"#,
    ] {
        let e = decode(json).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Invalid, "{json}: {e}");
    }
    // Guard refusals come first, whatever the type.
    let e = decode(r#"{"v":1,"type":"novel","a":1,"a":2}"#).unwrap_err();
    assert_eq!(e.code(), ErrorCode::DuplicateKey);
}

#[test]
fn unknown_fields_in_known_server_messages_are_ignored() {
    let m = msg(
        r#"{"v":1,"type":"event","seq":4,"shard":"eu-1","event":{"type":"call_ended","call_id":"c-1","reason":"hung_up","extra":{"a":[1]}}}"#,
    );
    assert!(
        matches!(&m.body, ServerBody::Event { seq: 4, event, .. } if *event.call_id() == CallId::new("c-1").unwrap()),
        "{m:?}"
    );
}

/// Every event this version sends decodes as itself; with a required field
/// removed it is refused as invalid, never skipped as unknown: the list of
/// known event types is complete.
#[test]
fn every_known_event_type_is_known_to_the_skip_rule() {
    let events = [
        r#"{"type":"incoming_call","call_id":"c","caller":{"id":"a","name":""},"call_type":"voice","callees":[{"id":"b","name":""}],"ring_remaining_ms":1,"ring_timeout_ms":1}"#,
        r#"{"type":"incoming_ended","call_id":"c","reason":"canceled"}"#,
        r#"{"type":"outgoing_call","call_id":"c","device":"d","call_type":"voice","callees":[{"id":"b","name":""}],"ring_remaining_ms":1}"#,
        r#"{"type":"callee_ringing","call_id":"c","callee":"b"}"#,
        r#"{"type":"callee_outcome","call_id":"c","callee":"b","reason":"busy"}"#,
        r#"{"type":"call_ended","call_id":"c","reason":"hung_up"}"#,
    ];
    for event in events {
        let json = format!(r#"{{"v":1,"type":"event","seq":1,"event":{event}}}"#);
        assert!(
            matches!(msg(&json).body, ServerBody::Event { .. }),
            "{json}"
        );
        let broken = json.replace(r#""call_id":"c","#, "");
        assert_eq!(
            decode(&broken).unwrap_err().code(),
            ErrorCode::Invalid,
            "{broken}"
        );
    }
}

/// The origin of test time (the session only ever sees instants from here).
fn origin() -> Instant {
    #[allow(clippy::disallowed_methods)]
    Instant::now()
}

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn session(t0: Instant) -> ClientSession {
    let mut s = ClientSession::new(
        uid("bob"),
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

const RING: &str = r#"{"v":1,"type":"event","seq":1,"event":{"type":"incoming_call","call_id":"c-1","caller":{"id":"alice","name":"Alice"},"call_type":"voice","callees":[{"id":"bob","name":"Bob"}],"ring_remaining_ms":30000,"ring_timeout_ms":30000}}"#;
const NOVEL: &str =
    r#"{"v":1,"type":"event","seq":2,"event":{"type":"participant_waved","call_id":"c-1"}}"#;
const CANCELED: &str = r#"{"v":1,"type":"event","seq":3,"event":{"type":"incoming_ended","call_id":"c-1","reason":"canceled"}}"#;

/// The device's receipt for the ring of `c-1` (sent as it rings).
fn receipt() -> ClientBody {
    ClientBody::Command(Command::Received {
        call_id: CallId::new("c-1").unwrap(),
    })
}

/// Everything the session has for the app and the wire, drained.
fn drain(s: &mut ClientSession) -> (Vec<AppEvent>, Vec<ClientBody>) {
    let events = std::iter::from_fn(|| s.poll_event()).collect();
    let sent = std::iter::from_fn(|| s.poll_transmit())
        .map(|m| m.body)
        .collect();
    (events, sent)
}

fn assert_rang_then_canceled(events: &[AppEvent]) {
    let call = CallId::new("c-1").unwrap();
    match events {
        [
            AppEvent::IncomingCallReceived { call_id: a, .. },
            AppEvent::IncomingCallCanceled {
                call_id: b, reason, ..
            },
        ] => {
            assert_eq!((a, b, *reason), (&call, &call, Reason::Canceled));
        }
        other => panic!("expected the ring then its cancel, nothing else: {other:?}"),
    }
}

/// In order: the unknown event between two known ones is skipped, its seq
/// counts, the later event is delivered, nothing else reaches the app and
/// nothing is asked of the server (no gap, no sync).
#[test]
fn the_session_skips_an_unknown_event_and_keeps_its_position() {
    let t0 = origin();
    let mut s = session(t0);
    s.handle_message(t0, msg(RING));
    s.handle_message(t0, msg(NOVEL));
    assert_eq!(
        s.last_seq(),
        Some(2),
        "the unknown event's seq is processed"
    );
    s.handle_message(t0, msg(r#"{"v":1,"type":"roster","members":["x"]}"#));
    s.handle_message(t0, msg(CANCELED));
    assert_eq!(s.last_seq(), Some(3));
    let (events, sent) = drain(&mut s);
    assert_rang_then_canceled(&events);
    assert_eq!(sent, [receipt()], "no sync, only the ring's receipt");
    // A pong at the newest seq finds nothing missing.
    s.handle_message(t0, msg(r#"{"v":1,"type":"pong","re":"p","seq":3}"#));
    assert_eq!(s.poll_timeout(), None, "no gap timer, no fallback ring");
    s.handle_timeout(t0 + Duration::from_secs(120));
    let (events, sent) = drain(&mut s);
    assert!(events.is_empty() && sent.is_empty(), "{events:?} {sent:?}");

    // Resuming later starts after the unknown event too.
    s.handle_disconnected(t0);
    s.handle_connected(t0, None);
    let hello = drain(&mut s).1;
    assert!(
        matches!(
            &hello[..],
            [ClientBody::Control(Control::Hello {
                last_seq: Some(3),
                ..
            })]
        ),
        "{hello:?}"
    );
}

/// Out of order: the event after the unknown one arrives first (a gap
/// opens); the unknown one then closes the gap, and the waiting event is
/// delivered, without a sync.
#[test]
fn an_unknown_event_closes_a_gap_like_any_other() {
    let t0 = origin();
    let mut s = session(t0);
    s.handle_message(t0, msg(RING));
    s.handle_message(t0, msg(CANCELED)); // seq 3 before seq 2
    assert_eq!(s.last_seq(), Some(1));
    let gap = s.poll_timeout().expect("a gap timer");
    s.handle_message(t0, msg(NOVEL));
    assert_eq!(s.last_seq(), Some(3), "the gap is closed");
    let (events, sent) = drain(&mut s);
    assert_rang_then_canceled(&events);
    s.handle_timeout(gap);
    let (events, sent_later) = drain(&mut s);
    assert!(
        sent == [receipt()] && sent_later.is_empty() && events.is_empty(),
        "no sync asked, only the ring's receipt: {sent:?} {sent_later:?} {events:?}"
    );

    // An unknown event replayed again is a duplicate, nothing more.
    s.handle_message(t0, msg(NOVEL));
    assert_eq!(s.last_seq(), Some(3));
    assert_eq!(s.duplicates_dropped(), 1);
}

/// New `reason` and `closing.reason` values are additive too: an older
/// client reads them as `failed` and `shutting_down`.
#[test]
fn unknown_reasons_decode_as_their_fallbacks() {
    use invitation_core::protocol::{CloseReason, Event};
    let m = msg(
        r#"{"v":1,"type":"event","seq":5,"event":{"type":"call_ended","call_id":"c-1","reason":"moved_to_another_galaxy"}}"#,
    );
    match m.body {
        ServerBody::Event {
            event: Event::CallEnded { reason, .. },
            ..
        } => assert_eq!(reason, Reason::Failed),
        other => panic!("{other:?}"),
    }
    let m = msg(r#"{"v":1,"type":"closing","reason":"maintenance_window"}"#);
    assert_eq!(
        m.body,
        ServerBody::Closing {
            reason: CloseReason::ShuttingDown
        }
    );
    // Known values are untouched.
    let m = msg(r#"{"v":1,"type":"closing","reason":"replaced"}"#);
    assert_eq!(
        m.body,
        ServerBody::Closing {
            reason: CloseReason::Replaced
        }
    );
}
