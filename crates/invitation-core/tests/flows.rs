//! Switchboard + client session, driven through the test network: every
//! transition, the races (accept / cancel / decline / timeout), and the authorisation
//! cases (who may act on which call).

mod harness;

use std::time::Duration;

use harness::{Net, did, uid};
use invitation_core::protocol::{ClientMessage, Command, InitialStatus, ReplyResult};
use invitation_core::{
    AppEvent, BusyPolicy, CommandError, OfflinePolicy, Output, Reason, RequestId,
    SwitchboardConfig, ValidationError,
};

fn online(net: &mut Net, users: &[&str]) {
    for u in users {
        net.connect(u, "phone");
    }
}

#[test]
fn accept_then_hang_up() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob"]);
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    assert!(net.dev("bob", "phone").session.is_ringing(&call));
    assert_eq!(net.names("bob", "phone"), ["incoming_received"]);
    // Ringing (the server sent it), then delivered (bob's device said so).
    assert_eq!(
        net.names("alice", "phone"),
        ["callee_ringing", "callee_delivered"]
    );

    assert_eq!(net.accept("bob", "phone", &call), Ok(ReplyResult::Done));
    assert_eq!(
        net.names("bob", "phone"),
        ["incoming_received", "accept_pressed"]
    );
    assert_eq!(
        net.names("alice", "phone"),
        ["callee_ringing", "callee_delivered", "outgoing_accepted"]
    );
    assert_eq!(net.sb.poll_timeout(), None, "nothing rings any more");

    // In a call: both are busy for others.
    net.connect("carol", "phone");
    let busy = net.invite("carol", "phone", &["bob"], None).unwrap();
    assert_eq!(
        net.sb.call(&busy).unwrap().outcome(&uid("bob")),
        Some(Reason::Busy)
    );
    assert_eq!(
        net.names("carol", "phone"),
        ["outgoing_busy", "call_ended"],
        "carol sees busy, not a timeout"
    );

    assert_eq!(net.hang_up("bob", "phone", &call), Ok(ReplyResult::Done));
    assert_eq!(net.names("bob", "phone").last(), Some(&"call_ended"));
    assert_eq!(net.names("alice", "phone").last(), Some(&"call_ended"));
    assert_eq!(net.sb.call(&call).unwrap().ended(), Some(Reason::HungUp));
    // No longer busy.
    let again = net.invite("carol", "phone", &["bob"], None).unwrap();
    assert_eq!(net.sb.call(&again).unwrap().outcome(&uid("bob")), None);
}

#[test]
fn caller_hang_up_ends_the_call_for_everyone() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob"]);
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    net.accept("bob", "phone", &call).unwrap();
    assert_eq!(net.hang_up("alice", "phone", &call), Ok(ReplyResult::Done));
    let ended: Vec<_> = net
        .dev("bob", "phone")
        .app_events()
        .filter(|e| {
            matches!(
                e,
                AppEvent::CallEnded {
                    reason: Reason::HungUp,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(ended.len(), 1);
    assert_eq!(
        net.hang_up("alice", "phone", &call),
        Ok(ReplyResult::Done),
        "idempotent"
    );
}

#[test]
fn decline_and_decline_as_busy() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob"]);
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    assert_eq!(
        net.decline("bob", "phone", &call, false),
        Ok(ReplyResult::Done)
    );
    assert_eq!(
        net.names("bob", "phone"),
        ["incoming_received", "decline_pressed"]
    );
    assert_eq!(
        net.names("alice", "phone"),
        [
            "callee_ringing",
            "callee_delivered",
            "outgoing_declined",
            "call_ended"
        ]
    );

    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    net.decline("bob", "phone", &call, true).unwrap();
    let alice = net.names("alice", "phone");
    assert_eq!(&alice[alice.len() - 2..], ["outgoing_busy", "call_ended"]);
    assert_eq!(
        net.sb.call(&call).unwrap().outcome(&uid("bob")),
        Some(Reason::Busy)
    );
}

#[test]
fn timeout_fires_on_both_sides_once() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob"]);
    let call = net.invite("alice", "phone", &["bob"], Some(30)).unwrap();
    net.advance(Duration::from_millis(29_999));
    assert!(net.dev("bob", "phone").session.is_ringing(&call));
    net.advance(Duration::from_millis(1));
    assert_eq!(
        net.names("bob", "phone"),
        ["incoming_received", "incoming_timeout"]
    );
    assert_eq!(
        net.names("alice", "phone"),
        [
            "callee_ringing",
            "callee_delivered",
            "outgoing_timeout",
            "call_ended"
        ]
    );
    // The client fallbacks were disarmed by the server's word: nothing more.
    net.advance(Duration::from_secs(60));
    assert_eq!(net.names("bob", "phone").len(), 2);
    assert_eq!(net.sb.poll_timeout(), None);
    assert!(
        net.devs
            .values()
            .all(|d| d.session.poll_timeout().is_none())
    );
}

#[test]
fn cancel_stops_the_ring() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob"]);
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    assert_eq!(net.cancel("alice", "phone", &call), Ok(ReplyResult::Done));
    assert!(net.names("alice", "phone").contains(&"cancel_pressed"));
    let canceled: Vec<_> = net
        .dev("bob", "phone")
        .app_events()
        .filter_map(|e| match e {
            AppEvent::IncomingCallCanceled {
                reason,
                custom_data,
                ..
            } => Some((*reason, custom_data.clone())),
            _ => None,
        })
        .collect();
    // The cancel carried no data: the callee gets none (not the invite's,
    // which it has from the invitation itself).
    assert_eq!(canceled, [(Reason::Canceled, None)]);
    assert_eq!(
        net.cancel("alice", "phone", &call),
        Ok(ReplyResult::Done),
        "idempotent"
    );
}

