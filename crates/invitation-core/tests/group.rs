//! Calls that grow and shrink, through the test network: adding callees to
//! a running call, joining late, leaving while the others go on, ending for
//! everyone; with the exact events each device receives, in order.

// Expected events read best as literal lists of JSON values.
#![allow(clippy::cloned_ref_to_slice_refs)]

mod harness;

use std::time::Duration;

use harness::{Net, did, uid};
use invitation_core::protocol::{CalleeStatus, InitialStatus, ReplyResult, ServerBody};
use invitation_core::{
    AppEvent, BusyPolicy, CommandError, ContactPolicy, EndPolicy, Reason, SwitchboardConfig,
    ValidationError,
};
use serde_json::json;

fn online(net: &mut Net, users: &[&str]) {
    for u in users {
        net.connect(u, "phone");
    }
}

fn user(id: &str) -> serde_json::Value {
    json!({"id": id, "name": id.to_uppercase()})
}

/// The app events a device saw from position `from` on, without the
/// connection ones.
fn names_from(net: &Net, u: &str, d: &str, from: usize) -> Vec<&'static str> {
    net.names(u, d)[from..].to_vec()
}

#[test]
fn three_party_call_grows_then_shrinks() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob", "carol"]);
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    net.accept("bob", "phone", &call).unwrap();
    let (ma, mb, mc) = (
        net.mark("alice", "phone"),
        net.mark("bob", "phone"),
        net.mark("carol", "phone"),
    );
    let (na, nb) = (
        net.names("alice", "phone").len(),
        net.names("bob", "phone").len(),
    );

    // bob, a callee in the call, rings carol into it.
    net.advance(Duration::from_secs(10));
    assert_eq!(
        net.add("bob", "phone", &call, &["carol"]),
        Ok(ReplyResult::Invited {
            call_id: call.clone(),
            ring_remaining_ms: 60_000,
            callees: vec![CalleeStatus::new(uid("carol"), InitialStatus::Ringing)],
        })
    );
    let c = call.to_string();
    assert_eq!(
        net.wire_events("carol", "phone", mc),
        [
            json!({"type": "incoming_call", "call_id": c, "caller": user("alice"),
                "call_type": "voice", "callees": [user("bob"), user("carol")],
                "custom_data": "{\"room\":1}", "ring_remaining_ms": 60_000,
                "ring_timeout_ms": 60_000})
        ]
    );
    let ringing = json!({"type": "callee_ringing", "call_id": c, "callee": "carol"});
    // The caller also learns that carol's device has it (device receipts
    // go to the caller only).
    let delivered = json!({"type": "callee_delivered", "call_id": c, "callee": "carol",
        "device": "phone"});
    assert_eq!(
        net.wire_events("alice", "phone", ma),
        [ringing.clone(), delivered]
    );
    assert_eq!(net.wire_events("bob", "phone", mb), [ringing]);

    // carol accepts: the caller hears it as a callee outcome (as in 1:1),
    // bob as a participant joining.
    net.accept("carol", "phone", &call).unwrap();
    assert_eq!(
        net.wire_events("carol", "phone", mc)[1..],
        [json!({"type": "incoming_ended", "call_id": c, "reason": "accepted", "device": "phone"})]
    );
    assert_eq!(
        net.wire_events("alice", "phone", ma)[2..],
        [json!({"type": "callee_outcome", "call_id": c, "callee": "carol", "reason": "accepted"})]
    );
    assert_eq!(
        net.wire_events("bob", "phone", mb)[1..],
        [json!({"type": "participant_joined", "call_id": c, "user": "carol", "device": "phone"})]
    );
    assert_eq!(
        net.sb.call(&call).unwrap().participants(),
        [
            (uid("alice"), did("phone")),
            (uid("bob"), did("phone")),
            (uid("carol"), did("phone"))
        ]
    );

    // carol leaves: the other two go on.
    net.hang_up("carol", "phone", &call).unwrap();
    let left = json!({"type": "participant_left", "call_id": c, "user": "carol", "reason": "left"});
    assert_eq!(
        net.wire_events("carol", "phone", mc)[2..],
        [json!({"type": "call_ended", "call_id": c, "reason": "hung_up"})]
    );
    assert_eq!(net.wire_events("alice", "phone", ma)[3..], [left.clone()]);
    assert_eq!(net.wire_events("bob", "phone", mb)[2..], [left]);
    assert_eq!(net.sb.call(&call).unwrap().ended(), None);

    // bob leaves: one left, the call ends.
    net.hang_up("bob", "phone", &call).unwrap();
    let ended = json!({"type": "call_ended", "call_id": c, "reason": "hung_up"});
    assert_eq!(net.wire_events("bob", "phone", mb)[3..], [ended.clone()]);
    assert_eq!(net.wire_events("alice", "phone", ma)[4..], [ended]);
    assert_eq!(net.sb.call(&call).unwrap().ended(), Some(Reason::HungUp));
    assert_eq!(net.sb.poll_timeout(), None);

    assert_eq!(
        names_from(&net, "alice", "phone", na),
        [
            "callee_ringing",
            "callee_delivered",
            "outgoing_accepted",
            "participant_left",
            "call_ended"
        ]
    );
    assert_eq!(
        names_from(&net, "bob", "phone", nb),
        [
            "callee_ringing",
            "participant_joined",
            "participant_left",
            "call_ended"
        ]
    );
    assert_eq!(
        net.names("carol", "phone"),
        ["incoming_received", "accept_pressed", "call_ended"]
    );
}

