//! Calls an app's backend starts and ends on a user's behalf
//! (`Switchboard::handle_backend_command`, the server's HTTP API): every
//! device of the caller hears of the call through the caller's events, the
//! callee rings as for any invite, no device of the caller leaving makes
//! the caller "gone", and what only a device can do stays a device's.

mod harness;

use std::time::Duration;

use harness::{Net, uid};
use invitation_core::protocol::{Command, InviteRequest, ReplyResult};
use invitation_core::{BACKEND_DEVICE, CallId, CallType, CommandError, Reason, RequestId, User};

fn rid(s: &str) -> RequestId {
    RequestId::new(s).unwrap()
}

fn invite(callees: &[&str]) -> Command {
    Command::Invite(
        InviteRequest::new(callees.iter().map(|c| uid(c)).collect(), CallType::Video)
            .with_timeout_s(Some(30)),
    )
}

/// The backend invites `callees` for alice; the call id.
fn backend_invite(net: &mut Net, request: &str, callees: &[&str]) -> CallId {
    let now = net.now;
    let r = net.sb.handle_backend_command(
        now,
        User::named("alice", "Alice"),
        rid(request),
        invite(callees),
    );
    net.pump();
    match r {
        Ok(ReplyResult::Invited { call_id, .. }) => call_id,
        other => panic!("{other:?}"),
    }
}