#[test]
fn b1_cancel_versus_accept_one_winner() {
    // accept first
    let mut net = Net::new();
    online(&mut net, &["alice", "bob"]);
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    net.accept("bob", "phone", &call).unwrap();
    assert_eq!(
        net.cancel("alice", "phone", &call),
        Err(CommandError::Ended {
            reason: Reason::Accepted
        })
    );
    assert!(!net.names("bob", "phone").contains(&"incoming_canceled"));

    // cancel first
    let mut net = Net::new();
    online(&mut net, &["alice", "bob"]);
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    net.cancel("alice", "phone", &call).unwrap();
    assert_eq!(
        net.accept("bob", "phone", &call),
        Err(CommandError::Ended {
            reason: Reason::Canceled
        })
    );
    assert!(!net.names("alice", "phone").contains(&"outgoing_accepted"));
}

#[test]
fn b2_two_devices_accept_first_wins() {
    let mut net = Net::new();
    net.connect("alice", "phone");
    net.connect("bob", "phone");
    net.connect("bob", "laptop");
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    assert!(net.dev("bob", "phone").session.is_ringing(&call));
    assert!(net.dev("bob", "laptop").session.is_ringing(&call));

    net.accept("bob", "phone", &call).unwrap();
    assert_eq!(
        net.accept("bob", "laptop", &call),
        Err(CommandError::Ended {
            reason: Reason::AnsweredElsewhere
        })
    );
    assert_eq!(
        net.names("bob", "laptop"),
        [
            "incoming_received",
            "answered_elsewhere",
            "incoming_canceled"
        ]
    );
    let accepted = net
        .names("alice", "phone")
        .into_iter()
        .filter(|n| *n == "outgoing_accepted")
        .count();
    assert_eq!(accepted, 1);
    assert_eq!(
        net.sb.call(&call).unwrap().answered_by(&uid("bob")),
        Some(&did("phone"))
    );
    // The winner accepting again is idempotent.
    assert_eq!(net.accept("bob", "phone", &call), Ok(ReplyResult::Done));
}

#[test]
fn b3_decline_never_tears_down_an_accepted_call() {
    let mut net = Net::new();
    net.connect("alice", "phone");
    net.connect("bob", "phone");
    net.connect("bob", "laptop");
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    net.accept("bob", "phone", &call).unwrap();
    assert_eq!(
        net.decline("bob", "laptop", &call, false),
        Err(CommandError::Ended {
            reason: Reason::AnsweredElsewhere
        })
    );
    assert_eq!(
        net.sb.call(&call).unwrap().outcome(&uid("bob")),
        Some(Reason::Accepted)
    );
    assert_eq!(net.sb.call(&call).unwrap().ended(), None);

    // The other way round: a decline on one device stops all of them.
    let call = {
        net.hang_up("bob", "phone", &call).unwrap();
        net.invite("alice", "phone", &["bob"], None).unwrap()
    };
    net.decline("bob", "laptop", &call, false).unwrap();
    assert_eq!(
        net.accept("bob", "phone", &call),
        Err(CommandError::Ended {
            reason: Reason::DeclinedElsewhere
        })
    );
    assert_eq!(net.names("bob", "phone").last(), Some(&"incoming_canceled"));
}

#[test]
fn b4_accept_one_millisecond_after_the_deadline() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob"]);
    let call = net.invite("alice", "phone", &["bob"], Some(10)).unwrap();
    let deadline = net.sb.call(&call).unwrap().deadline();
    // The owner's timer has not fired yet; the command arrives late.
    let conn = net.dev("bob", "phone").conn.unwrap();
    let late = deadline + Duration::from_millis(1);
    let result = net.sb.handle_command(
        late,
        conn,
        RequestId::new("late").unwrap(),
        Command::Accept {
            call_id: call.clone(),
            custom_data: None,
        },
    );
    assert_eq!(
        result,
        Err(CommandError::Ended {
            reason: Reason::Timeout
        })
    );
    net.now = late;
    net.pump();
    let timeouts = net
        .names("alice", "phone")
        .into_iter()
        .filter(|n| *n == "outgoing_timeout")
        .count();
    assert_eq!(timeouts, 1);
    assert_eq!(
        net.sb.call(&call).unwrap().outcome(&uid("bob")),
        Some(Reason::Timeout)
    );
}

