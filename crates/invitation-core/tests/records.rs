//! Call records: one per ended call, with its exact contents, for every way
//! a call ends. Driven straight on the switchboard (every record is taken
//! right after the input that produced it, with that input's number).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use invitation_core::protocol::{Command, InviteRequest, ReplyResult};
use invitation_core::{
    BusyPolicy, CallId, CallRecord, CallType, CalleeRecord, CommandError, ConnId, CustomData,
    DeviceId, OfflinePolicy, Reason, SequentialCallIds, Switchboard, SwitchboardConfig, User,
    UserId,
};
use serde_json::json;

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn did(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A switchboard, its clock, and every record taken so far with the number
/// of the input that produced it.
struct Bench {
    sb: Switchboard,
    t0: Instant,
    now: Instant,
    conns: BTreeMap<(String, String), ConnId>,
    next_conn: u64,
    inputs: usize,
    records: Vec<(usize, CallRecord)>,
    requests: u64,
}

impl Bench {
    /// With records on.
    fn new(mut config: SwitchboardConfig) -> Self {
        #[allow(clippy::disallowed_methods)] // the origin of test time
        let t0 = Instant::now();
        config.call_records = true;
        Self {
            sb: Switchboard::new(config, SequentialCallIds::default()),
            t0,
            now: t0,
            conns: BTreeMap::new(),
            next_conn: 1,
            inputs: 0,
            records: Vec::new(),
            requests: 0,
        }
    }

    /// After each input: outputs dropped, records taken.
    fn drain(&mut self) {
        self.inputs += 1;
        while self.sb.poll_output().is_some() {}
        while let Some(r) = self.sb.poll_record() {
            self.records.push((self.inputs, r));
        }
    }

    fn at(&self, s: u64) -> Instant {
        self.t0 + secs(s)
    }

    fn connect(&mut self, user: &str, device: &str) {
        let conn = ConnId::new(self.next_conn);
        self.next_conn += 1;
        self.conns
            .insert((user.to_owned(), device.to_owned()), conn);
        let u = User::named(user, &user.to_uppercase());
        self.sb.connect(self.now, conn, u, did(device), None, None);
        self.drain();
    }

    fn disconnect(&mut self, user: &str, device: &str) {
        let conn = self.conns[&(user.to_owned(), device.to_owned())];
        self.sb.disconnect(self.now, conn);
        self.drain();
    }

    fn cmd(
        &mut self,
        user: &str,
        device: &str,
        command: Command,
    ) -> Result<ReplyResult, CommandError> {
        let conn = self.conns[&(user.to_owned(), device.to_owned())];
        self.requests += 1;
        let id = invitation_core::RequestId::new(format!("r{}", self.requests)).unwrap();
        let r = self.sb.handle_command(self.now, conn, id, command);
        self.drain();
        r
    }

    fn invite(&mut self, user: &str, device: &str, callees: &[&str], data: Option<&str>) -> CallId {
        let req = InviteRequest::new(callees.iter().map(|c| uid(c)).collect(), CallType::Video)
            .with_custom_data(data.map(|d| CustomData::new(d).unwrap()));
        match self.cmd(user, device, Command::Invite(req)) {
            Ok(ReplyResult::Invited { call_id, .. }) => call_id,
            other => panic!("invite: {other:?}"),
        }
    }

    fn ok(&mut self, user: &str, device: &str, command: Command) {
        let r = self.cmd(user, device, command.clone());
        assert_eq!(r, Ok(ReplyResult::Done), "{user}/{device} {command:?}");
    }

    /// Moves the clock to `t0 + s`, firing every timer on the way at its
    /// instant.
    fn until(&mut self, s: u64) {
        let end = self.at(s);
        while let Some(t) = self.sb.poll_timeout().filter(|t| *t <= end) {
            self.now = self.now.max(t);
            self.sb.handle_timeout(self.now);
            self.drain();
        }
        self.now = end;
        self.sb.handle_timeout(end);
        self.drain();
    }

    /// The records taken since the last call, without their input numbers.
    fn take(&mut self) -> Vec<CallRecord> {
        std::mem::take(&mut self.records)
            .into_iter()
            .map(|(_, r)| r)
            .collect()
    }

    /// A record as the switchboard should have made it (times in seconds
    /// from the start).
    #[allow(clippy::too_many_arguments)]
    fn expect(
        &self,
        call: &CallId,
        caller: (&str, &str),
        data: Option<&str>,
        callees: Vec<CalleeRecord>,
        invited: u64,
        answered: Option<u64>,
        ended: u64,
        reason: Reason,
    ) -> CallRecord {
        let mut r = CallRecord::new(
            call.clone(),
            uid(caller.0),
            did(caller.1),
            CallType::Video,
            self.at(invited),
            self.at(ended),
            reason,
        );
        r.custom_data = data.map(|d| CustomData::new(d).unwrap());
        r.callees = callees;
        r.answered_at = answered.map(|a| self.at(a));
        r.duration = answered.map_or(Duration::ZERO, |a| secs(ended - a));
        r
    }
}

fn callee(user: &str, outcome: Reason, device: Option<&str>, added: bool) -> CalleeRecord {
    let mut c = CalleeRecord::new(uid(user), outcome);
    c.device = device.map(did);
    c.added = added;
    c
}

fn online(b: &mut Bench, users: &[&str]) {
    for u in users {
        b.connect(u, "phone");
    }
}

#[test]
fn declined_call_has_one_record_made_by_the_decline() {
    let mut b = Bench::new(SwitchboardConfig::default());
    online(&mut b, &["alice", "bob"]);
    b.connect("bob", "tablet");
    b.until(1);
    let call = b.invite("alice", "phone", &["bob"], Some("{\"room\":7}"));
    assert!(b.records.is_empty(), "no record while it rings");
    b.until(4);
    b.ok("bob", "tablet", Command::decline(call.clone(), false));
    let decline_input = b.inputs;
    assert_eq!(b.records.len(), 1);
    assert_eq!(b.records[0].0, decline_input, "taken after the decline");
    let expected = b.expect(
        &call,
        ("alice", "phone"),
        Some("{\"room\":7}"),
        vec![callee("bob", Reason::Declined, Some("tablet"), false)],
        1,
        None,
        4,
        Reason::Declined,
    );
    assert_eq!(b.take(), std::slice::from_ref(&expected));

    // Nothing more for that call, ever (the tombstone expires too).
    b.until(1000);
    assert_eq!(b.take(), []);

    // As an owner keeps it: times mapped (here to ms since the start),
    // JSON both ways.
    let t0 = b.t0;
    let mapped = expected.map_times(|t| i64::try_from((t - t0).as_millis()).unwrap());
    let value = serde_json::to_value(&mapped).unwrap();
    assert_eq!(
        value,
        json!({"call_id": call.to_string(), "caller": "alice", "caller_device": "phone",
            "call_type": "video", "custom_data": "{\"room\":7}",
            "callees": [{"user": "bob", "outcome": "declined", "device": "tablet"}],
            "invited_at": 1000, "ended_at": 4000, "duration_ns": 0, "reason": "declined"})
    );
    let back: CallRecord<i64> = serde_json::from_value(value).unwrap();
    assert_eq!(back, mapped);
}

#[test]
fn answered_then_hung_up_by_the_caller() {
    let mut b = Bench::new(SwitchboardConfig::default());
    online(&mut b, &["alice", "bob"]);
    b.connect("bob", "tablet");
    let call = b.invite("alice", "phone", &["bob"], None);
    b.until(5);
    b.ok("bob", "tablet", Command::accept(call.clone()));
    assert_eq!(b.take(), [], "answered is not ended");
    b.until(65);
    b.ok("alice", "phone", Command::hang_up(call.clone()));
    let expected = b.expect(
        &call,
        ("alice", "phone"),
        None,
        vec![callee("bob", Reason::Accepted, Some("tablet"), false)],
        0,
        Some(5),
        65,
        Reason::HungUp,
    );
    assert_eq!(expected.duration, secs(60));
    assert_eq!(b.take(), [expected]);
}

#[test]
fn answered_then_hung_up_by_the_callee() {
    let mut b = Bench::new(SwitchboardConfig::default());
    online(&mut b, &["alice", "bob"]);
    b.until(2);
    let call = b.invite("alice", "phone", &["bob"], Some("x"));
    b.until(3);
    b.ok("bob", "phone", Command::accept(call.clone()));
    b.until(10);
    b.ok("bob", "phone", Command::hang_up(call.clone()));
    let expected = b.expect(
        &call,
        ("alice", "phone"),
        Some("x"),
        vec![callee("bob", Reason::Accepted, Some("phone"), false)],
        2,
        Some(3),
        10,
        Reason::HungUp,
    );
    assert_eq!(b.take(), [expected]);
}

#[test]
fn canceled_by_the_caller() {
    let mut b = Bench::new(SwitchboardConfig::default());
    online(&mut b, &["alice", "bob", "carol"]);
    let call = b.invite("alice", "phone", &["bob", "carol"], None);
    b.until(2);
    b.ok("bob", "phone", Command::decline(call.clone(), false));
    b.until(3);
    b.ok("alice", "phone", Command::cancel(call.clone()));
    let expected = b.expect(
        &call,
        ("alice", "phone"),
        None,
        vec![
            callee("bob", Reason::Declined, Some("phone"), false),
            callee("carol", Reason::Canceled, None, false),
        ],
        0,
        None,
        3,
        // Mixed outcomes: the first of declined, busy, timeout, canceled ...
        Reason::Declined,
    );
    assert_eq!(b.take(), [expected]);
}

#[test]
fn nobody_answers_in_time() {
    let mut b = Bench::new(SwitchboardConfig::default());
    // bob is offline: held, rings until the deadline all the same.
    online(&mut b, &["alice", "carol"]);
    let call = b.invite("alice", "phone", &["bob", "carol"], None);
    b.until(59);
    assert_eq!(b.take(), []);
    b.until(61);
    let expected = b.expect(
        &call,
        ("alice", "phone"),
        None,
        vec![
            callee("bob", Reason::Timeout, None, false),
            callee("carol", Reason::Timeout, None, false),
        ],
        0,
        None,
        // Ended when the deadline fired, at 60 s.
        60,
        Reason::Timeout,
    );
    assert_eq!(b.take(), [expected]);
}

#[test]
fn busy_and_unreachable_callees_end_the_call_at_invite() {
    let mut config = SwitchboardConfig::default();
    config.offline_policy = OfflinePolicy::Reject;
    config.busy_policy = BusyPolicy::RejectBusy;
    let mut b = Bench::new(config);
    online(&mut b, &["alice", "bob", "carol"]);
    // carol is busy: inviting bob.
    let other = b.invite("carol", "phone", &["bob"], None);
    b.until(1);
    let call = b.invite("alice", "phone", &["carol", "dan"], None);
    let invite_input = b.inputs;
    let records = std::mem::take(&mut b.records);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].0, invite_input, "ended by the invite itself");
    let expected = b.expect(
        &call,
        ("alice", "phone"),
        None,
        vec![
            callee("carol", Reason::Busy, None, false),
            callee("dan", Reason::Unreachable, None, false),
        ],
        1,
        None,
        1,
        Reason::Busy,
    );
    assert_eq!(records[0].1, expected);

    // A callee declaring busy is busy on that device.
    b.until(2);
    b.ok("bob", "phone", Command::decline(other.clone(), true));
    let expected = b.expect(
        &other,
        ("carol", "phone"),
        None,
        vec![callee("bob", Reason::Busy, Some("phone"), false)],
        0,
        None,
        2,
        Reason::Busy,
    );
    assert_eq!(b.take(), [expected]);
}

