//! What a client can make the switchboard hold, and that it gives it back:
//! user records of ids nobody uses, and the request-id memory. Time moves
//! by hand.

use std::time::{Duration, Instant};

use invitation_core::protocol::{
    CalleeStatus, Command, Event, InitialStatus, InviteRequest, ReplyResult, ServerBody,
    ServerMessage,
};
use invitation_core::{
    CallId, CallType, CommandError, ConnId, ContactPolicy, DeviceId, OfflinePolicy, Output, Reason,
    RequestId, SequentialCallIds, Switchboard, SwitchboardConfig, User, UserId,
};

struct Board {
    sb: Switchboard,
    now: Instant,
    next_id: u64,
    /// Every message sent, in order.
    sent: Vec<(ConnId, ServerMessage)>,
}

impl Board {
    fn new(config: SwitchboardConfig) -> Self {
        #[allow(clippy::disallowed_methods)] // the origin of test time
        let now = Instant::now();
        Self {
            sb: Switchboard::new(config, SequentialCallIds::default()),
            now,
            next_id: 0,
            sent: Vec::new(),
        }
    }

    fn drain(&mut self) {
        while let Some(out) = self.sb.poll_output() {
            if let Output::Send { conn, message } = out {
                self.sent.push((conn, message));
            }
        }
    }

    /// Events sent to `conn` so far.
    fn events_to(&self, conn: ConnId) -> Vec<Event> {
        self.sent
            .iter()
            .filter(|(c, _)| *c == conn)
            .filter_map(|(_, m)| match &m.body {
                ServerBody::Event { event, .. } => Some(event.clone()),
                _ => None,
            })
            .collect()
    }

    fn users(&self) -> usize {
        self.sb.sizes().0
    }

    fn calls(&self) -> usize {
        self.sb.sizes().1
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.sb.handle_timeout(self.now);
        self.drain();
    }

    fn connect(&mut self, user: &str, device: &str) -> ConnId {
        self.next_id += 1;
        let conn = ConnId::new(self.next_id);
        self.sb.connect(
            self.now,
            conn,
            User::named(user, user),
            DeviceId::new(device).unwrap(),
            None,
            None,
        );
        self.drain();
        conn
    }

    fn disconnect(&mut self, conn: ConnId) {
        self.sb.disconnect(self.now, conn);
        self.drain();
    }

    /// Sends `command` with a fresh request id.
    fn cmd(&mut self, conn: ConnId, command: Command) -> Result<ReplyResult, CommandError> {
        self.next_id += 1;
        let id = RequestId::new(format!("r{}", self.next_id)).unwrap();
        self.cmd_as(conn, id, command)
    }

    fn cmd_as(
        &mut self,
        conn: ConnId,
        id: RequestId,
        command: Command,
    ) -> Result<ReplyResult, CommandError> {
        let result = self.sb.handle_command(self.now, conn, id.clone(), command);
        let before = self.sent.len();
        self.drain();
        // A reply, an error, or an event carrying the answer: exactly one.
        let answers = self.sent[before..]
            .iter()
            .filter(|(c, m)| *c == conn && m.body.answers() == Some(&id))
            .count();
        assert_eq!(answers, 1, "one answer per command");
        result
    }

    fn invite(
        &mut self,
        conn: ConnId,
        callees: &[String],
        timeout_s: u32,
    ) -> Result<ReplyResult, CommandError> {
        self.cmd(conn, invite(callees, timeout_s))
    }
}

fn invite(callees: &[String], timeout_s: u32) -> Command {
    Command::Invite(
        InviteRequest::new(
            callees.iter().map(|c| UserId::new(c).unwrap()).collect(),
            CallType::Voice,
        )
        .with_timeout_s(Some(timeout_s)),
    )
}

fn call_of(r: &Result<ReplyResult, CommandError>) -> CallId {
    match r {
        Ok(ReplyResult::Invited { call_id, .. }) => call_id.clone(),
        other => panic!("expected invited, got {other:?}"),
    }
}