#[test]
fn b6_glare_becomes_one_call() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob"]);
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    let id = net.command(
        "bob",
        "phone",
        Command::Invite(invitation_core::protocol::InviteRequest::new(
            vec![uid("alice")],
            invitation_core::CallType::Voice,
        )),
    );
    match net.result("bob", "phone", &id) {
        Ok(ReplyResult::Joined { call_id, caller }) => {
            assert_eq!(call_id, call);
            assert_eq!(caller.id, uid("alice"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(net.sb.calls().count(), 1, "one call, not two");
    assert!(
        !net.names("alice", "phone").contains(&"incoming_received"),
        "alice never rings"
    );
    assert!(net.names("alice", "phone").contains(&"outgoing_accepted"));
    assert!(net.names("bob", "phone").contains(&"outgoing_accepted"));
    assert_eq!(net.sb.stats().glare_merges, 1);
}

#[test]
fn b7_second_invite_to_a_ringing_callee_is_busy() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob", "carol"]);
    net.invite("alice", "phone", &["bob"], None).unwrap();
    let second = net.invite("carol", "phone", &["bob"], None).unwrap();
    assert_eq!(
        net.sb.call(&second).unwrap().outcome(&uid("bob")),
        Some(Reason::Busy)
    );
    let rings = net
        .names("bob", "phone")
        .into_iter()
        .filter(|n| *n == "incoming_received")
        .count();
    assert_eq!(rings, 1, "never two rings");
}

#[test]
fn b8_and_inviting_users_are_busy_and_callers_cannot_double_invite() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob", "carol", "dave"]);
    net.invite("alice", "phone", &["bob"], None).unwrap();
    // alice is inviting: busy for carol.
    let c = net.invite("carol", "phone", &["alice"], None).unwrap();
    assert_eq!(
        net.sb.call(&c).unwrap().outcome(&uid("alice")),
        Some(Reason::Busy)
    );
    // alice cannot start a second invitation while one rings.
    let r = net.invite("alice", "phone", &["dave"], None);
    assert_eq!(r, Err(CommandError::CallerBusy));
}

#[test]
fn busy_policy_ring_anyway() {
    let mut cfg = SwitchboardConfig::default();
    cfg.busy_policy = BusyPolicy::RingAnyway;
    let mut net = Net::with_config(cfg);
    online(&mut net, &["alice", "bob", "carol"]);
    net.invite("alice", "phone", &["bob"], None).unwrap();
    let c = net.invite("carol", "phone", &["bob"], None).unwrap();
    assert_eq!(net.sb.call(&c).unwrap().outcome(&uid("bob")), None);
    assert!(net.dev("bob", "phone").session.is_ringing(&c));
}

#[test]
fn b9_offline_callee_delivered_on_connect_in_time() {
    let mut net = Net::new();
    net.connect("alice", "phone");
    let id = net.command(
        "alice",
        "phone",
        Command::Invite(
            invitation_core::protocol::InviteRequest::new(
                vec![uid("bob")],
                invitation_core::CallType::Video,
            )
            .with_timeout_s(Some(60)),
        ),
    );
    let Ok(ReplyResult::Invited {
        call_id: call,
        callees,
        ..
    }) = net.result("alice", "phone", &id)
    else {
        panic!()
    };
    assert_eq!(callees[0].status, InitialStatus::Offline);
    assert!(!net.names("alice", "phone").contains(&"callee_ringing"));
    net.advance(Duration::from_secs(20));
    net.connect("bob", "phone");
    assert!(net.dev("bob", "phone").session.is_ringing(&call));
    let ring = net.dev("bob", "phone").app_events().find_map(|e| match e {
        AppEvent::IncomingCallReceived { ring_remaining, .. } => Some(*ring_remaining),
        _ => None,
    });
    assert_eq!(
        ring,
        Some(Duration::from_secs(40)),
        "server-relative time left"
    );
    assert!(net.names("alice", "phone").contains(&"callee_ringing"));
    net.accept("bob", "phone", &call).unwrap();
    assert!(net.names("alice", "phone").contains(&"outgoing_accepted"));
}

#[test]
fn b9_offline_callee_never_connecting_times_out() {
    let mut net = Net::new();
    net.connect("alice", "phone");
    let call = net.invite("alice", "phone", &["bob"], Some(10)).unwrap();
    net.advance(Duration::from_secs(10));
    assert_eq!(
        net.sb.call(&call).unwrap().outcome(&uid("bob")),
        Some(Reason::Timeout)
    );
    assert!(net.names("alice", "phone").contains(&"outgoing_timeout"));
    // Connecting afterwards: no ring for a dead call.
    net.connect("bob", "phone");
    assert!(!net.names("bob", "phone").contains(&"incoming_received"));
}

#[test]
fn late_device_with_little_time_left_does_not_ring() {
    let mut net = Net::new();
    net.connect("alice", "phone");
    let call = net.invite("alice", "phone", &["bob"], Some(60)).unwrap();
    net.advance(Duration::from_secs(57));
    net.connect("bob", "phone");
    assert!(!net.dev("bob", "phone").session.is_ringing(&call));
    assert!(!net.names("bob", "phone").contains(&"incoming_received"));
    net.advance(Duration::from_secs(3));
    assert!(
        net.names("bob", "phone").is_empty(),
        "no timeout for a call that never rang"
    );
}

#[test]
fn offline_policy_reject_is_unreachable() {
    let mut cfg = SwitchboardConfig::default();
    cfg.offline_policy = OfflinePolicy::Reject;
    let mut net = Net::with_config(cfg);
    net.connect("alice", "phone");
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    assert_eq!(
        net.sb.call(&call).unwrap().outcome(&uid("bob")),
        Some(Reason::Unreachable)
    );
    assert!(net.dev("alice", "phone").app_events().any(|e| matches!(
        e,
        AppEvent::CalleeOutcome {
            reason: Reason::Unreachable,
            ..
        }
    )));
}

#[test]
fn b10_group_call_per_callee_outcomes() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob", "carol", "dave"]);
    let call = net
        .invite("alice", "phone", &["bob", "carol", "dave"], Some(30))
        .unwrap();
    net.decline("bob", "phone", &call, false).unwrap();
    net.accept("carol", "phone", &call).unwrap();
    // dave still rings: group invitations keep ringing the others.
    assert!(net.dev("dave", "phone").session.is_ringing(&call));
    net.advance(Duration::from_secs(30));
    let view = net.sb.call(&call).unwrap();
    assert_eq!(view.outcome(&uid("bob")), Some(Reason::Declined));
    assert_eq!(view.outcome(&uid("carol")), Some(Reason::Accepted));
    assert_eq!(view.outcome(&uid("dave")), Some(Reason::Timeout));
    assert_eq!(view.ended(), None, "alice and carol are still in the call");
    let alice: Vec<_> = net
        .names("alice", "phone")
        .into_iter()
        .filter(|n| n.starts_with("outgoing"))
        .collect();
    assert_eq!(
        alice,
        ["outgoing_declined", "outgoing_accepted", "outgoing_timeout"]
    );
    net.hang_up("carol", "phone", &call).unwrap();
    assert_eq!(net.sb.call(&call).unwrap().ended(), Some(Reason::HungUp));
}

