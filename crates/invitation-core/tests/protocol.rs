//! Wire protocol v1: a round trip for every message, and the refusals of
//! malformed input (caps, duplicate keys, unknown types, bad ids, callee lists, timeouts).

use invitation_core::protocol::*;
use invitation_core::{
    CallId, CallType, CustomData, DecodeLimits, DeviceId, ErrorCode, ProtocolError, Reason,
    RequestId, User, UserId,
};

fn cid() -> CallId {
    CallId::new("call-1").unwrap()
}
fn rid() -> RequestId {
    RequestId::new("r1").unwrap()
}
fn limits() -> DecodeLimits {
    DecodeLimits::default()
}

fn every_client_message() -> Vec<ClientMessage> {
    let commands: Vec<ClientBody> = vec![
        Control::Hello {
            device: DeviceId::new("phone").unwrap(),
            token: Some("tok".into()),
            last_seq: Some(7),
        }
        .into(),
        Control::Hello {
            device: DeviceId::new("phone").unwrap(),
            token: None,
            last_seq: None,
        }
        .into(),
        Control::Renew { token: "t2".into() }.into(),
        Control::Ping.into(),
        Control::Sync.into(),
        Command::Invite(
            InviteRequest::new(
                vec![UserId::new("bob").unwrap(), UserId::new("carol").unwrap()],
                CallType::Video,
            )
            .with_custom_data(Some(CustomData::new("{\"room\":\"r\"}").unwrap()))
            .with_timeout_s(Some(30)),
        )
        .into(),
        Command::Invite(InviteRequest::new(
            vec![UserId::new("bob").unwrap()],
            CallType::Voice,
        ))
        .into(),
        Command::Cancel {
            call_id: cid(),
            custom_data: None,
        }
        .into(),
        Command::Accept {
            call_id: cid(),
            custom_data: None,
        }
        .into(),
        Command::Decline {
            call_id: cid(),
            busy: false,
            custom_data: None,
        }
        .into(),
        Command::Decline {
            call_id: cid(),
            busy: true,
            custom_data: None,
        }
        .into(),
        Command::HangUp {
            call_id: cid(),
            custom_data: None,
        }
        .into(),
        Command::Add {
            call_id: cid(),
            callees: vec![UserId::new("carol").unwrap()],
        }
        .into(),
        Command::Join { call_id: cid() }.into(),
        Command::End { call_id: cid() }.into(),
        Command::Received { call_id: cid() }.into(),
    ];
    commands
        .into_iter()
        .map(|c| ClientMessage::new(rid(), c))
        .collect()
}

/// A snapshot as a client outside the core builds one: from the wire
/// (`CallSnapshot` is non-exhaustive, so new fields break nobody).
fn ringing_snapshot(caller: &User, callee: &User) -> CallSnapshot {
    serde_json::from_value(serde_json::json!({
        "call_id": cid(),
        "role": "caller",
        "caller": caller,
        "caller_device": "phone",
        "call_type": "voice",
        "callees": [callee],
        "state": "ringing",
        "ring_remaining_ms": 1000,
        "ring_timeout_ms": 60_000,
        "outcomes": [{"callee": callee.id, "reason": "declined"}],
    }))
    .unwrap()
}