#[test]
fn each_batch_rings_until_its_own_deadline() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob", "carol", "dave"]);
    let t0 = net.now;
    let call = net
        .invite("alice", "phone", &["bob", "carol"], Some(30))
        .unwrap();
    net.accept("bob", "phone", &call).unwrap();
    net.advance(Duration::from_secs(10));
    net.add("bob", "phone", &call, &["dave"]).unwrap();
    let view = net.sb.call(&call).unwrap();
    assert_eq!(
        view.ring_deadline(&uid("carol")),
        Some(t0 + Duration::from_secs(30))
    );
    assert_eq!(
        view.ring_deadline(&uid("dave")),
        Some(t0 + Duration::from_secs(40))
    );
    assert_eq!(net.sb.poll_timeout(), Some(t0 + Duration::from_secs(30)));
    let rung: Vec<_> = net
        .dev("dave", "phone")
        .app_events()
        .filter_map(|e| match e {
            AppEvent::IncomingCallReceived {
                ring_remaining,
                callees,
                ..
            } => Some((*ring_remaining, callees.len())),
            _ => None,
        })
        .collect();
    assert_eq!(
        rung,
        [(Duration::from_secs(30), 3)],
        "the call's 30 s, from now"
    );

    net.advance(Duration::from_secs(20));
    let view = net.sb.call(&call).unwrap();
    assert_eq!(view.outcome(&uid("carol")), Some(Reason::Timeout));
    assert_eq!(view.outcome(&uid("dave")), None, "dave rings on");
    assert_eq!(net.sb.poll_timeout(), Some(t0 + Duration::from_secs(40)));

    net.advance(Duration::from_secs(10));
    let view = net.sb.call(&call).unwrap();
    assert_eq!(view.outcome(&uid("dave")), Some(Reason::Timeout));
    assert_eq!(view.ended(), None, "alice and bob are still in it");
    assert_eq!(net.sb.poll_timeout(), None);
}