#[test]
fn b11_unknown_and_foreign_calls_look_the_same() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob", "mallory"]);
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    let unknown = invitation_core::CallId::new("call-999").unwrap();
    let before = net.sb.last_seq(&uid("bob"));
    assert_eq!(
        net.cancel("mallory", "phone", &unknown),
        Err(CommandError::NotFound)
    );
    assert_eq!(
        net.cancel("alice", "phone", &unknown),
        Err(CommandError::NotFound)
    );
    // D2: a non-participant acting on a real call gets the same answer.
    assert_eq!(
        net.accept("mallory", "phone", &call),
        Err(CommandError::NotFound)
    );
    assert_eq!(
        net.decline("mallory", "phone", &call, false),
        Err(CommandError::NotFound)
    );
    assert_eq!(
        net.cancel("mallory", "phone", &call),
        Err(CommandError::NotFound)
    );
    assert_eq!(
        net.hang_up("mallory", "phone", &call),
        Err(CommandError::NotFound)
    );
    assert_eq!(net.sb.last_seq(&uid("bob")), before, "no state change");
    assert!(net.dev("bob", "phone").session.is_ringing(&call));
}

#[test]
fn d1_identity_comes_from_the_connection() {
    let mut net = Net::new();
    online(&mut net, &["mallory", "bob"]);
    let conn = net.dev("mallory", "phone").conn.unwrap();
    let json = r#"{"v":1,"id":"x1","type":"invite","callees":["bob"],"call_type":"voice","caller":"alice","from":{"id":"alice"}}"#;
    let msg = ClientMessage::decode(json, &Default::default()).unwrap();
    let now = net.now;
    let command = msg.command().cloned().expect("a call command");
    let Ok(ReplyResult::Invited { call_id, .. }) =
        net.sb.handle_command(now, conn, msg.id, command)
    else {
        panic!()
    };
    assert_eq!(net.sb.call(&call_id).unwrap().caller().id, uid("mallory"));
}

#[test]
fn d3_wrong_roles_are_refused() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob"]);
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    assert_eq!(
        net.cancel("bob", "phone", &call),
        Err(CommandError::WrongRole)
    );
    assert_eq!(
        net.accept("alice", "phone", &call),
        Err(CommandError::WrongRole)
    );
    assert_eq!(
        net.decline("alice", "phone", &call, false),
        Err(CommandError::WrongRole)
    );
    assert_eq!(
        net.hang_up("bob", "phone", &call),
        Err(CommandError::WrongRole),
        "not in the call yet"
    );
    assert!(net.dev("bob", "phone").session.is_ringing(&call));
}

#[test]
fn caller_gone_after_grace() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob"]);
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    net.disconnect("alice", "phone");
    net.advance(Duration::from_secs(14));
    assert!(net.dev("bob", "phone").session.is_ringing(&call));
    net.advance(Duration::from_secs(1));
    let reasons: Vec<_> = net
        .dev("bob", "phone")
        .app_events()
        .filter_map(|e| match e {
            AppEvent::IncomingCallCanceled { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, [Reason::CallerGone]);
    assert_eq!(net.sb.poll_timeout(), None);
}

#[test]
fn caller_back_within_grace_keeps_the_call() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob"]);
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    net.disconnect("alice", "phone");
    net.advance(Duration::from_secs(10));
    net.connect("alice", "phone");
    assert_eq!(net.sb.call(&call).unwrap().caller_gone_at(), None);
    net.advance(Duration::from_secs(20));
    assert!(net.dev("bob", "phone").session.is_ringing(&call));
    net.accept("bob", "phone", &call).unwrap();
    assert!(net.names("alice", "phone").contains(&"outgoing_accepted"));
}

#[test]
fn resume_replays_missed_events_without_duplicates() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob"]);
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    net.disconnect("alice", "phone");
    net.accept("bob", "phone", &call).unwrap();
    net.connect("alice", "phone");
    let welcome_resumed = net.dev("alice", "phone").app_events().any(|e| {
        matches!(
            e,
            AppEvent::Connection(invitation_core::ConnectionState::Connected { resumed: true, .. })
        )
    });
    assert!(welcome_resumed);
    assert_eq!(
        net.names("alice", "phone")
            .iter()
            .filter(|n| **n == "outgoing_accepted")
            .count(),
        1
    );
    // Reconnect again: nothing replays twice.
    net.connect("alice", "phone");
    assert_eq!(
        net.names("alice", "phone")
            .iter()
            .filter(|n| **n == "outgoing_accepted")
            .count(),
        1
    );
}

#[test]
fn a10_gap_beyond_the_buffer_gets_an_explicit_resync() {
    let mut cfg = SwitchboardConfig::default();
    cfg.resume_buffer = 3;
    let mut net = Net::with_config(cfg);
    online(&mut net, &["alice", "bob"]);
    let first = net.invite("alice", "phone", &["bob"], None).unwrap();
    net.disconnect("bob", "phone");
    net.cancel("alice", "phone", &first).unwrap();
    for _ in 0..3 {
        let c = net.invite("alice", "phone", &["bob"], None).unwrap();
        net.cancel("alice", "phone", &c).unwrap();
    }
    let live = net.invite("alice", "phone", &["bob"], None).unwrap();
    net.connect("bob", "phone");
    let dev = net.dev("bob", "phone");
    assert!(
        dev.app_events()
            .any(|e| matches!(e, AppEvent::Resynced { .. }))
    );
    assert!(
        dev.session.is_ringing(&live),
        "the live call rings after resync"
    );
    // The ring of the first call ended with its real reason.
    assert!(dev.app_events().any(|e| matches!(
        e,
        AppEvent::IncomingCallCanceled { call_id, reason: Reason::Canceled, .. } if *call_id == first
    )));
    assert_eq!(dev.session.last_seq(), Some(net.sb.last_seq(&uid("bob"))));
}