#[test]
fn caller_gone_while_ringing() {
    let mut b = Bench::new(SwitchboardConfig::default());
    online(&mut b, &["alice", "bob"]);
    let call = b.invite("alice", "phone", &["bob"], None);
    b.until(5);
    b.disconnect("alice", "phone");
    b.until(19);
    assert_eq!(b.take(), [], "within the grace");
    b.until(30);
    let expected = b.expect(
        &call,
        ("alice", "phone"),
        None,
        vec![callee("bob", Reason::CallerGone, None, false)],
        0,
        None,
        // 15 s of grace after the device vanished.
        20,
        Reason::CallerGone,
    );
    assert_eq!(b.take(), [expected]);
}

#[test]
fn ended_for_everyone_with_end() {
    let mut b = Bench::new(SwitchboardConfig::default());
    online(&mut b, &["alice", "bob", "carol", "dan"]);
    let call = b.invite("alice", "phone", &["bob", "carol", "dan"], None);
    b.until(1);
    b.ok("bob", "phone", Command::accept(call.clone()));
    b.until(2);
    b.ok("carol", "phone", Command::accept(call.clone()));
    b.until(9);
    b.ok(
        "alice",
        "phone",
        Command::End {
            call_id: call.clone(),
        },
    );
    let expected = b.expect(
        &call,
        ("alice", "phone"),
        None,
        vec![
            callee("bob", Reason::Accepted, Some("phone"), false),
            callee("carol", Reason::Accepted, Some("phone"), false),
            // Still ringing when the call ended.
            callee("dan", Reason::Canceled, None, false),
        ],
        0,
        Some(1),
        9,
        Reason::HungUp,
    );
    assert_eq!(b.take(), [expected]);
}