#[test]
fn late_join_after_timeout() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob", "carol"]);
    let call = net
        .invite("alice", "phone", &["bob", "carol"], Some(30))
        .unwrap();
    net.accept("bob", "phone", &call).unwrap();
    let (ma, mb, mc) = (
        net.mark("alice", "phone"),
        net.mark("bob", "phone"),
        net.mark("carol", "phone"),
    );
    net.advance(Duration::from_secs(30));
    let c = call.to_string();
    let timeout =
        json!({"type": "callee_outcome", "call_id": c, "callee": "carol", "reason": "timeout"});
    assert_eq!(net.wire_events("alice", "phone", ma), [timeout.clone()]);
    assert_eq!(net.wire_events("bob", "phone", mb), [timeout]);
    assert_eq!(
        net.wire_events("carol", "phone", mc),
        [json!({"type": "incoming_ended", "call_id": c, "reason": "timeout"})]
    );

    net.advance(Duration::from_secs(5));
    assert_eq!(net.join("carol", "phone", &call), Ok(ReplyResult::Done));
    let joined =
        json!({"type": "participant_joined", "call_id": c, "user": "carol", "device": "phone"});
    assert_eq!(net.wire_events("carol", "phone", mc)[1..], [joined.clone()]);
    assert_eq!(net.wire_events("alice", "phone", ma)[1..], [joined.clone()]);
    assert_eq!(net.wire_events("bob", "phone", mb)[1..], [joined]);
    assert_eq!(
        net.join("carol", "phone", &call),
        Ok(ReplyResult::Done),
        "joining twice is joining"
    );
    assert_eq!(
        net.names("carol", "phone"),
        [
            "incoming_received",
            "incoming_timeout",
            "participant_joined"
        ]
    );
    assert!(
        net.dev("carol", "phone")
            .session
            .live_calls()
            .any(|c| *c == call),
        "carol's phone is in the call again"
    );
    assert_eq!(
        net.names("bob", "phone")[2..],
        ["callee_outcome", "participant_joined"]
    );

    // A snapshot lists everyone in the call.
    net.connect("carol", "tablet");
    let sync = net
        .dev("carol", "tablet")
        .received
        .iter()
        .find_map(|m| match &m.body {
            ServerBody::Sync(s) => Some(s.clone()),
            _ => None,
        })
        .expect("a fresh device gets a sync");
    assert_eq!(sync.calls.len(), 1);
    let participants = serde_json::to_value(&sync.calls[0].participants).unwrap();
    assert_eq!(
        participants,
        json!([{"user": "alice", "device": "phone"}, {"user": "bob", "device": "phone"},
               {"user": "carol", "device": "phone"}])
    );
    assert!(sync.ended.is_empty(), "no longer listed as ended for carol");
}

#[test]
fn late_join_is_refused_before_anyone_accepted_and_after_the_end() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob", "carol", "dave"]);
    let call = net
        .invite("alice", "phone", &["bob", "carol"], Some(30))
        .unwrap();
    net.decline("carol", "phone", &call, false).unwrap();
    assert_eq!(
        net.join("carol", "phone", &call),
        Err(CommandError::Ended {
            reason: Reason::Declined
        }),
        "nobody is in the call yet"
    );
    assert_eq!(
        net.join("alice", "phone", &call),
        Err(CommandError::WrongRole)
    );
    assert_eq!(
        net.join("dave", "phone", &call),
        Err(CommandError::NotFound)
    );
    net.accept("bob", "phone", &call).unwrap();
    net.hang_up("bob", "phone", &call).unwrap();
    assert_eq!(net.sb.call(&call).unwrap().ended(), Some(Reason::HungUp));
    assert_eq!(
        net.join("carol", "phone", &call),
        Err(CommandError::Ended {
            reason: Reason::HungUp
        })
    );
    assert_eq!(
        net.join("bob", "phone", &call),
        Err(CommandError::Ended {
            reason: Reason::HungUp
        })
    );
}