fn ghosts(round: usize, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("ghost-{round}-{i}")).collect()
}

/// Invites to made-up user ids create records that are forgotten once the
/// invitation ended and the retention window passed: the user count returns
/// to its baseline. While an invitation still rings for such an id, its
/// record stays (a device connecting in time gets the call).
#[test]
fn users_that_never_connect_are_forgotten() {
    let mut config = SwitchboardConfig::default();
    config.retention = Duration::from_secs(120);
    let mut b = Board::new(config);
    let alice = b.connect("alice", "phone");
    let baseline = b.users();
    assert_eq!(baseline, 1);

    for round in 0..50 {
        let r = b.invite(alice, &ghosts(round, 9), 1);
        call_of(&r);
        b.advance(Duration::from_secs(1)); // rang out: timeout
    }
    assert_eq!(b.users(), baseline + 50 * 9, "held during the window");

    // One more, ringing for 300 s: longer than the 120 s window.
    let held = b.invite(alice, &["ghost-held".to_owned()], 300);
    let held = call_of(&held);
    b.advance(Duration::from_secs(121));
    assert_eq!(
        b.users(),
        baseline + 1,
        "the ringing callee is kept, every other made-up id is forgotten"
    );
    // The held invitation still reaches a device that turns up in time.
    let ghost = b.connect("ghost-held", "phone");
    assert_eq!(b.sb.call(&held).map(|c| c.is_ringing()), Some(true));
    b.disconnect(ghost);

    // It rings out; after the window everyone but alice is gone, and the
    // ended calls too.
    b.advance(Duration::from_secs(180));
    assert_eq!(b.sb.call(&held).map(|c| c.is_ringing()), Some(false));
    b.advance(Duration::from_secs(121));
    assert_eq!(b.users(), baseline);
    assert_eq!(b.calls(), 0);
}

