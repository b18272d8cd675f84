//! Calls that grow and shrink over WebSocket against a real server on
//! 127.0.0.1:0: `add`, `join`, `end` (under `end_policy = any_participant`)
//! as raw JSON, with the exact answers and events each connection receives,
//! in order.

mod common;

use common::*;
use invitation_core::protocol::ServerBody;
use serde_json::{Value, json};

/// The next message, as JSON, skipping nothing but the `sync` a fresh
/// device gets after its welcome.
async fn next(raw: &mut Raw) -> Value {
    loop {
        let m = raw.recv().await;
        if !matches!(m.body, ServerBody::Sync(_)) {
            return serde_json::from_str(&m.encode()).unwrap();
        }
    }
}

/// The next message must be this event (its `seq` aside).
async fn expect_event(raw: &mut Raw, event: Value) {
    let m = next(raw).await;
    assert_eq!(m["type"], "event", "{m}");
    assert_eq!(m["event"], event, "{m}");
}

/// The next message must be this event answering command `re`: a
/// command's answer rides on the first event it caused on the sender's
/// connection, with its `result` unless that is `done`.
async fn expect_answer(raw: &mut Raw, re: &str, result: Value, event: Value) {
    let m = next(raw).await;
    assert_eq!(m["type"], "event", "{m}");
    assert_eq!(m["re"], re, "{m}");
    if result == json!({"type": "done"}) {
        assert!(m.get("result").is_none(), "{m}");
    } else {
        assert_eq!(m["result"], result, "{m}");
    }
    assert_eq!(m["event"], event, "{m}");
}

async fn send(raw: &mut Raw, msg: Value) {
    raw.text(&msg.to_string()).await;
}

fn user(id: &str) -> Value {
    json!({"id": id, "name": id})
}

#[tokio::test]
async fn a_call_grows_gets_a_late_joiner_and_is_ended_by_a_participant() {
    let srv = server(|c| c.end_policy = "any_participant".into()).await;
    let (mut alice, _) = Raw::hello(&srv, "alice", "phone", None).await;
    let (mut bob, _) = Raw::hello(&srv, "bob", "phone", None).await;
    let (mut carol, _) = Raw::hello(&srv, "carol", "phone", None).await;

    send(&mut alice, json!({"v": 1, "id": "a1", "type": "invite", "callees": ["bob"], "call_type": "voice", "timeout_s": 60})).await;
    // The invite's answer rides on the `outgoing_call` it caused.
    let reply = next(&mut alice).await;
    assert_eq!(reply["re"], "a1", "{reply}");
    assert_eq!(reply["event"]["type"], "outgoing_call", "{reply}");
    let call = reply["result"]["call_id"].as_str().unwrap().to_owned();
    assert_eq!(
        reply["result"]["callees"],
        json!([{"user": "bob", "status": "ringing"}])
    );
    expect_event(
        &mut alice,
        json!({"type": "callee_ringing", "call_id": call, "callee": "bob"}),
    )
    .await;
    assert_eq!(next(&mut bob).await["event"]["type"], "incoming_call");

    send(
        &mut bob,
        json!({"v": 1, "id": "b1", "type": "accept", "call_id": call}),
    )
    .await;
    expect_answer(
        &mut bob,
        "b1",
        json!({"type": "done"}),
        json!({"type": "incoming_ended", "call_id": call, "reason": "accepted", "device": "phone"}),
    )
    .await;
    expect_event(
        &mut alice,
        json!({"type": "callee_outcome", "call_id": call, "callee": "bob", "reason": "accepted"}),
    )
    .await;

    // bob adds carol (and alice, the caller, is refused as a whole first).
    send(
        &mut bob,
        json!({"v": 1, "id": "b2", "type": "add", "call_id": call, "callees": ["carol", "alice"]}),
    )
    .await;
    let refused = next(&mut bob).await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["re"], "b2");
    assert_eq!(refused["code"], "already_in_call");
    send(
        &mut bob,
        json!({"v": 1, "id": "b3", "type": "add", "call_id": call, "callees": ["carol"]}),
    )
    .await;
    let ringing = json!({"type": "callee_ringing", "call_id": call, "callee": "carol"});
    expect_answer(
        &mut bob,
        "b3",
        json!({"type": "invited", "call_id": call, "ring_remaining_ms": 60000,
               "callees": [{"user": "carol", "status": "ringing"}]}),
        ringing.clone(),
    )
    .await;
    expect_event(&mut alice, ringing).await;
    expect_event(
        &mut carol,
        json!({"type": "incoming_call", "call_id": call, "caller": user("alice"),
               "call_type": "voice", "callees": [user("bob"), user("carol")],
               "ring_remaining_ms": 60000, "ring_timeout_ms": 60000}),
    )
    .await;

    // carol declines, then thinks better of it and joins.
    send(
        &mut carol,
        json!({"v": 1, "id": "c1", "type": "decline", "call_id": call}),
    )
    .await;
    expect_answer(
        &mut carol,
        "c1",
        json!({"type": "done"}),
        json!({"type": "incoming_ended", "call_id": call, "reason": "declined", "device": "phone"}),
    )
    .await;
    let declined =
        json!({"type": "callee_outcome", "call_id": call, "callee": "carol", "reason": "declined"});
    expect_event(&mut alice, declined.clone()).await;
    expect_event(&mut bob, declined).await;
    send(
        &mut carol,
        json!({"v": 1, "id": "c2", "type": "join", "call_id": call}),
    )
    .await;
    let joined =
        json!({"type": "participant_joined", "call_id": call, "user": "carol", "device": "phone"});
    expect_answer(&mut carol, "c2", json!({"type": "done"}), joined.clone()).await;
    for raw in [&mut alice, &mut bob] {
        expect_event(raw, joined.clone()).await;
    }

    // carol, a callee, ends it for everyone (the server allows anyone in it).
    send(
        &mut carol,
        json!({"v": 1, "id": "c3", "type": "end", "call_id": call}),
    )
    .await;
    let by_carol = json!({"type": "participant_left", "call_id": call, "user": "carol", "reason": "ended_call"});
    let ended = json!({"type": "call_ended", "call_id": call, "reason": "hung_up"});
    for raw in [&mut alice, &mut bob] {
        expect_event(raw, by_carol.clone()).await;
        expect_event(raw, ended.clone()).await;
    }
    expect_answer(&mut carol, "c3", json!({"type": "done"}), ended).await;

    send(
        &mut carol,
        json!({"v": 1, "id": "c4", "type": "join", "call_id": call}),
    )
    .await;
    let late = next(&mut carol).await;
    assert_eq!(
        late,
        json!({"v": 1, "type": "error", "re": "c4", "code": "ended",
               "message": "the invitation already ended: hung_up", "reason": "hung_up"})
    );
}

#[tokio::test]
async fn the_end_policy_key_is_checked_at_start() {
    let mut config = invitation_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        secret: Some(SECRET.to_owned()),
        ..invitation_server::Config::default()
    };
    config.end_policy = "whoever".into();
    let err = invitation_server::Server::bind(config)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("end_policy"), "{err}");
}