#[test]
fn caller_leaves_and_the_other_two_go_on() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob", "carol", "dave"]);
    let call = net
        .invite("alice", "phone", &["bob", "carol"], None)
        .unwrap();
    net.accept("bob", "phone", &call).unwrap();
    net.accept("carol", "phone", &call).unwrap();
    let (ma, mb, mc) = (
        net.mark("alice", "phone"),
        net.mark("bob", "phone"),
        net.mark("carol", "phone"),
    );
    let c = call.to_string();
    assert_eq!(net.hang_up("alice", "phone", &call), Ok(ReplyResult::Done));
    assert_eq!(
        net.wire_events("alice", "phone", ma),
        [json!({"type": "call_ended", "call_id": c, "reason": "hung_up"})]
    );
    let left = json!({"type": "participant_left", "call_id": c, "user": "alice", "reason": "left"});
    assert_eq!(net.wire_events("bob", "phone", mb), [left.clone()]);
    assert_eq!(net.wire_events("carol", "phone", mc), [left]);
    let view = net.sb.call(&call).unwrap();
    assert_eq!(view.ended(), None);
    assert!(!view.caller_in());
    assert_eq!(
        view.participants(),
        [(uid("bob"), did("phone")), (uid("carol"), did("phone"))]
    );
    assert_eq!(
        net.hang_up("alice", "phone", &call),
        Ok(ReplyResult::Done),
        "leaving twice is leaving"
    );
    // alice is free again.
    net.invite("alice", "phone", &["dave"], None).unwrap();

    net.hang_up("carol", "phone", &call).unwrap();
    let ended = json!({"type": "call_ended", "call_id": c, "reason": "hung_up"});
    assert_eq!(net.wire_events("carol", "phone", mc)[1..], [ended.clone()]);
    assert_eq!(net.wire_events("bob", "phone", mb)[1..], [ended]);
    assert_eq!(
        net.wire_events("alice", "phone", ma)
            .iter()
            .filter(|e| e["call_id"] == c)
            .count(),
        1,
        "alice, gone, hears no more of it"
    );
    assert_eq!(net.sb.call(&call).unwrap().ended(), Some(Reason::HungUp));
}

#[test]
fn the_last_but_one_leaving_cancels_the_ringing_invitees() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob", "carol"]);
    let call = net
        .invite("alice", "phone", &["bob", "carol"], None)
        .unwrap();
    net.accept("bob", "phone", &call).unwrap();
    let (ma, mc) = (net.mark("alice", "phone"), net.mark("carol", "phone"));
    net.hang_up("bob", "phone", &call).unwrap();
    let c = call.to_string();
    assert_eq!(
        net.wire_events("carol", "phone", mc),
        [json!({"type": "incoming_ended", "call_id": c, "reason": "canceled"})]
    );
    assert_eq!(
        net.wire_events("alice", "phone", ma),
        [
            json!({"type": "callee_outcome", "call_id": c, "callee": "carol", "reason": "canceled"}),
            json!({"type": "call_ended", "call_id": c, "reason": "hung_up"})
        ]
    );
    assert_eq!(net.sb.poll_timeout(), None);
}

/// bob's `add` straight to the switchboard: its typed refusal.
fn add_direct(
    net: &mut Net,
    call: &invitation_core::CallId,
    callees: &[&str],
) -> Result<ReplyResult, CommandError> {
    net.direct(
        "bob",
        "phone",
        invitation_core::protocol::Command::Add {
            call_id: call.clone(),
            callees: callees.iter().map(|c| uid(c)).collect(),
        },
    )
}

fn three_in_a_call(config: SwitchboardConfig) -> (Net, invitation_core::CallId) {
    let mut net = Net::with_config(config);
    online(&mut net, &["alice", "bob", "carol", "dave"]);
    let call = net
        .invite("alice", "phone", &["bob", "carol"], None)
        .unwrap();
    net.accept("bob", "phone", &call).unwrap();
    net.accept("carol", "phone", &call).unwrap();
    (net, call)
}

#[test]
fn the_caller_ends_the_call_for_everyone() {
    let (mut net, call) = three_in_a_call(SwitchboardConfig::default());
    net.add("bob", "phone", &call, &["dave"]).unwrap();
    let (ma, mb, mc, md) = (
        net.mark("alice", "phone"),
        net.mark("bob", "phone"),
        net.mark("carol", "phone"),
        net.mark("dave", "phone"),
    );
    assert_eq!(net.end("alice", "phone", &call), Ok(ReplyResult::Done));
    let c = call.to_string();
    let by_alice =
        json!({"type": "participant_left", "call_id": c, "user": "alice", "reason": "ended_call"});
    let dave_canceled =
        json!({"type": "callee_outcome", "call_id": c, "callee": "dave", "reason": "canceled"});
    let ended = json!({"type": "call_ended", "call_id": c, "reason": "hung_up"});
    assert_eq!(
        net.wire_events("bob", "phone", mb),
        [by_alice.clone(), dave_canceled.clone(), ended.clone()]
    );
    assert_eq!(
        net.wire_events("carol", "phone", mc),
        [by_alice, dave_canceled.clone(), ended.clone()]
    );
    assert_eq!(
        net.wire_events("alice", "phone", ma),
        [dave_canceled, ended]
    );
    assert_eq!(
        net.wire_events("dave", "phone", md),
        [json!({"type": "incoming_ended", "call_id": c, "reason": "canceled"})]
    );
    assert_eq!(net.sb.call(&call).unwrap().ended(), Some(Reason::HungUp));
    assert_eq!(net.sb.poll_timeout(), None);
    assert_eq!(
        net.end("alice", "phone", &call),
        Err(CommandError::Ended {
            reason: Reason::HungUp
        })
    );
    assert_eq!(
        net.names("bob", "phone")[2..],
        [
            "participant_joined",
            "callee_ringing",
            "participant_left",
            "callee_outcome",
            "call_ended"
        ]
    );
}