#[test]
fn a2_a3_retries_with_the_same_request_id_are_idempotent() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob"]);
    net.dup_commands = 3;
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    assert_eq!(net.sb.calls().count(), 1, "one call for four copies");
    net.accept("bob", "phone", &call).unwrap();
    assert_eq!(net.sb.stats().duplicate_requests, 6);
    assert_eq!(
        net.names("alice", "phone")
            .iter()
            .filter(|n| **n == "outgoing_accepted")
            .count(),
        1
    );
    assert_eq!(net.dev("alice", "phone").results.len(), 1);
    assert_eq!(net.dev("bob", "phone").results.len(), 1);
}

#[test]
fn a1_command_issued_while_disconnected_is_sent_on_reconnect() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob"]);
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    net.disconnect("bob", "phone");
    let id = net.command(
        "bob",
        "phone",
        Command::Accept {
            call_id: call.clone(),
            custom_data: None,
        },
    );
    assert!(net.dev("bob", "phone").results.is_empty());
    net.connect("bob", "phone");
    assert_eq!(net.result("bob", "phone", &id), Ok(ReplyResult::Done));
    assert_eq!(
        net.sb.call(&call).unwrap().outcome(&uid("bob")),
        Some(Reason::Accepted)
    );
}

#[test]
fn c3_same_device_reconnecting_replaces_the_old_connection() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob"]);
    let old = net.dev("bob", "phone").conn.unwrap();
    let now = net.now;
    let new = invitation_core::ConnId::new(999);
    net.sb.connect(
        now,
        new,
        invitation_core::User::named("bob", "B"),
        did("phone"),
        Some(0),
        None,
    );
    let outs: Vec<_> = std::iter::from_fn(|| net.sb.poll_output()).collect();
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::Close { conn, .. } if *conn == old))
    );
    assert_eq!(net.sb.online_devices(&uid("bob")), vec![did("phone")]);
    assert_eq!(net.sb.connection_count(), 2, "alice and the new bob");
    // The old connection's late disconnect does not take the new one down.
    net.sb.disconnect(now, old);
    assert_eq!(net.sb.online_devices(&uid("bob")), vec![did("phone")]);
    let _ = new;
}

#[test]
fn e9_callee_list_rules() {
    let mut net = Net::new();
    online(&mut net, &["alice"]);
    let ten: Vec<String> = (0..10).map(|i| format!("u{i}")).collect();
    let ten: Vec<&str> = ten.iter().map(String::as_str).collect();
    assert_eq!(
        net.direct_invite("alice", "phone", &ten, None),
        Err(CommandError::Invalid(ValidationError::CalleeCount {
            max: 9,
            got: 10
        }))
    );
    assert_eq!(
        net.direct_invite("alice", "phone", &["bob", "alice"], None),
        Err(CommandError::Invalid(ValidationError::CallerAmongCallees))
    );
    assert_eq!(
        net.direct_invite("alice", "phone", &[], None),
        Err(CommandError::Invalid(ValidationError::CalleeCount {
            max: 9,
            got: 0
        }))
    );
    // Through the client, the refusal arrives typed by its wire code.
    assert!(matches!(
        net.invite("alice", "phone", &ten, None),
        Err(CommandError::Rejected {
            code: invitation_core::ErrorCode::Invalid,
            ..
        })
    ));
    // Duplicates are removed, not refused.
    let call = net
        .invite("alice", "phone", &["bob", "bob", "bob"], None)
        .unwrap();
    assert_eq!(net.sb.call(&call).unwrap().callees().len(), 1);
}

#[test]
fn e10_ring_timeout_bounds() {
    let mut net = Net::new();
    online(&mut net, &["alice"]);
    for bad in [0, 601, u32::MAX] {
        assert!(matches!(
            net.direct_invite("alice", "phone", &["bob"], Some(bad)),
            Err(CommandError::Invalid(ValidationError::RingTimeout { got_s, .. })) if got_s == bad
        ));
    }
    let call = net.invite("alice", "phone", &["bob"], Some(600)).unwrap();
    net.cancel("alice", "phone", &call).unwrap();
    let call = net.invite("alice", "phone", &["bob"], Some(1)).unwrap();
    assert!(net.sb.call(&call).is_some());
}

#[test]
fn custom_data_over_the_configured_limit_is_refused() {
    let mut cfg = SwitchboardConfig::default();
    cfg.max_custom_data = 16;
    let mut net = Net::with_config(cfg);
    online(&mut net, &["alice"]);
    let r = net.direct(
        "alice",
        "phone",
        Command::Invite(
            invitation_core::protocol::InviteRequest::new(
                vec![uid("bob")],
                invitation_core::CallType::Voice,
            )
            .with_custom_data(Some(
                invitation_core::CustomData::new("x".repeat(17)).unwrap(),
            )),
        ),
    );
    assert!(matches!(
        r,
        Err(CommandError::Invalid(ValidationError::TooLong {
            field: "custom_data",
            ..
        }))
    ));
}

#[test]
fn other_caller_devices_see_the_call_but_fire_no_outgoing_callbacks() {
    let mut net = Net::new();
    net.connect("alice", "phone");
    net.connect("alice", "tablet");
    net.connect("bob", "phone");
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    net.accept("bob", "phone", &call).unwrap();
    assert_eq!(
        net.names("alice", "tablet"),
        [
            "outgoing_started",
            "callee_ringing",
            "callee_delivered",
            "callee_outcome"
        ]
    );
    assert!(net.names("alice", "phone").contains(&"outgoing_accepted"));
}