/// Event types (and the call they name) a device received since `mark`.
fn events(net: &Net, user: &str, device: &str, mark: usize) -> Vec<(String, String)> {
    net.wire_events(user, device, mark)
        .into_iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_backend_call_rings_the_callee_and_every_caller_device_follows_it() {
    let mut net = Net::new();
    net.connect("alice", "phone");
    net.connect("alice", "laptop");
    net.connect("bob", "phone");
    let (a, l, b) = (
        net.mark("alice", "phone"),
        net.mark("alice", "laptop"),
        net.mark("bob", "phone"),
    );
    let call = backend_invite(&mut net, "api-1", &["bob"]);

    // Bob rings; alice's devices see the outgoing call, made by the backend.
    let bob = net.wire_events("bob", "phone", b);
    assert_eq!(bob[0]["type"], "incoming_call");
    // The name her devices' tokens gave her wins over the backend's.
    assert_eq!(bob[0]["caller"]["name"], "ALICE");
    for (device, mark) in [("phone", a), ("laptop", l)] {
        let seen = net.wire_events("alice", device, mark);
        assert_eq!(seen[0]["type"], "outgoing_call", "{seen:?}");
        assert_eq!(seen[0]["call_id"], call.as_str());
        assert_eq!(seen[0]["device"], BACKEND_DEVICE);
        assert_eq!(seen[1]["type"], "callee_ringing");
    }

    // Both of alice's devices go away: the call rings on (nobody is
    // "gone": the backend made it), until bob accepts.
    net.disconnect("alice", "phone");
    net.disconnect("alice", "laptop");
    net.advance(Duration::from_secs(20)); // past the 15 s caller-gone grace
    assert!(net.sb.call(&call).is_some_and(|c| c.ended().is_none()));
    let mark = net.mark("bob", "phone");
    net.accept("bob", "phone", &call).unwrap();
    assert_eq!(
        events(&net, "bob", "phone", mark),
        [("incoming_ended".to_owned(), "accepted".to_owned())]
    );

    // A device of alice's comes back, learns the outcome, and hangs up.
    net.connect("alice", "phone");
    net.hang_up("alice", "phone", &call).unwrap();
    let record = net.records.last().expect("a record");
    assert_eq!(record.call_id, call);
    assert_eq!(record.caller_device.as_str(), BACKEND_DEVICE);
    assert_eq!(record.reason, Reason::HungUp);
}

#[test]
fn the_backend_cancels_and_ends_its_calls_and_a_device_may_too() {
    let mut net = Net::new();
    net.connect("alice", "phone");
    net.connect("bob", "phone");
    let call = backend_invite(&mut net, "api-1", &["bob"]);
    let (a, b) = (net.mark("alice", "phone"), net.mark("bob", "phone"));
    let now = net.now;
    let r = net.sb.handle_backend_command(
        now,
        User::named("alice", "Alice"),
        rid("api-2"),
        Command::cancel(call.clone()),
    );
    net.pump();
    assert_eq!(r, Ok(ReplyResult::Done));
    assert_eq!(
        events(&net, "bob", "phone", b),
        [("incoming_ended".to_owned(), "canceled".to_owned())]
    );
    assert_eq!(
        events(&net, "alice", "phone", a),
        [
            ("callee_outcome".to_owned(), "canceled".to_owned()),
            ("call_ended".to_owned(), "canceled".to_owned())
        ]
    );

    // A second call: alice's phone cancels the backend's invitation.
    let call = backend_invite(&mut net, "api-3", &["bob"]);
    net.cancel("alice", "phone", &call).unwrap();
    assert_eq!(
        net.sb.call(&call).and_then(|c| c.ended()),
        Some(Reason::Canceled)
    );
}

#[test]
fn what_only_a_device_can_do_is_wrong_role_and_changes_nothing() {
    let mut net = Net::new();
    net.connect("alice", "phone");
    net.connect("bob", "phone");
    let now = net.now;
    let bobs = net
        .sb
        .handle_command(
            now,
            net.dev("bob", "phone").conn.unwrap(),
            rid("b1"),
            invite(&["carol"]),
        )
        .unwrap();
    let ReplyResult::Invited { call_id, .. } = bobs else {
        panic!("{bobs:?}")
    };
    net.pump();
    let before = net.sb.stats().clone();
    let carol = User::named("carol", "Carol");
    for command in [
        Command::accept(call_id.clone()),
        Command::decline(call_id.clone(), false),
        Command::Join {
            call_id: call_id.clone(),
        },
        Command::Received {
            call_id: call_id.clone(),
        },
    ] {
        let r = net
            .sb
            .handle_backend_command(now, carol.clone(), rid("x"), command);
        assert_eq!(r, Err(CommandError::WrongRole));
    }
    assert!(net.sb.poll_output().is_none(), "nothing was sent");
    assert_eq!(net.sb.stats().invitations, before.invitations);
    assert!(net.sb.call(&call_id).is_some_and(|c| c.ended().is_none()));
}

#[test]
fn a_retried_backend_command_is_answered_once() {
    let mut net = Net::new();
    net.connect("bob", "phone");
    let first = backend_invite(&mut net, "api-1", &["bob"]);
    let dups = net.sb.stats().duplicate_requests;
    let again = backend_invite(&mut net, "api-1", &["bob"]);
    assert_eq!(first, again);
    assert_eq!(net.sb.stats().duplicate_requests, dups + 1);
    assert_eq!(net.sb.stats().invitations, 1, "one call");
}

/// The backend may call for a user who never connected; an invite refused
/// for such a user leaves nothing behind once the retention passes.
#[test]
fn users_made_for_the_backend_are_forgotten_like_any_other() {
    let mut net = Net::new();
    let users = net.sb.sizes().0;
    let now = net.now;
    let r = net.sb.handle_backend_command(
        now,
        User::named("dora", "Dora"),
        rid("api-1"),
        invite(&["dora"]), // herself: refused
    );
    assert!(
        matches!(r, Err(CommandError::Invalid(_))),
        "{r:?}: a caller may not call herself"
    );
    assert_eq!(net.sb.sizes().0, users + 1);
    net.advance(Duration::from_secs(601)); // the retention window
    assert_eq!(net.sb.sizes().0, users, "forgotten");
}

/// A callee who is ringing the caller right now is answered by the caller's
/// device, not by the backend: `caller_busy`, and the ring goes on.
#[test]
fn no_glare_merge_for_the_backend() {
    let mut net = Net::new();
    net.connect("alice", "phone");
    net.connect("bob", "phone");
    let bobs = net.invite("bob", "phone", &["alice"], None).unwrap();
    let now = net.now;
    let r = net.sb.handle_backend_command(
        now,
        User::named("alice", "Alice"),
        rid("api-1"),
        invite(&["bob"]),
    );
    assert_eq!(r, Err(CommandError::CallerBusy));
    assert!(net.sb.call(&bobs).is_some_and(|c| c.is_ringing()));
}