#[test]
fn end_by_a_callee_is_refused_by_default_and_allowed_by_policy() {
    let (mut net, call) = three_in_a_call(SwitchboardConfig::default());
    assert_eq!(net.end("bob", "phone", &call), Err(CommandError::WrongRole));
    assert_eq!(net.sb.call(&call).unwrap().ended(), None);

    let mut config = SwitchboardConfig::default();
    config.end_policy = EndPolicy::AnyParticipant;
    let (mut net, call) = three_in_a_call(config);
    let (ma, mb, mc) = (
        net.mark("alice", "phone"),
        net.mark("bob", "phone"),
        net.mark("carol", "phone"),
    );
    assert_eq!(net.end("bob", "phone", &call), Ok(ReplyResult::Done));
    let c = call.to_string();
    let by_bob =
        json!({"type": "participant_left", "call_id": c, "user": "bob", "reason": "ended_call"});
    let ended = json!({"type": "call_ended", "call_id": c, "reason": "hung_up"});
    assert_eq!(net.wire_events("bob", "phone", mb), [ended.clone()]);
    assert_eq!(
        net.wire_events("carol", "phone", mc),
        [by_bob.clone(), ended.clone()]
    );
    assert_eq!(net.wire_events("alice", "phone", ma), [by_bob, ended]);
    assert_eq!(net.sb.call(&call).unwrap().ended(), Some(Reason::HungUp));
    assert_eq!(
        net.names("carol", "phone")[2..],
        ["participant_left", "call_ended"]
    );
}

#[test]
fn someone_not_in_the_call_cannot_end_it() {
    let mut config = SwitchboardConfig::default();
    config.end_policy = EndPolicy::AnyParticipant;
    let mut net = Net::with_config(config);
    online(&mut net, &["alice", "bob", "carol"]);
    let call = net
        .invite("alice", "phone", &["bob", "carol"], None)
        .unwrap();
    net.accept("bob", "phone", &call).unwrap();
    assert_eq!(
        net.end("carol", "phone", &call),
        Err(CommandError::WrongRole),
        "still ringing: not in the call"
    );
    assert_eq!(net.sb.call(&call).unwrap().ended(), None);
}