#[test]
fn poll_timeout_is_none_when_idle() {
    let mut net = Net::new();
    assert_eq!(net.sb.poll_timeout(), None);
    online(&mut net, &["alice", "bob"]);
    assert_eq!(net.sb.poll_timeout(), None);
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    assert!(net.sb.poll_timeout().is_some());
    net.decline("bob", "phone", &call, false).unwrap();
    assert_eq!(net.sb.poll_timeout(), None);
}

#[test]
fn history_is_forgotten_after_retention() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob"]);
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    net.cancel("alice", "phone", &call).unwrap();
    net.advance(Duration::from_secs(599));
    assert!(
        net.sb.call(&call).is_some(),
        "tombstone kept for late duplicates"
    );
    net.advance(Duration::from_secs(2));
    assert!(net.sb.call(&call).is_none());
    assert_eq!(
        net.cancel("alice", "phone", &call),
        Err(CommandError::NotFound)
    );
}

#[test]
fn lost_command_is_retried_with_the_same_request_id() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob"]);
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    net.lose_commands = 1;
    let id = net.command(
        "bob",
        "phone",
        Command::Accept {
            call_id: call.clone(),
            custom_data: None,
        },
    );
    assert!(
        net.dev("bob", "phone").results.is_empty(),
        "the accept was lost"
    );
    net.advance(Duration::from_secs(2));
    assert_eq!(net.result("bob", "phone", &id), Ok(ReplyResult::Done));
    assert_eq!(
        net.sb.stats().duplicate_requests,
        0,
        "the server saw it once"
    );
    assert!(net.names("alice", "phone").contains(&"outgoing_accepted"));
}

#[test]
fn lost_event_leaves_a_gap_that_a_sync_repairs() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob"]);
    let first = net.invite("alice", "phone", &["bob"], None).unwrap();
    // bob's "incoming_ended canceled" is lost
    net.lose_messages.insert(("bob".into(), "phone".into()), 1);
    net.cancel("alice", "phone", &first).unwrap();
    assert!(net.dev("bob", "phone").session.is_ringing(&first));
    net.connect("carol", "phone");
    net.invite("carol", "phone", &["bob"], None).unwrap(); // arrives after the gap: buffered
    net.advance(Duration::from_secs(1));
    let dev = net.dev("bob", "phone");
    assert!(
        !dev.session.is_ringing(&first),
        "the sync ended the stale ring"
    );
    assert!(
        dev.app_events()
            .any(|e| matches!(e, AppEvent::Resynced { .. }))
    );
    assert_eq!(dev.session.last_seq(), Some(net.sb.last_seq(&uid("bob"))));
}

fn invite_bob() -> Command {
    Command::Invite(
        invitation_core::protocol::InviteRequest::new(
            vec![uid("bob")],
            invitation_core::CallType::Voice,
        )
        .with_timeout_s(Some(60)),
    )
}

/// The session owns a command from issue to answer or deadline: an invite
/// lost on the way, whose caller was told it timed out, is never sent again,
/// so it can never create a call afterwards.
#[test]
fn an_invite_given_up_on_is_never_sent_again() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob"]);
    net.lose_commands = 1;
    let id = net.command("alice", "phone", invite_bob());
    // The link drops and stays down past the command deadline (30 s).
    net.disconnect("alice", "phone");
    net.advance(Duration::from_secs(31));
    assert_eq!(
        net.result("alice", "phone", &id),
        Err(CommandError::TimedOut)
    );
    net.connect("alice", "phone");
    net.advance(Duration::from_secs(120));
    assert_eq!(net.sb.calls().count(), 0, "no call was ever created");
    assert!(!net.names("bob", "phone").contains(&"incoming_received"));
}

/// The server took the invite but every answer was lost until the caller
/// gave up: when the device learns of the call (resume), the session cancels
/// it on its own, and the app hears nothing of a call it was told failed.
#[test]
fn an_invite_given_up_on_that_the_server_took_is_canceled() {
    let mut net = Net::new();
    online(&mut net, &["alice", "bob"]);
    net.dev_mut("alice", "phone").deaf = true; // nothing reaches alice
    let id = net.command("alice", "phone", invite_bob());
    assert_eq!(net.sb.calls().count(), 1, "the server took it");
    assert!(net.names("bob", "phone").contains(&"incoming_received"));
    net.advance(Duration::from_secs(31));
    assert_eq!(
        net.result("alice", "phone", &id),
        Err(CommandError::TimedOut)
    );
    // Alice's link comes back and resumes: the call's events reach her.
    net.connect("alice", "phone");
    let call = net.sb.calls().next().unwrap().call_id().clone();
    assert_eq!(
        net.sb.call(&call).unwrap().outcome(&uid("bob")),
        Some(Reason::Canceled),
        "the session canceled the call it was told had failed"
    );
    assert!(net.names("bob", "phone").contains(&"incoming_canceled"));
    let alice_saw = net.names("alice", "phone");
    assert!(
        alice_saw.is_empty(),
        "alice's app hears nothing of the disowned call: {alice_saw:?}"
    );
}

/// Alice rings bob and cancels: the test network, the call, everything bob's
/// phone received (welcome and snapshot first) and its two events.
fn ring_then_cancel() -> (
    Net,
    invitation_core::CallId,
    Vec<invitation_core::protocol::ServerMessage>,
    Vec<invitation_core::protocol::ServerMessage>,
) {
    use invitation_core::protocol::ServerBody;
    let mut net = Net::new();
    online(&mut net, &["alice", "bob"]);
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    net.cancel("alice", "phone", &call).unwrap();
    let received = net.dev("bob", "phone").received.clone();
    let events: Vec<_> = received
        .iter()
        .filter(|m| matches!(m.body, ServerBody::Event { .. }))
        .cloned()
        .collect();
    assert_eq!(events.len(), 2, "ring, then its end: {received:?}");
    (net, call, received, events)
}