#[test]
fn shutdown_records_every_live_call_in_call_id_order() {
    let mut b = Bench::new(SwitchboardConfig::default());
    online(&mut b, &["alice", "bob", "carol", "dan"]);
    let first = b.invite("alice", "phone", &["bob"], Some("a"));
    b.until(1);
    b.ok("bob", "phone", Command::accept(first.clone()));
    b.until(2);
    let second = b.invite("carol", "phone", &["dan"], None);
    b.until(7);
    assert_eq!(b.take(), []);
    b.sb.shutdown(b.now);
    b.drain();
    let expected = vec![
        b.expect(
            &first,
            ("alice", "phone"),
            Some("a"),
            vec![callee("bob", Reason::Accepted, Some("phone"), false)],
            0,
            Some(1),
            7,
            Reason::ServerShutdown,
        ),
        b.expect(
            &second,
            ("carol", "phone"),
            None,
            vec![callee("dan", Reason::ServerShutdown, None, false)],
            2,
            None,
            7,
            Reason::ServerShutdown,
        ),
    ];
    assert!(first < second);
    assert_eq!(b.take(), expected);
}

/// A group call that grows (an invitee declines then joins late on another
/// device; two users are added, one joins, one still rings) and shrinks
/// below two: one record, with every callee as they finished.
#[test]
fn group_call_grown_and_shrunk() {
    let mut b = Bench::new(SwitchboardConfig::default());
    online(&mut b, &["alice", "bob", "carol", "dave"]);
    b.connect("carol", "laptop");
    let call = b.invite("alice", "phone", &["bob", "carol"], Some("g"));
    b.until(1);
    b.ok("bob", "phone", Command::accept(call.clone()));
    b.until(3);
    b.ok("carol", "phone", Command::decline(call.clone(), false));
    b.until(10);
    let added = b.cmd(
        "bob",
        "phone",
        Command::Add {
            call_id: call.clone(),
            callees: vec![uid("dave")],
        },
    );
    assert!(
        matches!(added, Ok(ReplyResult::Invited { .. })),
        "{added:?}"
    );
    b.until(12);
    b.ok("dave", "phone", Command::accept(call.clone()));
    b.until(20);
    b.ok(
        "carol",
        "laptop",
        Command::Join {
            call_id: call.clone(),
        },
    );
    b.until(30);
    b.ok("bob", "phone", Command::hang_up(call.clone()));
    b.until(40);
    b.ok("alice", "phone", Command::hang_up(call.clone()));
    b.until(45);
    // erin is offline: rings (held) until the call ends under her.
    let added = b.cmd(
        "carol",
        "laptop",
        Command::Add {
            call_id: call.clone(),
            callees: vec![uid("erin")],
        },
    );
    assert!(
        matches!(added, Ok(ReplyResult::Invited { .. })),
        "{added:?}"
    );
    assert_eq!(b.take(), [], "the call goes on with carol and dave");
    b.until(50);
    b.ok("dave", "phone", Command::hang_up(call.clone()));
    let expected = b.expect(
        &call,
        ("alice", "phone"),
        Some("g"),
        vec![
            callee("bob", Reason::Accepted, Some("phone"), false),
            // Declined on her phone, then joined on her laptop.
            callee("carol", Reason::Accepted, Some("laptop"), false),
            callee("dave", Reason::Accepted, Some("phone"), true),
            callee("erin", Reason::Canceled, None, true),
        ],
        0,
        Some(1),
        50,
        Reason::HungUp,
    );
    assert_eq!(expected.duration, secs(49));
    assert_eq!(b.take(), [expected]);
    b.until(2000);
    assert_eq!(b.take(), []);
}