#[test]
fn the_callee_limit_counts_everyone_ever_invited() {
    let mut config = SwitchboardConfig::default();
    config.max_callees = 3;
    config.contact_policy = ContactPolicy::new(|_, callee| callee.as_str() != "mallory");
    let mut net = Net::with_config(config);
    online(&mut net, &["alice", "bob", "carol", "dave", "erin"]);
    let call = net
        .invite("alice", "phone", &["bob", "carol"], None)
        .unwrap();
    assert_eq!(
        net.add("alice", "phone", &call, &["dave"]),
        Err(CommandError::WrongRole),
        "nobody accepted yet: an invitation, not a call"
    );
    net.accept("bob", "phone", &call).unwrap();
    assert_eq!(
        add_direct(&mut net, &call, &["alice"]),
        Err(CommandError::AlreadyInCall { user: uid("alice") })
    );
    assert_eq!(
        add_direct(&mut net, &call, &["carol"]),
        Err(CommandError::AlreadyInCall { user: uid("carol") }),
        "carol still rings"
    );
    assert_eq!(
        add_direct(&mut net, &call, &["bob"]),
        Err(CommandError::Invalid(ValidationError::CallerAmongCallees))
    );
    assert_eq!(
        add_direct(&mut net, &call, &[]),
        Err(CommandError::Invalid(ValidationError::CalleeCount {
            max: 3,
            got: 0
        }))
    );
    assert_eq!(
        add_direct(&mut net, &call, &["mallory"]),
        Err(CommandError::Forbidden {
            callee: uid("mallory")
        })
    );
    // Over the wire, the client gets the code.
    assert!(matches!(
        net.add("bob", "phone", &call, &["alice"]),
        Err(CommandError::Rejected {
            code: invitation_core::ErrorCode::AlreadyInCall,
            ..
        })
    ));
    assert_eq!(
        add_direct(&mut net, &call, &["dave", "erin"]),
        Err(CommandError::Invalid(ValidationError::CalleeCount {
            max: 3,
            got: 4
        }))
    );
    assert_eq!(
        net.add("bob", "phone", &call, &["dave", "dave"]),
        Ok(ReplyResult::Invited {
            call_id: call.clone(),
            ring_remaining_ms: 60_000,
            callees: vec![CalleeStatus::new(uid("dave"), InitialStatus::Ringing)],
        }),
        "duplicates are removed"
    );
    assert_eq!(
        add_direct(&mut net, &call, &["erin"]),
        Err(CommandError::Invalid(ValidationError::CalleeCount {
            max: 3,
            got: 4
        }))
    );
    // carol declines: ringing her again makes no new slot.
    net.decline("carol", "phone", &call, false).unwrap();
    let mc = net.mark("carol", "phone");
    assert_eq!(
        net.add("bob", "phone", &call, &["carol"]),
        Ok(ReplyResult::Invited {
            call_id: call.clone(),
            ring_remaining_ms: 60_000,
            callees: vec![CalleeStatus::new(uid("carol"), InitialStatus::Ringing)],
        })
    );
    let again = net.wire_events("carol", "phone", mc);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["type"], "incoming_call");
    assert_eq!(again[0]["ring_remaining_ms"], 60_000);
    assert_eq!(net.sb.call(&call).unwrap().callees().len(), 3);
    assert!(net.dev("carol", "phone").session.is_ringing(&call));
    assert_eq!(
        net.names("carol", "phone"),
        ["incoming_received", "decline_pressed", "incoming_received"],
        "a second ring of the same call"
    );
}

#[test]
fn a_busy_user_cannot_be_added_or_join() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob", "erin", "frank"]);
    let other = net.invite("erin", "phone", &["frank"], None).unwrap();
    net.accept("frank", "phone", &other).unwrap();
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    net.accept("bob", "phone", &call).unwrap();
    let (ma, mb) = (net.mark("alice", "phone"), net.mark("bob", "phone"));
    assert_eq!(
        add_direct(&mut net, &call, &["erin"]),
        Ok(ReplyResult::Invited {
            call_id: call.clone(),
            ring_remaining_ms: 60_000,
            callees: vec![CalleeStatus::new(uid("erin"), InitialStatus::Busy)],
        })
    );
    let busy = json!({"type": "callee_outcome", "call_id": call.to_string(), "callee": "erin", "reason": "busy"});
    assert_eq!(net.wire_events("alice", "phone", ma), [busy.clone()]);
    assert_eq!(net.wire_events("bob", "phone", mb), [busy]);
    assert_eq!(
        net.join("erin", "phone", &call),
        Err(CommandError::CallerBusy),
        "erin is in another call"
    );
    assert_eq!(net.sb.call(&call).unwrap().participants().len(), 2);
    net.hang_up("erin", "phone", &other).unwrap();
    assert_eq!(net.join("erin", "phone", &call), Ok(ReplyResult::Done));
    assert_eq!(net.sb.call(&call).unwrap().participants().len(), 3);
}