/// A session that was waiting for a `sync` when its link dropped must not
/// throw away what the next link brings: the events a resumed link replays
/// can overtake its `welcome` (reordering transports, the simulation's
/// delayed links), and once the `welcome` says "resumed" nobody sends them
/// again. (Found by the simulation's connection profile: a device stayed one
/// event behind for good.)
#[test]
fn events_that_overtake_a_resumed_welcome_after_a_pending_sync_are_kept() {
    use invitation_core::protocol::{ServerBody, ServerMessage};
    use invitation_core::{ClientSession, SessionConfig};
    let (net, call, received, events) = ring_then_cancel();
    let (welcome, sync) = (received[0].clone(), received[1].clone());

    let t0 = net.now;
    let mut s = ClientSession::new(uid("bob"), did("phone"), "b2", SessionConfig::default());
    s.handle_connected(t0, None);
    s.handle_message(t0, welcome.clone());
    s.handle_message(t0, sync);
    // The ring is lost; its end arrives: a gap, then a sync is asked for.
    s.handle_message(t0, events[1].clone());
    let t1 = t0 + Duration::from_secs(2);
    s.handle_timeout(t1);
    while s.poll_transmit().is_some() {}
    // The link drops before the sync comes; the next one resumes, and the
    // replayed events overtake the welcome.
    s.handle_disconnected(t1);
    s.handle_connected(t1, None);
    s.handle_message(t1, events[0].clone());
    s.handle_message(t1, events[1].clone());
    let ServerBody::Welcome { user, device, .. } = welcome.body else {
        panic!("{welcome:?}")
    };
    let seq = net.sb.last_seq(&uid("bob"));
    let resumed = ServerBody::Welcome {
        re: None,
        user,
        device,
        seq,
        resumed: true,
    };
    s.handle_message(t1, ServerMessage::new(resumed));
    assert_eq!(s.last_seq(), Some(seq), "in step with the server");
    assert!(!s.is_ringing(&call));
    assert_eq!(s.poll_timeout(), None, "nothing left to recover");
}

/// The owner's log of a call: started, ringing, each callee's outcome, the
/// hang-up, ended, each once, with the call id and the users (and devices)
/// involved (what the server prints at `info`).
#[test]
fn call_milestones_are_noticed_once_each() {
    use invitation_core::CallNotice;
    let mut net = Net::new();
    online(&mut net, &["alice", "bob"]);
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    let started: Vec<CallNotice> = std::iter::from_fn(|| net.sb.poll_notice()).collect();
    assert!(
        matches!(&started[..], [
            CallNotice::Started { call_id, caller, callees, device },
            CallNotice::Ringing { call_id: c2, caller: r2, callee },
            // The ringing phone's receipt (the session sends it at once).
            CallNotice::Delivered { call_id: c3, caller: r3, callee: e3, device: d3 },
        ] if *call_id == call && *caller == uid("alice") && *device == did("phone")
            && callees.iter().map(|u| &u.id).eq([&uid("bob")])
            && *c2 == call && *r2 == uid("alice") && *callee == uid("bob")
            && *c3 == call && *r3 == uid("alice") && *e3 == uid("bob") && *d3 == did("phone")),
        "{started:?}"
    );
    net.accept("bob", "phone", &call).unwrap();
    let accepted: Vec<CallNotice> = std::iter::from_fn(|| net.sb.poll_notice()).collect();
    assert_eq!(
        accepted,
        [CallNotice::Outcome {
            call_id: call.clone(),
            callee: uid("bob"),
            reason: Reason::Accepted,
            caller: uid("alice"),
            device: Some(did("phone")),
        }]
    );
    net.hang_up("alice", "phone", &call).unwrap();
    let ended: Vec<CallNotice> = std::iter::from_fn(|| net.sb.poll_notice()).collect();
    assert!(
        matches!(&ended[..], [
            CallNotice::HungUp { call_id, caller, user, device },
            CallNotice::Ended { call_id: c2, reason: Reason::HungUp, caller: r2, callees },
        ] if *call_id == call && *caller == uid("alice") && *user == uid("alice")
            && *device == did("phone") && *c2 == call && *r2 == uid("alice")
            && callees.len() == 1),
        "{ended:?}"
    );
    // A hang-up that changes nothing is no milestone.
    net.hang_up("alice", "phone", &call).unwrap();
    assert_eq!(net.sb.poll_notice(), None);
}

/// An offline callee rings when a device connects: noticed then, once; a
/// decline names the declining device; a timeout names none.
#[test]
fn ringing_on_connect_and_devices_in_outcomes_are_noticed() {
    use invitation_core::CallNotice;
    let mut net = Net::new();
    online(&mut net, &["alice"]);
    let call = net
        .invite("alice", "phone", &["bob", "carol"], None)
        .unwrap();
    let started: Vec<CallNotice> = std::iter::from_fn(|| net.sb.poll_notice()).collect();
    assert!(
        matches!(&started[..], [CallNotice::Started { .. }]),
        "{started:?}"
    );
    net.connect("bob", "tablet");
    let rung: Vec<CallNotice> = std::iter::from_fn(|| net.sb.poll_notice()).collect();
    assert_eq!(
        rung,
        [
            CallNotice::Ringing {
                call_id: call.clone(),
                caller: uid("alice"),
                callee: uid("bob"),
            },
            CallNotice::Delivered {
                call_id: call.clone(),
                caller: uid("alice"),
                callee: uid("bob"),
                device: did("tablet"),
            }
        ]
    );
    net.connect("bob", "phone");
    // Ringing once per callee; a receipt once per device.
    let phone: Vec<CallNotice> = std::iter::from_fn(|| net.sb.poll_notice()).collect();
    assert_eq!(
        phone,
        [CallNotice::Delivered {
            call_id: call.clone(),
            caller: uid("alice"),
            callee: uid("bob"),
            device: did("phone"),
        }],
        "once per callee"
    );
    net.decline("bob", "tablet", &call, false).unwrap();
    let declined: Vec<CallNotice> = std::iter::from_fn(|| net.sb.poll_notice()).collect();
    assert_eq!(
        declined,
        [CallNotice::Outcome {
            call_id: call.clone(),
            callee: uid("bob"),
            reason: Reason::Declined,
            caller: uid("alice"),
            device: Some(did("tablet")),
        }]
    );
}