fn every_server_message() -> Vec<ServerMessage> {
    let alice = User::named("alice", "Alice");
    let bob = User::named("bob", "Bob");
    let events = vec![
        Event::IncomingCall {
            call_id: cid(),
            caller: alice.clone(),
            call_type: CallType::Video,
            callees: vec![bob.clone()].into(),
            custom_data: Some(CustomData::new("x").unwrap()),
            ring_remaining_ms: 59_000,
            ring_timeout_ms: 60_000,
        },
        Event::IncomingEnded {
            call_id: cid(),
            reason: Reason::Accepted,
            device: Some(DeviceId::new("phone").unwrap()),
            custom_data: None,
        },
        Event::OutgoingCall {
            call_id: cid(),
            device: DeviceId::new("tablet").unwrap(),
            call_type: CallType::Voice,
            callees: vec![bob.clone()].into(),
            custom_data: None,
            ring_remaining_ms: 60_000,
        },
        Event::CalleeRinging {
            call_id: cid(),
            callee: bob.id.clone(),
        },
        Event::CalleeOutcome {
            call_id: cid(),
            callee: bob.id.clone(),
            reason: Reason::Busy,
            custom_data: None,
        },
        Event::CallEnded {
            call_id: cid(),
            reason: Reason::HungUp,
            custom_data: None,
        },
        Event::ParticipantJoined {
            call_id: cid(),
            user: bob.id.clone(),
            device: DeviceId::new("tablet").unwrap(),
        },
        Event::ParticipantLeft {
            call_id: cid(),
            user: alice.id.clone(),
            reason: invitation_core::protocol::LeaveReason::EndedCall,
        },
    ];
    let mut bodies: Vec<ServerBody> = events
        .into_iter()
        .enumerate()
        .map(|(i, event)| ServerBody::event(i as u64 + 1, event))
        .collect();
    bodies.extend([
        ServerBody::Welcome {
            re: Some(rid()),
            user: alice.clone(),
            device: DeviceId::new("phone").unwrap(),
            seq: 12,
            resumed: true,
        },
        ServerBody::Reply {
            re: rid(),
            result: ReplyResult::Invited {
                call_id: cid(),
                ring_remaining_ms: 60_000,
                callees: vec![CalleeStatus::new(bob.id.clone(), InitialStatus::Offline)],
            },
        },
        ServerBody::Reply {
            re: rid(),
            result: ReplyResult::Joined {
                call_id: cid(),
                caller: bob.clone(),
            },
        },
        ServerBody::Reply {
            re: rid(),
            result: ReplyResult::Done,
        },
        ServerBody::Error(
            ErrorBody::new(
                Some(rid()),
                ErrorCode::Ended,
                "the invitation already ended: canceled",
            )
            .with_reason(Some(Reason::Canceled)),
        ),
        ServerBody::Error(
            ErrorBody::new(None, ErrorCode::RateLimited, "slow down")
                .with_retry_after_ms(Some(1500)),
        ),
        ServerBody::Sync(SyncBody::new(
            None,
            40,
            vec![ringing_snapshot(&alice, &bob)],
            vec![EndedCall::new(
                CallId::new("call-0").unwrap(),
                Reason::Timeout,
                vec![CalleeOutcome::new(bob.id.clone(), Reason::Timeout)],
            )],
        )),
        ServerBody::Pong {
            re: Some(rid()),
            seq: Some(40),
        },
        ServerBody::Pong {
            re: None,
            seq: None,
        },
        ServerBody::Closing {
            reason: CloseReason::Replaced,
        },
    ]);
    bodies.into_iter().map(ServerMessage::new).collect()
}

#[test]
fn every_client_message_round_trips() {
    for msg in every_client_message() {
        let json = msg.encode();
        assert!(json.contains("\"v\":1"), "{json}");
        assert_eq!(ClientMessage::decode(&json, &limits()), Ok(msg), "{json}");
    }
}

/// `Command::kind` and `Command::call_id` say what the wire says: the
/// `type` and the `call_id` of each command (the logs and the folded
/// answers rely on them).
#[test]
fn every_command_names_its_wire_type_and_call() {
    for m in every_client_message() {
        let Some(command) = m.command() else { continue };
        let json: serde_json::Value = serde_json::from_str(&m.encode()).unwrap();
        assert_eq!(json["type"], command.kind(), "{json}");
        assert_eq!(
            json.get("call_id").and_then(|c| c.as_str()),
            command.call_id().map(|c| c.as_str()),
            "{json}"
        );
    }
}

#[test]
fn every_server_message_round_trips() {
    for msg in every_server_message() {
        let json = msg.encode();
        assert!(json.contains("\"v\":1"), "{json}");
        assert_eq!(ServerMessage::decode(&json, &limits()), Ok(msg), "{json}");
    }
}

#[test]
fn wire_shape_is_flat_and_documented() {
    let json = ClientMessage::new(
        rid(),
        Command::Accept {
            call_id: cid(),
            custom_data: None,
        },
    )
    .encode();
    assert_eq!(
        json,
        r#"{"v":1,"id":"r1","type":"accept","call_id":"call-1"}"#
    );
    let json = ServerMessage::new(ServerBody::Event {
        seq: 3,
        re: None,
        result: None,
        event: Event::CallEnded {
            call_id: cid(),
            reason: Reason::HungUp,
            custom_data: None,
        },
    })
    .encode();
    assert_eq!(
        json,
        r#"{"v":1,"type":"event","seq":3,"event":{"type":"call_ended","call_id":"call-1","reason":"hung_up"}}"#
    );
}

#[test]
fn unknown_fields_are_ignored() {
    let json =
        r#"{"v":1,"id":"r1","type":"accept","call_id":"call-1","future":{"x":[1,2]},"z":null}"#;
    assert_eq!(
        ClientMessage::decode(json, &limits()).unwrap().body,
        ClientBody::Command(Command::Accept {
            call_id: cid(),
            custom_data: None
        })
    );
}

