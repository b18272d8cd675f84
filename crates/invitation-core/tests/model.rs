//! Model-based property tests: random operation sequences (with Tick, Drop
//! and Duplicate steps) over a small world of users and devices, checking
//! the reliability invariants with the shared oracle
//! (`invitation_core::testing::oracle`, the one the simulation uses) on the
//! switchboard after every step and on the complete record of what every
//! device saw at the end.

mod harness;

use std::time::Duration;

use harness::{Key, Net, did, uid};
use invitation_core::protocol::{Command, InviteRequest, ReplyResult};
use invitation_core::testing::oracle::{Acknowledged, DeviceRecord, Oracle, Record};
use invitation_core::{CallId, CallType, Reason};
use proptest::prelude::*;

const USERS: [&str; 4] = ["u0", "u1", "u2", "u3"];
const DEVICES: [&str; 2] = ["d0", "d1"];

#[derive(Debug, Clone)]
enum Op {
    Connect(usize, usize),
    Disconnect(usize, usize),
    /// The link drops every message from now on without anyone noticing
    /// (half-open); the device later reconnects and resumes.
    Drop(usize, usize),
    /// The last server message is delivered to the device again.
    Duplicate(usize, usize),
    /// The next command is sent several times with the same request id.
    DuplicateCommands(usize),
    /// The next client command is lost on the way.
    LoseCommand,
    /// The next server message to the device is lost on the way.
    LoseMessage(usize, usize),
    Invite(usize, usize, Vec<usize>, u32),
    Accept(usize, usize, usize),
    Decline(usize, usize, usize, bool),
    Cancel(usize, usize, usize),
    HangUp(usize, usize, usize),
    /// A participant rings more users into a call.
    Add(usize, usize, usize, Vec<usize>),
    Join(usize, usize, usize),
    End(usize, usize, usize),
    Tick(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let u = 0..USERS.len();
    let d = 0..DEVICES.len();
    prop_oneof![
        3 => (u.clone(), d.clone()).prop_map(|(u, d)| Op::Connect(u, d)),
        1 => (u.clone(), d.clone()).prop_map(|(u, d)| Op::Disconnect(u, d)),
        1 => (u.clone(), d.clone()).prop_map(|(u, d)| Op::Drop(u, d)),
        1 => (u.clone(), d.clone()).prop_map(|(u, d)| Op::Duplicate(u, d)),
        1 => (1usize..4).prop_map(Op::DuplicateCommands),
        1 => Just(Op::LoseCommand),
        1 => (u.clone(), d.clone()).prop_map(|(u, d)| Op::LoseMessage(u, d)),
        3 => (u.clone(), d.clone(), prop::collection::vec(0..USERS.len(), 1..4), prop_oneof![Just(2u32), Just(10), Just(30)])
            .prop_map(|(u, d, c, t)| Op::Invite(u, d, c, t)),
        3 => (u.clone(), d.clone(), 0usize..8).prop_map(|(u, d, c)| Op::Accept(u, d, c)),
        2 => (u.clone(), d.clone(), 0usize..8, any::<bool>()).prop_map(|(u, d, c, b)| Op::Decline(u, d, c, b)),
        1 => (u.clone(), d.clone(), 0usize..8).prop_map(|(u, d, c)| Op::Cancel(u, d, c)),
        1 => (u.clone(), d.clone(), 0usize..8).prop_map(|(u, d, c)| Op::HangUp(u, d, c)),
        3 => (0u64..20_000).prop_map(Op::Tick),
        1 => (u.clone(), d.clone(), 0usize..8, prop::collection::vec(0..USERS.len(), 1..3))
            .prop_map(|(u, d, c, v)| Op::Add(u, d, c, v)),
        1 => (u.clone(), d.clone(), 0usize..8).prop_map(|(u, d, c)| Op::Join(u, d, c)),
        1 => (u.clone(), d.clone(), 0usize..8).prop_map(|(u, d, c)| Op::End(u, d, c)),
    ]
}

struct World {
    net: Net,
    /// Invitations acknowledged (`invited`), with the device that invited.
    calls: Vec<(CallId, Key)>,
    oracle: Oracle,
}

impl World {
    fn new() -> Self {
        Self {
            net: Net::new(),
            calls: Vec::new(),
            oracle: Oracle::new(),
        }
    }