#[test]
fn a_join_on_one_device_is_joined_elsewhere_for_the_others() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob"]);
    net.connect("carol", "phone");
    net.connect("carol", "tablet");
    let call = net
        .invite("alice", "phone", &["bob", "carol"], Some(30))
        .unwrap();
    net.accept("bob", "phone", &call).unwrap();
    net.advance(Duration::from_secs(30));
    let (mp, mt) = (net.mark("carol", "phone"), net.mark("carol", "tablet"));
    assert_eq!(net.join("carol", "tablet", &call), Ok(ReplyResult::Done));
    let joined = json!({"type": "participant_joined", "call_id": call.to_string(),
                        "user": "carol", "device": "tablet"});
    assert_eq!(net.wire_events("carol", "phone", mp), [joined.clone()]);
    assert_eq!(net.wire_events("carol", "tablet", mt), [joined]);
    for device in ["phone", "tablet"] {
        let last = net.dev("carol", device).app_events().last().cloned();
        assert!(
            matches!(&last, Some(AppEvent::ParticipantJoined { call_id, user, device, .. })
                if *call_id == call && *user == uid("carol") && *device == did("tablet")),
            "{last:?}"
        );
    }
    assert!(
        net.dev("carol", "tablet")
            .session
            .live_calls()
            .any(|c| *c == call)
    );
    assert!(
        !net.dev("carol", "phone")
            .session
            .live_calls()
            .any(|c| *c == call),
        "the phone is not in the call"
    );
    assert_eq!(
        net.join("carol", "phone", &call),
        Err(CommandError::Ended {
            reason: Reason::AnsweredElsewhere
        })
    );
    assert_eq!(
        net.sb.call(&call).unwrap().answered_by(&uid("carol")),
        Some(&did("tablet"))
    );
}

#[test]
fn adding_a_user_who_is_ringing_you_makes_no_second_call() {
    let mut config = SwitchboardConfig::default();
    config.busy_policy = BusyPolicy::RingAnyway;
    let mut net = Net::with_config(config);
    online(&mut net, &["alice", "bob", "dave"]);
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    net.accept("bob", "phone", &call).unwrap();
    let theirs = net.invite("dave", "phone", &["bob"], None).unwrap();
    assert!(net.dev("bob", "phone").session.is_ringing(&theirs));
    let (ma, mb, md) = (
        net.mark("alice", "phone"),
        net.mark("bob", "phone"),
        net.mark("dave", "phone"),
    );
    assert_eq!(
        net.add("bob", "phone", &call, &["dave"]),
        Ok(ReplyResult::Invited {
            call_id: call.clone(),
            ring_remaining_ms: 60_000,
            callees: vec![CalleeStatus::new(uid("dave"), InitialStatus::Joined)],
        })
    );
    let (c, t) = (call.to_string(), theirs.to_string());
    let joined =
        json!({"type": "participant_joined", "call_id": c, "user": "dave", "device": "phone"});
    assert_eq!(
        net.wire_events("bob", "phone", mb),
        [
            json!({"type": "incoming_ended", "call_id": t, "reason": "canceled"}),
            joined.clone()
        ]
    );
    assert_eq!(
        net.wire_events("dave", "phone", md),
        [
            json!({"type": "callee_outcome", "call_id": t, "callee": "bob", "reason": "canceled"}),
            json!({"type": "call_ended", "call_id": t, "reason": "canceled"}),
            joined.clone()
        ]
    );
    assert_eq!(net.wire_events("alice", "phone", ma), [joined]);
    let live: Vec<_> = net.sb.calls().filter(|v| v.ended().is_none()).collect();
    assert_eq!(live.len(), 1, "one call, not two");
    assert_eq!(net.sb.stats().glare_merges, 1);
    assert_eq!(net.sb.poll_timeout(), None, "nobody rings");
    assert!(
        net.dev("dave", "phone")
            .session
            .live_calls()
            .any(|c| *c == call)
    );
    assert_eq!(
        net.sb.call(&call).unwrap().participants(),
        [
            (uid("alice"), did("phone")),
            (uid("bob"), did("phone")),
            (uid("dave"), did("phone"))
        ]
    );
}