#[test]
fn other_versions_are_refused() {
    for (json, got) in [
        (r#"{"v":2,"id":"r1","type":"ping"}"#, 2),
        (r#"{"id":"r1","type":"ping"}"#, 0),
        (r#"{"v":"1","id":"r1","type":"ping"}"#, 0),
    ] {
        assert_eq!(
            ClientMessage::decode(json, &limits()),
            Err(ProtocolError::UnsupportedVersion { got, supported: 1 })
        );
    }
}

#[test]
fn e1_oversize_input_is_refused_before_parsing() {
    let big = format!(
        r#"{{"v":1,"id":"r1","type":"ping","pad":"{}"}}"#,
        "x".repeat(70_000)
    );
    assert!(matches!(
        ClientMessage::decode(&big, &limits()),
        Err(ProtocolError::TooLarge { max: 65536, .. })
    ));
}

#[test]
fn e4_deep_nesting_long_arrays_and_huge_numbers_are_capped() {
    let deep = format!(
        r#"{{"v":1,"id":"r1","type":"ping","x":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let big_limits = DecodeLimits {
        max_bytes: 1 << 20,
        ..limits()
    };
    assert!(matches!(
        ClientMessage::decode(&deep, &big_limits),
        Err(ProtocolError::OverLimits { .. })
    ));
    let objects = format!(
        r#"{{"v":1,"id":"r1","type":"ping","x":{}1{}}}"#,
        r#"{"a":"#.repeat(5_000),
        "}".repeat(5_000)
    );
    assert!(matches!(
        ClientMessage::decode(&objects, &big_limits),
        Err(ProtocolError::OverLimits { .. })
    ));
    let long = format!(
        r#"{{"v":1,"id":"r1","type":"ping","x":[{}0]}}"#,
        "0,".repeat(300_000)
    );
    assert!(matches!(
        ClientMessage::decode(&long, &big_limits),
        Err(ProtocolError::OverLimits { .. })
    ));
    for num in ["1e400", "-1e400", "123456789012345678901234567890"] {
        let json = format!(
            r#"{{"v":1,"id":"r1","type":"invite","callees":["b"],"call_type":"voice","timeout_s":{num}}}"#
        );
        let err = ClientMessage::decode(&json, &limits()).unwrap_err();
        assert!(
            matches!(
                err,
                ProtocolError::Malformed { .. } | ProtocolError::Invalid { .. }
            ),
            "{num}: {err:?}"
        );
    }
}

#[test]
fn e5_duplicate_keys_are_refused_at_every_level() {
    for json in [
        r#"{"v":1,"id":"r1","type":"accept","call_id":"a","call_id":"b"}"#,
        r#"{"v":1,"v":1,"id":"r1","type":"ping"}"#,
        r#"{"v":1,"id":"r1","type":"ping","x":1,"x":2}"#,
        r#"{"v":1,"id":"r1","type":"ping","x":{"a":1,"a":2}}"#,
        r#"{"v":1,"id":"r1","type":"ping","x":[{"a":1,"\u0061":2}]}"#,
    ] {
        assert!(
            matches!(
                ClientMessage::decode(json, &limits()),
                Err(ProtocolError::DuplicateKey { .. })
            ),
            "{json}"
        );
    }
}

#[test]
fn e6_unknown_type_missing_and_mistyped_fields() {
    assert_eq!(
        ClientMessage::decode(r#"{"v":1,"id":"r9","type":"teleport"}"#, &limits()),
        Err(ProtocolError::UnknownType {
            ty: "teleport".into(),
            request: Some(RequestId::new("r9").unwrap()),
        })
    );
    for json in [
        r#"{"v":1,"id":"r9","type":"accept"}"#,
        r#"{"v":1,"id":"r9","type":"accept","call_id":7}"#,
        r#"{"v":1,"id":"r9","type":"invite","callees":"bob","call_type":"voice"}"#,
        r#"{"v":1,"id":"r9","type":"invite","callees":["bob"],"call_type":"hologram"}"#,
        r#"{"v":1,"id":"r9","type":"decline","call_id":"c","busy":"yes"}"#,
        r#"{"v":1,"id":"r9"}"#,
    ] {
        let err = ClientMessage::decode(json, &limits()).unwrap_err();
        assert!(
            matches!(err, ProtocolError::Invalid { .. }),
            "{json}: {err:?}"
        );
        assert_eq!(
            err.request(),
            Some(&RequestId::new("r9").unwrap()),
            "{json}"
        );
        assert_eq!(err.code(), ErrorCode::Invalid);
    }
    for json in [
        "",
        "null",
        "[]",
        "42",
        "\"v\"",
        "{",
        r#"{"v":1} trailing"#,
        "\u{feff}{}",
    ] {
        assert!(
            matches!(
                ClientMessage::decode(json, &limits()),
                Err(ProtocolError::Malformed { .. })
            ),
            "{json:?}"
        );
    }
}

#[test]
fn e7_bad_ids_are_refused() {
    let long = "x".repeat(65);
    for id in [
        "",
        long.as_str(),
        "a b",
        "tab\\t",
        "nul\\u0000",
        "é",
        "../etc",
    ] {
        let json = format!(r#"{{"v":1,"id":"r1","type":"accept","call_id":"{id}"}}"#);
        assert!(
            matches!(
                ClientMessage::decode(&json, &limits()),
                Err(ProtocolError::Invalid { .. })
            ),
            "{id:?}"
        );
        let json = format!(r#"{{"v":1,"id":"{id}","type":"ping"}}"#);
        assert!(ClientMessage::decode(&json, &limits()).is_err(), "{id:?}");
    }
}

#[test]
fn e9_callee_lists_are_bounded_at_decode() {
    let many: Vec<String> = (0..300).map(|i| format!("\"u{i}\"")).collect();
    let json = format!(
        r#"{{"v":1,"id":"r1","type":"invite","callees":[{}],"call_type":"voice"}}"#,
        many.join(",")
    );
    assert!(matches!(
        ClientMessage::decode(&json, &limits()),
        Err(ProtocolError::OverLimits { .. })
    ));
    // Within the decode caps the count rule is the switchboard's (flows.rs).
    let json = r#"{"v":1,"id":"r1","type":"invite","callees":["b","b"],"call_type":"voice"}"#;
    assert!(ClientMessage::decode(json, &limits()).is_ok());
}

#[test]
fn e10_timeouts_negative_fractional_or_huge_do_not_parse() {
    for t in ["-1", "1.5", "1e3", "4294967296", "\"60\"", "true"] {
        let json = format!(
            r#"{{"v":1,"id":"r1","type":"invite","callees":["b"],"call_type":"voice","timeout_s":{t}}}"#
        );
        assert!(
            matches!(
                ClientMessage::decode(&json, &limits()),
                Err(ProtocolError::Invalid { .. })
            ),
            "{t}"
        );
    }
}

#[test]
fn custom_data_over_the_hard_cap_does_not_parse() {
    let json = format!(
        r#"{{"v":1,"id":"r1","type":"invite","callees":["b"],"call_type":"voice","custom_data":"{}"}}"#,
        "x".repeat(61 * 1024)
    );
    assert!(ClientMessage::decode(&json, &limits()).is_err());
}

#[test]
fn error_bodies_map_back_to_typed_errors() {
    use invitation_core::CommandError;
    for e in [
        CommandError::NotFound,
        CommandError::WrongRole,
        CommandError::Ended {
            reason: Reason::Timeout,
        },
        CommandError::CallerBusy,
        CommandError::RateLimited {
            retry_after_ms: 250,
        },
        CommandError::Unavailable {
            retry_after_ms: 1000,
        },
    ] {
        assert_eq!(
            ErrorBody::from_command(None, &e).to_command_error(),
            Some(e)
        );
    }
}

/// Every JSON example in docs/protocol.md decodes as a client or a server
/// message, so the document cannot drift from the code.
#[test]
fn docs_examples_decode() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/protocol.md"
    ))
    .expect("docs/protocol.md");
    let mut n = 0;
    let mut rest = doc.as_str();
    while let Some(start) = rest.find("```json\n") {
        let body = &rest[start + 8..];
        let end = body.find("```").expect("closed block");
        let json = body[..end].trim();
        let client = ClientMessage::decode(json, &limits());
        let server = ServerMessage::decode(json, &limits());
        // A server message must be one this version knows: an unknown type
        // decodes (to be skipped) but is no example of anything.
        let known = server.as_ref().is_ok_and(|m| {
            !matches!(
                m.body,
                ServerBody::Unknown { .. } | ServerBody::UnknownEvent { .. }
            )
        });
        assert!(
            client.is_ok() || known,
            "{json}\nclient: {client:?}\nserver: {server:?}"
        );
        n += 1;
        rest = &body[end..];
    }
    assert!(n >= 20, "only {n} examples found");
}
