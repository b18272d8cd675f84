//! Custom data on every action and device receipts, switchboard + client
//! sessions through the test network: which app event carries which
//! action's data, on every device, in order; receipts once per device,
//! bounded, hidden with callee status, and never for a call that does not
//! ring on the device.

mod harness;

use std::time::Duration;

use harness::{Net, did, uid};
use invitation_core::protocol::{Command, Delivery, InitialStatus, ReplyResult, ServerBody};
use invitation_core::{
    AppEvent, CallId, CommandError, CustomData, OfflinePolicy, SwitchboardConfig, ValidationError,
};

fn data(s: &str) -> CustomData {
    CustomData::new(s).unwrap()
}

/// Every app event of a device (connection and resync notices left out):
/// its name and the data it carries.
fn seen(net: &Net, user: &str, device: &str) -> Vec<(&'static str, Option<String>)> {
    net.dev(user, device)
        .app_events()
        .map(|e| {
            (
                harness::event_name(e),
                e.custom_data().map(|d| d.as_str().to_owned()),
            )
        })
        .filter(|(n, _)| *n != "connection" && *n != "resynced")
        .collect()
}

fn s(x: &str) -> Option<String> {
    Some(x.to_owned())
}

/// An invite without data from `user`'s phone; the call id.
fn invite_plain(net: &mut Net, user: &str, callees: &[&str]) -> CallId {
    let req = invitation_core::protocol::InviteRequest::new(
        callees.iter().map(|c| uid(c)).collect(),
        invitation_core::CallType::Voice,
    );
    let id = net.command(user, "phone", Command::Invite(req));
    match net.result(user, "phone", &id) {
        Ok(ReplyResult::Invited { call_id, .. }) => call_id,
        other => panic!("{other:?}"),
    }
}

const ROOM: &str = "{\"room\":1}";

#[test]
fn accept_and_hang_up_data_reach_every_device_in_order() {
    let mut net = Net::new();
    for (u, d) in [
        ("alice", "phone"),
        ("alice", "tablet"),
        ("bob", "phone"),
        ("bob", "laptop"),
    ] {
        net.connect(u, d);
    }
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    let accept = Command::accept(call.clone()).with_custom_data(Some(data("A")));
    assert_eq!(net.act("bob", "phone", accept), Ok(ReplyResult::Done));
    let hang_up = Command::hang_up(call.clone()).with_custom_data(Some(data("H")));
    assert_eq!(net.act("bob", "phone", hang_up), Ok(ReplyResult::Done));

    assert_eq!(
        seen(&net, "alice", "phone"),
        [
            ("callee_ringing", None),
            ("callee_delivered", None),
            ("callee_delivered", None),
            ("outgoing_accepted", s("A")),
            ("call_ended", s("H")),
        ]
    );
    assert_eq!(
        seen(&net, "alice", "tablet"),
        [
            ("outgoing_started", None),
            ("callee_ringing", None),
            ("callee_delivered", None),
            ("callee_delivered", None),
            ("callee_outcome", s("A")),
            ("call_ended", s("H")),
        ]
    );
    assert_eq!(
        seen(&net, "bob", "phone"),
        [
            ("incoming_received", s(ROOM)),
            ("accept_pressed", None),
            ("call_ended", s("H")),
        ]
    );
    assert_eq!(
        seen(&net, "bob", "laptop"),
        [
            ("incoming_received", s(ROOM)),
            ("answered_elsewhere", s("A")),
            ("incoming_canceled", s("A")),
        ]
    );
    // Which devices delivered, per device and in order (the network pumps
    // bob's laptop before his phone).
    let delivered: Vec<(String, String)> = net
        .dev("alice", "phone")
        .app_events()
        .filter_map(|e| match e {
            AppEvent::CalleeDelivered {
                call_id,
                callee,
                device,
                ..
            } if *call_id == call => Some((callee.to_string(), device.to_string())),
            _ => None,
        })
        .collect();
    assert_eq!(
        delivered,
        [
            ("bob".to_owned(), "laptop".to_owned()),
            ("bob".to_owned(), "phone".to_owned())
        ]
    );
}