/// Refused at once (offline policy `reject`): no call, no record kept.
#[test]
fn callees_refused_at_once_are_forgotten() {
    let mut config = SwitchboardConfig::default();
    config.retention = Duration::from_secs(30);
    config.offline_policy = OfflinePolicy::Reject;
    let mut b = Board::new(config);
    let alice = b.connect("alice", "phone");
    for round in 0..20 {
        match b.invite(alice, &ghosts(round, 9), 60) {
            Ok(ReplyResult::Invited { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(b.users(), 1 + 20 * 9);
    b.advance(Duration::from_secs(31));
    assert_eq!(b.users(), 1);
}

/// A caller who went offline while in a call is forgotten once that call
/// ends (the end, not the disconnect, made them idle).
#[test]
fn a_user_whose_last_call_ends_while_offline_is_forgotten() {
    let mut config = SwitchboardConfig::default();
    config.retention = Duration::from_secs(30);
    let mut b = Board::new(config);
    let alice = b.connect("alice", "phone");
    let bob = b.connect("bob", "phone");
    let call = call_of(&b.invite(alice, &["bob".to_owned()], 60));
    assert_eq!(
        b.cmd(
            bob,
            Command::Accept {
                call_id: call.clone(),
                custom_data: None
            }
        ),
        Ok(ReplyResult::Done)
    );
    b.disconnect(alice); // still in the call
    b.advance(Duration::from_secs(31));
    assert_eq!(b.users(), 2, "in a call: kept");
    assert_eq!(
        b.cmd(
            bob,
            Command::HangUp {
                call_id: call,
                custom_data: None
            }
        ),
        Ok(ReplyResult::Done)
    );
    b.advance(Duration::from_secs(31));
    assert_eq!(b.users(), 1, "alice is forgotten, bob is online");
}

fn rid(s: &str) -> RequestId {
    RequestId::new(s).unwrap()
}

/// Commands that changed nothing and never could (unknown calls, invalid
/// input) are not remembered: a flood of them leaves the request-id memory
/// empty. Their retries simply run again, with the same answer.
#[test]
fn refused_commands_cost_no_retry_memory() {
    let mut b = Board::new(SwitchboardConfig::default());
    let alice = b.connect("alice", "phone");
    for i in 0..5_000 {
        let call_id = CallId::new(format!("c-made-up-{i}")).unwrap();
        assert_eq!(
            b.cmd(
                alice,
                Command::Accept {
                    call_id,
                    custom_data: None
                }
            ),
            Err(CommandError::NotFound)
        );
    }
    assert!(matches!(
        b.cmd(alice, invite(&[], 60)),
        Err(CommandError::Invalid(_))
    ));
    assert_eq!(b.sb.remembered_requests(), 0);
    let again = CallId::new("c-made-up-1").unwrap();
    assert_eq!(
        b.cmd_as(
            alice,
            rid("r2"),
            Command::Accept {
                call_id: again,
                custom_data: None
            }
        ),
        Err(CommandError::NotFound),
        "a retry runs again and hears the same"
    );
    assert_eq!(b.sb.stats().duplicate_requests, 0);
}

/// What must be kept is kept: a retried accept that succeeded hears `done`
/// even after the call ended (run again it would hear `ended`), and a late
/// duplicate of an invite refused as `caller_busy` stays refused once the
/// caller is free (run again it would make a call).
#[test]
fn answers_a_rerun_could_contradict_are_kept() {
    let mut b = Board::new(SwitchboardConfig::default());
    let alice = b.connect("alice", "phone");
    let bob = b.connect("bob", "phone");
    let _carol = b.connect("carol", "phone");
    let call = call_of(&b.invite(alice, &["bob".to_owned()], 60));
    let accept = || Command::Accept {
        call_id: call.clone(),
        custom_data: None,
    };
    assert_eq!(b.cmd_as(bob, rid("acc"), accept()), Ok(ReplyResult::Done));
    let busy = invite(&["carol".to_owned()], 60);
    assert_eq!(
        b.cmd_as(alice, rid("inv"), busy.clone()),
        Err(CommandError::CallerBusy)
    );
    assert_eq!(
        b.cmd(
            bob,
            Command::HangUp {
                call_id: call.clone(),
                custom_data: None
            }
        ),
        Ok(ReplyResult::Done)
    );
    assert_eq!(b.cmd_as(bob, rid("acc"), accept()), Ok(ReplyResult::Done));
    assert_eq!(
        b.cmd_as(alice, rid("inv"), busy),
        Err(CommandError::CallerBusy)
    );
    assert_eq!(b.sb.stats().invitations, 1, "the duplicate made no call");
    assert_eq!(b.sb.stats().duplicate_requests, 2);
}

/// Each user has a bounded share of the request-id memory: one user's
/// stream of real commands forgets their own oldest answers, not others'.
#[test]
fn one_user_cannot_push_others_answers_out() {
    let mut config = SwitchboardConfig::default();
    config.max_remembered_requests = 100;
    config.max_remembered_requests_per_user = 10;
    let mut b = Board::new(config);
    let alice = b.connect("alice", "phone");
    let bob = b.connect("bob", "phone");
    let mallory = b.connect("mallory", "phone");
    let call = call_of(&b.invite(alice, &["bob".to_owned()], 60));
    let accept = || Command::Accept {
        call_id: call.clone(),
        custom_data: None,
    };
    assert_eq!(b.cmd_as(bob, rid("acc"), accept()), Ok(ReplyResult::Done));

    // Mallory: 300 invitations to made-up ids, each cancelled: 600 answers
    // that changed something.
    for round in 0..300 {
        let c = call_of(&b.invite(mallory, &ghosts(round, 1), 60));
        assert_eq!(
            b.cmd(
                mallory,
                Command::Cancel {
                    call_id: c,
                    custom_data: None
                }
            ),
            Ok(ReplyResult::Done)
        );
    }
    assert!(
        b.sb.remembered_requests() <= 10 + 10 + 10,
        "each user holds at most their share: {}",
        b.sb.remembered_requests()
    );

    // Bob's call ends; his retried accept still gets the stored answer.
    assert_eq!(
        b.cmd(
            bob,
            Command::HangUp {
                call_id: call.clone(),
                custom_data: None
            }
        ),
        Ok(ReplyResult::Done)
    );
    assert_eq!(b.cmd_as(bob, rid("acc"), accept()), Ok(ReplyResult::Done));
}

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

/// The contact policy is asked for every callee; a refused one refuses the
/// whole invite with `forbidden`, the same for a user who exists, is online
/// or was never heard of, and nothing is created (not even a user record).
#[test]
fn the_contact_policy_refuses_with_a_typed_error() {
    assert!(
        ContactPolicy::default().allows(&uid("a"), &uid("b")),
        "anyone by default"
    );
    let mut config = SwitchboardConfig::default();
    config.contact_policy =
        ContactPolicy::new(|caller, callee| caller.as_str() == "alice" && callee.as_str() == "bob");
    let mut b = Board::new(config);
    let alice = b.connect("alice", "phone");
    let _bob = b.connect("bob", "phone");
    let carol = b.connect("carol", "phone");
    let users = b.users();
    for callees in [vec!["carol"], vec!["nobody"], vec!["bob", "carol"]] {
        let callees: Vec<String> = callees.into_iter().map(str::to_owned).collect();
        let refused = b.invite(alice, &callees, 60);
        let first_refused = callees.iter().find(|c| *c != "bob").unwrap();
        assert_eq!(
            refused,
            Err(CommandError::Forbidden {
                callee: uid(first_refused)
            })
        );
    }
    assert_eq!(
        b.invite(carol, &["bob".to_owned()], 60),
        Err(CommandError::Forbidden { callee: uid("bob") })
    );
    assert_eq!(b.sb.stats().invitations, 0);
    assert_eq!(b.users(), users, "no record for a refused callee");
    assert_eq!(
        CommandError::Forbidden { callee: uid("x") }.code(),
        invitation_core::ErrorCode::Forbidden
    );
    call_of(&b.invite(alice, &["bob".to_owned()], 60));
}

/// With callee status hidden, the invite's reply says `ringing` for an
/// online and an offline callee alike and no `callee_ringing` receipt
/// reaches the caller (not even when a held callee connects); outcomes
/// still do.
#[test]
fn hidden_callee_status_reveals_only_outcomes() {
    for hide in [false, true] {
        let mut config = SwitchboardConfig::default();
        config.hide_callee_status = hide;
        let mut b = Board::new(config);
        let alice = b.connect("alice", "phone");
        let bob = b.connect("bob", "phone");
        let reply = b.invite(alice, &["bob".to_owned(), "carol".to_owned()], 60);
        let statuses = match &reply {
            Ok(ReplyResult::Invited { callees, .. }) => callees.clone(),
            other => panic!("{other:?}"),
        };
        let shown = |user: &str, status| CalleeStatus::new(uid(user), status);
        if hide {
            assert_eq!(
                statuses,
                [
                    shown("bob", InitialStatus::Ringing),
                    shown("carol", InitialStatus::Ringing)
                ]
            );
        } else {
            assert_eq!(
                statuses,
                [
                    shown("bob", InitialStatus::Ringing),
                    shown("carol", InitialStatus::Offline)
                ]
            );
        }
        let call = call_of(&reply);
        let _carol = b.connect("carol", "laptop");
        let receipts = b
            .events_to(alice)
            .into_iter()
            .filter(|e| matches!(e, Event::CalleeRinging { .. }))
            .count();
        assert_eq!(receipts, if hide { 0 } else { 2 }, "hide = {hide}");
        assert_eq!(
            b.cmd(
                bob,
                Command::Accept {
                    call_id: call,
                    custom_data: None
                }
            ),
            Ok(ReplyResult::Done)
        );
        assert!(b.events_to(alice).iter().any(|e| matches!(
            e,
            Event::CalleeOutcome {
                reason: Reason::Accepted,
                ..
            }
        )));
    }
}