/// The session's timers follow the link: retries run only while connected
/// (a dropped link stops them, the next one restarts them), command
/// deadlines run regardless, timers due together fire in issue order (past
/// the ninth command too, where request ids stop sorting by issue), and a
/// zero backoff does not spin.
#[test]
fn session_timers_follow_the_link_and_fire_in_issue_order() {
    use invitation_core::protocol::ClientBody;
    use invitation_core::{CallId, ClientSession, SessionConfig};
    let s_ = Duration::from_secs;
    let t0 = Net::new().now;
    let mut s = ClientSession::new(uid("alice"), did("phone"), "t", SessionConfig::default());
    s.handle_connected(t0, None);
    let sent = |s: &mut ClientSession| {
        std::iter::from_fn(|| s.poll_transmit())
            .filter(|m| matches!(m.body, ClientBody::Command(_)))
            .map(|m| m.id)
            .collect::<Vec<RequestId>>()
    };
    assert!(sent(&mut s).is_empty(), "only the hello so far");
    let ids: Vec<RequestId> = (0..12)
        .map(|i| {
            let call_id = CallId::new(format!("c{i}")).unwrap();
            s.command(
                t0,
                Command::Cancel {
                    call_id,
                    custom_data: None,
                },
            )
        })
        .collect();
    assert_eq!(sent(&mut s), ids);
    assert_eq!(s.poll_timeout(), Some(t0 + s_(2)), "first retry");
    s.handle_timeout(t0 + s_(2));
    assert_eq!(sent(&mut s), ids, "resent together, in issue order");
    assert_eq!(s.poll_timeout(), Some(t0 + s_(6)), "backoff doubled");

    s.handle_disconnected(t0 + s_(3));
    assert_eq!(
        s.poll_timeout(),
        Some(t0 + s_(30)),
        "only the deadlines run"
    );
    s.handle_timeout(t0 + s_(10));
    assert!(sent(&mut s).is_empty(), "no retry while the link is down");

    s.handle_connected(t0 + s_(10), None);
    assert_eq!(sent(&mut s), ids, "resent on the new link, in issue order");
    assert_eq!(s.poll_timeout(), Some(t0 + s_(12)), "backoff restarted");

    s.handle_timeout(t0 + s_(30));
    assert!(sent(&mut s).is_empty(), "given up, so not resent");
    let done: Vec<_> = std::iter::from_fn(|| s.poll_completion()).collect();
    assert_eq!(done.len(), ids.len());
    for ((id, result), want) in done.iter().zip(&ids) {
        assert_eq!(id, want, "deadlines due together fire in issue order");
        assert_eq!(result, &Err(CommandError::TimedOut));
    }
    assert_eq!(s.poll_timeout(), None, "nothing outstanding");

    let mut zero = SessionConfig::default();
    zero.command_retry = Duration::ZERO;
    zero.command_retry_max = Duration::ZERO;
    let mut s = ClientSession::new(uid("alice"), did("phone"), "z", zero);
    s.handle_connected(t0, None);
    let id = s.command(
        t0,
        Command::HangUp {
            call_id: CallId::new("c").unwrap(),
            custom_data: None,
        },
    );
    assert_eq!(sent(&mut s), std::slice::from_ref(&id));
    s.handle_timeout(t0);
    assert_eq!(sent(&mut s), [id], "one retry per wake-up, no spin");
}

/// On a link that reorders, an old snapshot (the answer to an earlier
/// `sync`, overtaken) must not rewind the device, and events that overtake
/// an awaited snapshot must not be lost.
#[test]
fn a_stale_sync_is_ignored_and_events_overtaking_a_sync_are_kept() {
    use invitation_core::protocol::{ServerBody, ServerMessage, SyncBody};
    use invitation_core::{ClientSession, SessionConfig};
    let (net, call, received, events) = ring_then_cancel();
    let welcome = received[0].clone();
    let seq = |m: &ServerMessage| match m.body {
        ServerBody::Event { seq, .. } => seq,
        _ => unreachable!(),
    };
    let empty =
        |s: u64| ServerMessage::new(ServerBody::Sync(SyncBody::new(None, s, vec![], vec![])));

    // 1. Events that overtake the awaited snapshot are kept.
    let t0 = net.now;
    let mut s = ClientSession::new(uid("bob"), did("phone"), "b3", SessionConfig::default());
    s.handle_connected(t0, None);
    s.handle_message(t0, welcome.clone()); // not resumed: a sync follows
    s.handle_message(t0, events[0].clone()); // overtakes the snapshot
    s.handle_message(t0, events[1].clone());
    s.handle_message(t0, empty(seq(&events[0]) - 1));
    assert_eq!(
        s.last_seq(),
        Some(seq(&events[1])),
        "both events applied after the sync"
    );
    assert!(!s.is_ringing(&call), "the ring and its end both happened");
    assert_eq!(s.poll_timeout(), None, "nothing left to recover");

    // 2. An old snapshot arriving later changes nothing.
    s.handle_message(t0, empty(seq(&events[0]) - 1));
    assert_eq!(s.last_seq(), Some(seq(&events[1])), "not rewound");
    assert_eq!(s.poll_timeout(), None);
}