#[test]
fn decline_busy_and_cancel_data() {
    let mut net = Net::new();
    for (u, d) in [
        ("alice", "phone"),
        ("alice", "tablet"),
        ("bob", "phone"),
        ("bob", "laptop"),
    ] {
        net.connect(u, d);
    }
    let declined = net.invite("alice", "phone", &["bob"], None).unwrap();
    let decline = Command::decline(declined.clone(), false).with_custom_data(Some(data("D")));
    net.act("bob", "laptop", decline).unwrap();
    let busy = net.invite("alice", "phone", &["bob"], None).unwrap();
    let decline = Command::decline(busy.clone(), true).with_custom_data(Some(data("B")));
    net.act("bob", "phone", decline).unwrap();
    let canceled = net.invite("alice", "phone", &["bob"], None).unwrap();
    let cancel = Command::cancel(canceled.clone()).with_custom_data(Some(data("C")));
    net.act("alice", "phone", cancel).unwrap();

    let ring = [
        ("callee_ringing", None),
        ("callee_delivered", None),
        ("callee_delivered", None),
    ];
    let mut want = Vec::new();
    want.extend(ring.clone());
    want.extend([("outgoing_declined", s("D")), ("call_ended", None)]);
    want.extend(ring.clone());
    want.extend([("outgoing_busy", s("B")), ("call_ended", None)]);
    want.extend(ring.clone());
    // The cancel's outcome is no callee's answer: no data; the call's end
    // carries the cancel's.
    want.extend([
        ("cancel_pressed", None),
        ("callee_outcome", None),
        ("call_ended", s("C")),
    ]);
    assert_eq!(seen(&net, "alice", "phone"), want);
    assert_eq!(
        seen(&net, "bob", "phone"),
        [
            ("incoming_received", s(ROOM)),
            ("declined_elsewhere", s("D")),
            ("incoming_canceled", s("D")),
            ("incoming_received", s(ROOM)),
            ("decline_pressed", None),
            ("incoming_received", s(ROOM)),
            ("incoming_canceled", s("C")),
        ]
    );
    assert_eq!(
        seen(&net, "bob", "laptop"),
        [
            ("incoming_received", s(ROOM)),
            ("decline_pressed", None),
            ("incoming_received", s(ROOM)),
            ("declined_elsewhere", s("B")),
            ("incoming_canceled", s("B")),
            ("incoming_received", s(ROOM)),
            ("incoming_canceled", s("C")),
        ]
    );
}

/// The caller hangs up a group call with data: the callee in the call
/// gets it with `call_ended`, the one still ringing with its cancel.
/// Timeouts keep the invite's data on the caller's side only.
#[test]
fn caller_hang_up_data_and_timeout_data() {
    let mut net = Net::new();
    for u in ["alice", "bob", "carol"] {
        net.connect(u, "phone");
    }
    let call = net
        .invite("alice", "phone", &["bob", "carol"], None)
        .unwrap();
    net.accept("bob", "phone", &call).unwrap();
    let hang_up = Command::hang_up(call.clone()).with_custom_data(Some(data("bye all")));
    net.act("alice", "phone", hang_up).unwrap();
    assert_eq!(
        seen(&net, "bob", "phone"),
        [
            ("incoming_received", s(ROOM)),
            ("accept_pressed", None),
            // Someone in an accepted call hears how another invitee's ring
            // ended (carol: canceled, no data: the server decided it).
            ("callee_outcome", None),
            ("call_ended", s("bye all")),
        ]
    );
    assert_eq!(
        seen(&net, "carol", "phone"),
        [
            ("incoming_received", s(ROOM)),
            ("incoming_canceled", s("bye all"))
        ]
    );
    assert_eq!(
        seen(&net, "alice", "phone").last(),
        Some(&("call_ended", s("bye all")))
    );

    let timed_out = net.invite("alice", "phone", &["bob"], Some(10)).unwrap();
    net.advance(Duration::from_secs(10));
    let alice = seen(&net, "alice", "phone");
    assert_eq!(
        alice[alice.len() - 2..],
        [("outgoing_timeout", s(ROOM)), ("call_ended", None)],
        "{timed_out}: the caller's own invite data, kept by its client"
    );
    assert_eq!(
        seen(&net, "bob", "phone").last(),
        Some(&("incoming_timeout", None))
    );
}

/// Data is checked like an invite's: too long is refused with the same
/// typed error and changes nothing; empty is no data.
#[test]
fn action_data_is_validated_like_an_invites() {
    let mut config = SwitchboardConfig::default();
    config.max_custom_data = 4;
    let mut net = Net::with_config(config);
    net.connect("alice", "phone");
    net.connect("bob", "phone");
    let call = invite_plain(&mut net, "alice", &["bob"]);
    let long = Command::accept(call.clone()).with_custom_data(Some(data("12345")));
    assert_eq!(
        net.direct("bob", "phone", long),
        Err(CommandError::Invalid(ValidationError::TooLong {
            field: "custom_data",
            max: 4,
            len: 5
        }))
    );
    assert!(
        net.dev("bob", "phone").session.is_ringing(&call),
        "nothing changed"
    );
    let empty = Command::decline(call.clone(), false).with_custom_data(Some(data("")));
    net.act("bob", "phone", empty).unwrap();
    assert_eq!(
        seen(&net, "alice", "phone")[2..],
        [("outgoing_declined", None), ("call_ended", None)]
    );
}