/// Records wait for the owner: an input does not clear them (unlike the
/// notices). With records off (the default), none are made.
#[test]
fn records_wait_for_the_owner_and_are_off_by_default() {
    let mut b = Bench::new(SwitchboardConfig::default());
    online(&mut b, &["alice", "bob"]);
    let first = b.invite("alice", "phone", &["bob"], None);
    let conn = b.conns[&("bob".to_owned(), "phone".to_owned())];
    let id = invitation_core::RequestId::new("undrained").unwrap();
    b.sb.handle_command(b.now, conn, id, Command::decline(first.clone(), false))
        .unwrap();
    b.until(5);
    let second = b.invite("alice", "phone", &["bob"], None);
    b.ok("alice", "phone", Command::cancel(second.clone()));
    let ids: Vec<CallId> = b.take().into_iter().map(|r| r.call_id).collect();
    assert_eq!(ids, [first, second]);

    let mut sb = Switchboard::new(SwitchboardConfig::default(), SequentialCallIds::default());
    let (a, bob) = (ConnId::new(1), ConnId::new(2));
    sb.connect(b.t0, a, User::named("alice", "A"), did("phone"), None, None);
    sb.connect(b.t0, bob, User::named("bob", "B"), did("phone"), None, None);
    let req = InviteRequest::new(vec![uid("bob")], CallType::Voice);
    let rid = |s: &str| invitation_core::RequestId::new(s).unwrap();
    let call = match sb.handle_command(b.t0, a, rid("1"), Command::Invite(req)) {
        Ok(ReplyResult::Invited { call_id, .. }) => call_id,
        other => panic!("{other:?}"),
    };
    sb.handle_command(b.t0, bob, rid("2"), Command::accept(call.clone()))
        .unwrap();
    sb.handle_command(b.t0, a, rid("3"), Command::hang_up(call.clone()))
        .unwrap();
    assert_eq!(sb.call(&call).and_then(|c| c.ended()), Some(Reason::HungUp));
    assert_eq!(sb.poll_record(), None);
}