/// An add whose callees are all busy rings nobody: no timer for it (the
/// invite's ring timer still runs for the callee who rings).
#[test]
fn an_add_that_rings_nobody_arms_no_timer() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob", "carol", "erin", "frank"]);
    let t0 = net.now;
    let other = net.invite("erin", "phone", &["frank"], None).unwrap();
    net.accept("frank", "phone", &other).unwrap();
    let call = net
        .invite("alice", "phone", &["bob", "carol"], Some(30))
        .unwrap();
    net.accept("bob", "phone", &call).unwrap();
    net.advance(Duration::from_secs(5));
    assert_eq!(
        net.add("bob", "phone", &call, &["erin"]),
        Ok(ReplyResult::Invited {
            call_id: call.clone(),
            ring_remaining_ms: 30_000,
            callees: vec![CalleeStatus::new(uid("erin"), InitialStatus::Busy)],
        })
    );
    assert_eq!(net.sb.poll_timeout(), Some(t0 + Duration::from_secs(30)));
    net.accept("carol", "phone", &call).unwrap();
    assert_eq!(net.sb.poll_timeout(), None, "nothing rings, nothing armed");
}

/// A retried request (same id) gets the first answer: a join refused
/// before anyone accepted stays refused for its retries, and so does an
/// add refused as `already_in_call`, though either could succeed by now.
#[test]
fn retries_of_refusals_that_could_flip_keep_their_answer() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob", "carol", "dave"]);
    let call = net
        .invite("alice", "phone", &["bob", "carol"], None)
        .unwrap();
    net.decline("carol", "phone", &call, false).unwrap();
    let conn = net.dev("carol", "phone").conn.unwrap();
    let join = invitation_core::protocol::Command::Join {
        call_id: call.clone(),
    };
    let id = invitation_core::RequestId::new("j1").unwrap();
    let first = net
        .sb
        .handle_command(net.now, conn, id.clone(), join.clone());
    assert_eq!(
        first,
        Err(CommandError::Ended {
            reason: Reason::Declined
        })
    );
    net.pump();
    net.accept("bob", "phone", &call).unwrap();
    let retry = net.sb.handle_command(net.now, conn, id, join.clone());
    assert_eq!(retry, first, "the retry hears the first answer");
    net.pump();
    let fresh = invitation_core::RequestId::new("j2").unwrap();
    assert_eq!(
        net.sb.handle_command(net.now, conn, fresh, join),
        Ok(ReplyResult::Done),
        "a new request runs"
    );
    net.pump();

    net.add("bob", "phone", &call, &["dave"]).unwrap();
    let bob = net.dev("bob", "phone").conn.unwrap();
    let add = invitation_core::protocol::Command::Add {
        call_id: call.clone(),
        callees: vec![uid("dave")],
    };
    let id = invitation_core::RequestId::new("a1").unwrap();
    let refused = Err(CommandError::AlreadyInCall { user: uid("dave") });
    assert_eq!(
        net.sb.handle_command(net.now, bob, id.clone(), add.clone()),
        refused
    );
    net.pump();
    net.decline("dave", "phone", &call, false).unwrap();
    assert_eq!(net.sb.handle_command(net.now, bob, id, add), refused);
}

/// A callee rung again already gave the caller an outcome (reported once):
/// their accept this time reaches the caller as a join, like everyone else.
#[test]
fn an_accept_after_a_second_ring_is_a_join_for_the_caller() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob", "carol"]);
    let call = net
        .invite("alice", "phone", &["bob", "carol"], None)
        .unwrap();
    net.accept("bob", "phone", &call).unwrap();
    net.decline("carol", "phone", &call, false).unwrap();
    net.add("bob", "phone", &call, &["carol"]).unwrap();
    let (ma, mb) = (net.mark("alice", "phone"), net.mark("bob", "phone"));
    let na = net.names("alice", "phone").len();
    net.accept("carol", "phone", &call).unwrap();
    let joined = json!({"type": "participant_joined", "call_id": call.to_string(),
                        "user": "carol", "device": "phone"});
    assert_eq!(net.wire_events("alice", "phone", ma), [joined.clone()]);
    assert_eq!(net.wire_events("bob", "phone", mb), [joined]);
    assert_eq!(
        names_from(&net, "alice", "phone", na),
        ["participant_joined"]
    );
    assert_eq!(net.sb.call(&call).unwrap().rung_again(&uid("carol")), 1);
    assert_eq!(net.sb.call(&call).unwrap().participants().len(), 3);
}