/// A device that missed the end resyncs and gets the same data; a caller
/// device that joins late learns each callee's answer data and the
/// devices that delivered from the snapshot.
#[test]
fn snapshots_keep_the_data_and_the_deliveries() {
    let mut config = SwitchboardConfig::default();
    config.resume_buffer = 1; // two missed events: a full sync
    let mut net = Net::with_config(config);
    for u in ["alice", "bob", "carol"] {
        net.connect(u, "phone");
    }
    let call = net
        .invite("alice", "phone", &["bob", "carol"], None)
        .unwrap();
    let accept = Command::accept(call.clone()).with_custom_data(Some(data("A")));
    net.act("bob", "phone", accept).unwrap();

    // A new caller device: the snapshot tells it everything so far.
    net.connect("alice", "laptop");
    assert_eq!(
        seen(&net, "alice", "laptop"),
        [
            ("outgoing_started", None),
            ("callee_outcome", s("A")),
            ("callee_delivered", None),
            ("callee_delivered", None),
        ]
    );
    let snap = net
        .dev("alice", "laptop")
        .received
        .iter()
        .find_map(|m| match &m.body {
            ServerBody::Sync(s) => Some(s.calls[0].clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        snap.delivered,
        [
            Delivery::new(uid("bob"), did("phone")),
            Delivery::new(uid("carol"), did("phone"))
        ]
    );
    assert_eq!(snap.outcomes[0].custom_data, Some(data("A")));

    // bob misses alice's hang-up and a new call: he resyncs.
    net.dev_mut("bob", "phone").deaf = true;
    let hang_up = Command::hang_up(call.clone()).with_custom_data(Some(data("H")));
    net.act("alice", "phone", hang_up).unwrap();
    let again = net.invite("alice", "phone", &["bob"], None).unwrap();
    net.disconnect("bob", "phone");
    net.connect("bob", "phone");
    let bob = seen(&net, "bob", "phone");
    assert_eq!(
        bob[bob.len() - 2..],
        [("call_ended", s("H")), ("incoming_received", s(ROOM))]
    );
    // The resynced ring is acknowledged too.
    assert!(net.dev("alice", "phone").app_events().any(|e| matches!(
        e,
        AppEvent::CalleeDelivered { call_id, .. } if *call_id == again
    )));
}

// ----- receipts ---------------------------------------------------------

fn delivered(net: &Net, user: &str, device: &str, call: &CallId) -> Vec<String> {
    net.dev(user, device)
        .app_events()
        .filter_map(|e| match e {
            AppEvent::CalleeDelivered {
                call_id,
                callee,
                device,
                ..
            } if call_id == call => Some(format!("{callee}/{device}")),
            _ => None,
        })
        .collect()
}

/// A device whose app does not acknowledge (switched off here, as a frozen
/// app would) is "ringing" and never "delivered"; one that does is both.
#[test]
fn a_silent_device_rings_but_is_not_delivered() {
    let mut net = Net::new();
    net.connect("alice", "phone");
    net.connect("bob", "phone");
    net.session_config.send_receipts = false;
    net.connect("carol", "phone");
    let call = net
        .invite("alice", "phone", &["bob", "carol"], None)
        .unwrap();
    let names = net.names("alice", "phone");
    assert_eq!(
        names,
        ["callee_ringing", "callee_ringing", "callee_delivered"]
    );
    assert_eq!(delivered(&net, "alice", "phone", &call), ["bob/phone"]);
    assert!(net.dev("carol", "phone").session.is_ringing(&call));
}

/// Duplicated receipts (a link that duplicates, a repeated direct one)
/// give one event; the switchboard counts the ignored ones.
#[test]
fn a_duplicated_receipt_gives_one_event() {
    let mut net = Net::new();
    net.connect("alice", "phone");
    net.connect("bob", "phone");
    net.dup_commands = 2;
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    net.dup_commands = 0;
    assert_eq!(delivered(&net, "alice", "phone", &call), ["bob/phone"]);
    // The connection machine stopped the copies; straight at the
    // switchboard, a repeat is ignored too.
    let conn = net.dev("bob", "phone").conn.unwrap();
    let before = net.sb.stats().ignored_receipts;
    net.sb.handle_receipt(net.now, conn, &call);
    net.pump();
    assert_eq!(net.sb.stats().ignored_receipts, before + 1);
    assert_eq!(delivered(&net, "alice", "phone", &call), ["bob/phone"]);
}

/// A receipt from someone not rung for the call, for an unknown call, or
/// from the caller: nothing for anyone.
#[test]
fn a_foreign_receipt_changes_nothing() {
    let mut net = Net::new();
    net.session_config.send_receipts = false;
    for u in ["alice", "bob", "carol"] {
        net.connect(u, "phone");
    }
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    let before: Vec<usize> = ["alice", "bob", "carol"]
        .iter()
        .map(|u| net.dev(u, "phone").received.len())
        .collect();
    for user in ["carol", "alice"] {
        let conn = net.dev(user, "phone").conn.unwrap();
        net.sb.handle_receipt(net.now, conn, &call);
        net.sb
            .handle_receipt(net.now, conn, &CallId::new("c-unknown").unwrap());
    }
    net.pump();
    let after: Vec<usize> = ["alice", "bob", "carol"]
        .iter()
        .map(|u| net.dev(u, "phone").received.len())
        .collect();
    assert_eq!(before, after, "no message to anyone");
    assert_eq!(net.sb.stats().ignored_receipts, 4);
}

/// What a callee can make the switchboard hold is bounded: one receipt per
/// device, at most `max_receipts_per_callee` per callee however many
/// device ids come and go.
#[test]
fn receipts_per_callee_are_bounded() {
    let mut config = SwitchboardConfig::default();
    config.max_receipts_per_callee = 2;
    let mut net = Net::with_config(config);
    net.connect("alice", "phone");
    let call = invite_plain(&mut net, "alice", &["bob"]);
    for d in ["d1", "d2", "d3", "d4"] {
        net.connect("bob", d);
        net.disconnect("bob", d);
    }
    assert_eq!(
        delivered(&net, "alice", "phone", &call),
        ["bob/d1", "bob/d2"]
    );
    assert_eq!(net.sb.stats().ignored_receipts, 2);
}

/// Hidden callee status hides receipts too (they say a device is online).
#[test]
fn hidden_callee_status_hides_receipts() {
    let mut config = SwitchboardConfig::default();
    config.hide_callee_status = true;
    let mut net = Net::with_config(config);
    net.connect("alice", "phone");
    net.connect("bob", "phone");
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    assert_eq!(net.names("alice", "phone"), Vec::<&str>::new());
    net.connect("alice", "laptop");
    let snap = net
        .dev("alice", "laptop")
        .received
        .iter()
        .find_map(|m| match &m.body {
            ServerBody::Sync(s) => Some(s.calls.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(snap[0].call_id, call);
    assert!(snap[0].delivered.is_empty());
}

/// An invitation held for an offline callee is reported offline; a device
/// that connects with enough ring left rings and acknowledges; one that
/// connects too late to ring does not acknowledge.
#[test]
fn offline_holds_ring_on_connect_and_only_a_ringing_device_acknowledges() {
    let mut config = SwitchboardConfig::default();
    config.offline_policy = OfflinePolicy::Hold;
    let mut net = Net::with_config(config);
    net.connect("alice", "phone");
    let id = net.command(
        "alice",
        "phone",
        Command::Invite(
            invitation_core::protocol::InviteRequest::new(
                vec![uid("bob"), uid("carol")],
                invitation_core::CallType::Voice,
            )
            .with_timeout_s(Some(30)),
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
    assert!(callees.iter().all(|c| c.status == InitialStatus::Offline));
    assert_eq!(net.names("alice", "phone"), Vec::<&str>::new());
    net.connect("bob", "phone"); // 30 s left: rings
    net.advance(Duration::from_secs(27));
    net.connect("carol", "phone"); // 3 s left: too little to ring
    assert!(!net.dev("carol", "phone").session.is_ringing(&call));
    assert_eq!(
        net.names("alice", "phone"),
        ["callee_ringing", "callee_delivered", "callee_ringing"]
    );
    assert_eq!(delivered(&net, "alice", "phone", &call), ["bob/phone"]);
}

/// A device that rang, missed the accept of another device of its user and
/// resyncs still learns the accept's data.
#[test]
fn a_resynced_device_learns_the_data_of_an_accept_elsewhere() {
    let mut config = SwitchboardConfig::default();
    config.resume_buffer = 1; // two missed events: a full sync
    config.busy_policy = invitation_core::BusyPolicy::RingAnyway;
    let mut net = Net::with_config(config);
    for (u, d) in [
        ("alice", "phone"),
        ("bob", "phone"),
        ("bob", "laptop"),
        ("dave", "phone"),
    ] {
        net.connect(u, d);
    }
    let call = net.invite("alice", "phone", &["bob"], None).unwrap();
    net.dev_mut("bob", "laptop").deaf = true;
    let accept = Command::accept(call.clone()).with_custom_data(Some(data("A")));
    net.act("bob", "phone", accept).unwrap();
    net.invite("dave", "phone", &["bob"], None).unwrap(); // a second missed event
    net.disconnect("bob", "laptop");
    net.connect("bob", "laptop");
    let laptop = seen(&net, "bob", "laptop");
    assert_eq!(
        laptop[..3],
        [
            ("incoming_received", s(ROOM)),
            ("answered_elsewhere", s("A")),
            ("incoming_canceled", s("A")),
        ],
        "{laptop:?}"
    );
}