    fn connected(&self, u: usize, d: usize) -> bool {
        self.net
            .devs
            .get(&(USERS[u].to_owned(), DEVICES[d].to_owned()))
            .is_some_and(|dev| dev.conn.is_some())
    }

    fn known(&self, u: usize, d: usize) -> bool {
        self.net
            .devs
            .contains_key(&(USERS[u].to_owned(), DEVICES[d].to_owned()))
    }

    fn call(&self, i: usize) -> Option<CallId> {
        (!self.calls.is_empty()).then(|| self.calls[i % self.calls.len()].0.clone())
    }

    fn run(&mut self, op: &Op) {
        match op {
            Op::Connect(u, d) => self.net.connect(USERS[*u], DEVICES[*d]),
            Op::Disconnect(u, d) if self.known(*u, *d) => {
                self.net.disconnect(USERS[*u], DEVICES[*d])
            }
            Op::Drop(u, d) if self.connected(*u, *d) => {
                self.net.dev_mut(USERS[*u], DEVICES[*d]).deaf = true;
            }
            Op::Duplicate(u, d) if self.known(*u, *d) => {
                let now = self.net.now;
                let dev = self.net.dev_mut(USERS[*u], DEVICES[*d]);
                if let Some(last) = dev.received.last().cloned() {
                    dev.session.handle_message(now, last);
                }
                self.net.pump();
            }
            Op::DuplicateCommands(n) => self.net.dup_commands = *n,
            Op::LoseCommand => self.net.lose_commands = 1,
            Op::LoseMessage(u, d) => {
                self.net
                    .lose_messages
                    .insert((USERS[*u].to_owned(), DEVICES[*d].to_owned()), 1);
            }
            Op::Invite(u, d, callees, t) if self.known(*u, *d) => {
                let callees = callees.iter().map(|c| uid(USERS[*c])).collect();
                let id = self.net.command(
                    USERS[*u],
                    DEVICES[*d],
                    Command::Invite(
                        InviteRequest::new(callees, CallType::Voice).with_timeout_s(Some(*t)),
                    ),
                );
                if let Some(Ok(ReplyResult::Invited { call_id, .. })) =
                    self.net.dev(USERS[*u], DEVICES[*d]).results.get(&id)
                {
                    let key = (USERS[*u].to_owned(), DEVICES[*d].to_owned());
                    self.calls.push((call_id.clone(), key));
                }
                self.net.dup_commands = 0;
            }
            Op::Accept(u, d, c)
            | Op::Cancel(u, d, c)
            | Op::HangUp(u, d, c)
            | Op::Join(u, d, c)
            | Op::End(u, d, c)
            | Op::Add(u, d, c, _)
            | Op::Decline(u, d, c, _)
                if self.known(*u, *d) =>
            {
                let Some(call_id) = self.call(*c) else { return };
                let cmd = match op {
                    Op::Accept(..) => Command::Accept {
                        call_id,
                        custom_data: None,
                    },
                    Op::Cancel(..) => Command::Cancel {
                        call_id,
                        custom_data: None,
                    },
                    Op::HangUp(..) => Command::HangUp {
                        call_id,
                        custom_data: None,
                    },
                    Op::Join(..) => Command::Join { call_id },
                    Op::End(..) => Command::End { call_id },
                    Op::Add(.., callees) => Command::Add {
                        call_id,
                        callees: callees.iter().map(|c| uid(USERS[*c])).collect(),
                    },
                    Op::Decline(.., busy) => Command::Decline {
                        call_id,
                        busy: *busy,
                        custom_data: None,
                    },
                    _ => unreachable!(),
                };
                self.net.command(USERS[*u], DEVICES[*d], cmd);
                self.net.dup_commands = 0;
            }
            Op::Tick(ms) => self.net.advance(Duration::from_millis(*ms)),
            _ => {}
        }
    }

    /// Invariants that hold after every step (the shared oracle).
    fn check_step(&mut self) -> Result<(), TestCaseError> {
        self.oracle.observe(&self.net.sb);
        prop_assert!(
            self.oracle.violations().is_empty(),
            "{:#?}",
            self.oracle.violations()
        );
        Ok(())
    }

    /// Brings every device back, lets every deadline pass, then hands the
    /// complete record to the shared oracle.
    fn finish_and_check(&mut self) -> Result<(), TestCaseError> {
        let keys: Vec<_> = self.net.devs.keys().cloned().collect();
        for (u, d) in &keys {
            self.net.connect(u, d);
        }
        self.net.advance(Duration::from_secs(120));
        let net = &self.net;
        let mut record = Record::new(Duration::ZERO);
        for ((user, device), dev) in &net.devs {
            let mut d = DeviceRecord::new(format!("{user}/{device}"), uid(user), did(device));
            d.events = dev.events.clone();
            d.last_seq = dev.session.last_seq();
            d.timer_armed = Some(dev.session.poll_timeout().is_some());
            record.devices.push(d);
        }
        for (call_id, key) in &self.calls {
            let inviter = net.devs.keys().position(|k| k == key).expect("a device");
            record
                .invitations
                .push(Acknowledged::new(call_id.clone(), inviter, false));
        }
        let violations = std::mem::take(&mut self.oracle).finish(&net.sb, &record);
        prop_assert!(violations.is_empty(), "{:#?}", violations);
        self.check_records()
    }

    /// One call record per ended call, none for a live one, and each says
    /// what the switchboard still holds of the call (when it still does:
    /// an ended call is forgotten after the retention period).
    fn check_records(&self) -> Result<(), TestCaseError> {
        let net = &self.net;
        let mut seen = std::collections::BTreeSet::new();
        for r in &net.records {
            prop_assert!(
                seen.insert(r.call_id.clone()),
                "two records for {}",
                r.call_id
            );
            prop_assert!(r.invited_at <= r.ended_at && r.ended_at <= net.now);
            match r.answered_at {
                Some(a) => {
                    prop_assert!(r.invited_at <= a && a <= r.ended_at);
                    prop_assert_eq!(r.duration, r.ended_at - a);
                    prop_assert!(r.callees.iter().any(|c| c.outcome == Reason::Accepted));
                }
                None => {
                    prop_assert_eq!(r.duration, Duration::ZERO);
                    prop_assert!(r.callees.iter().all(|c| c.outcome != Reason::Accepted));
                }
            }
            let Some(view) = net.sb.call(&r.call_id) else {
                continue;
            };
            prop_assert_eq!(view.ended(), Some(r.reason), "{:?}", r);
            prop_assert_eq!(&r.caller, &view.caller().id);
            let callees: Vec<_> = view.callees().iter().map(|u| u.id.clone()).collect();
            let recorded: Vec<_> = r.callees.iter().map(|c| c.user.clone()).collect();
            prop_assert_eq!(recorded, callees);
            for c in &r.callees {
                prop_assert_eq!(Some(c.outcome), view.outcome(&c.user));
                prop_assert_eq!(c.device.as_ref(), view.answered_by(&c.user));
                prop_assert_eq!(c.added, view.added_later(&c.user));
            }
        }
        for (call_id, _) in &self.calls {
            // Forgotten calls had ended.
            let ended = net.sb.call(call_id).is_none_or(|v| v.ended().is_some());
            prop_assert_eq!(ended, seen.contains(call_id), "record of {}", call_id);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1000,
        failure_persistence: None,
        // Deterministic: the same 1,000 cases on every run. Explore others
        // with INVITATION_MODEL_SEED=<u64>.
        rng_seed: proptest::test_runner::RngSeed::Fixed(
            std::env::var("INVITATION_MODEL_SEED").ok().map_or(20261126, |s| {
                s.parse().unwrap_or_else(|_| panic!("INVITATION_MODEL_SEED={s:?} is not a u64 seed"))
            }),
        ),
        ..ProptestConfig::default()
    })]

    #[test]
    fn invariants_hold_under_random_operations(ops in prop::collection::vec(op(), 1..60)) {
        let mut world = World::new();
        for op in &ops {
            world.run(op);
            world.check_step()?;
        }
        world.finish_and_check()?;
    }
}
