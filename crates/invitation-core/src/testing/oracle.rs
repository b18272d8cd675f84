//! The invariant oracle: the reliability invariants, checked once, on a
//! neutral record of a run.
//!
//! Whoever runs a system of devices and a switchboard (the property tests,
//! which move messages by hand; the simulation, which runs real clients on
//! the memory hub behind fault injectors) records what each device saw (its
//! app events with receive times, what its handler ran, its final sequence
//! number) and which invitations were acknowledged to their inviter, and
//! hands that [`Record`] to an [`Oracle`] together with the [`Switchboard`]:
//!
//! 1. [`Oracle::observe`] after every step (or as often as the driver can
//!    look at the switchboard): outcomes, once written, never change; the
//!    switchboard has a timer exactly when a call rings or waits for a
//!    vanished caller.
//! 2. [`Oracle::finish`] once the run has settled (every device back, every
//!    deadline passed): everything else, on the complete record.
//!
//! Every broken invariant is one sentence, prefixed with its number
//! (`inv1` ... `inv7`), so a failing run says what broke and where.
//!
//! The invariants:
//!
//! 1. every acknowledged invitation has an outcome for every callee at the
//!    switchboard; every ring ends at most once on a device, exactly once on
//!    a device that is still running (canceled, timeout, accepted, declined,
//!    or an outcome of a call the device's own invite joined); every device
//!    of the caller learns each callee's outcome at most once, the inviting
//!    device exactly once (unless its view was rebuilt by a resync), and
//!    what it learns is the switchboard's outcome (a local fallback timeout
//!    excepted);
//! 2. at most one device per callee fires "accepted", and it is the device
//!    the switchboard recorded;
//! 3. no ring with less than min(5 s, half the ring timeout) left, and none
//!    at or after the deadline or lasting past it (both allowing for
//!    [`Record::slack`], the longest a message can be held on the way);
//! 4. no event twice on a device, no device rings twice for one call, and a
//!    handler ran exactly the callbacks its event stream carried;
//! 5. every running device ends at the switchboard's last sequence number
//!    for its user (and, where the driver can tell, with no timer armed);
//! 6. no ring for a call after that ring ended on the device; outcomes never
//!    change;
//! 7. once settled the switchboard has no timer left and no call rings;
//!    before that, it has a timer exactly when something has a deadline;
//! 8. calls that grow and shrink: once someone accepted, a live call has at
//!    least two in it (it ends when fewer remain); an outcome changes only
//!    while such a call goes on (an invitee joins late or is rung again);
//!    a late join never puts a user in a second live call; every device of
//!    a participant sees each join and leave at most once, and only for a
//!    call it knows live (checked per device in `finish`).
//! 9. a caller learns that a callee device has an invitation (a device
//!    receipt) only from a device of that callee that rang for that call,
//!    no earlier than it rang, and at most once (checked by 4).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::id::{CallId, DeviceId, UserId};
use crate::model::Reason;
use crate::session::AppEvent;
use crate::switchboard::{CallView, Switchboard};

/// What one device (one run of a client, from start to stop) saw.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeviceRecord {
    /// A name for messages (`user/device#start`).
    pub name: String,
    /// The device's user.
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
    /// Every app event, in order, with the time the device received it.
    pub events: Vec<(Instant, AppEvent)>,
    /// What the device's handler ran, when it had one.
    pub handler: Option<HandlerRecord>,
    /// Still running at the end (a stopped device may have missed the end
    /// of what it saw begin).
    pub alive: bool,
    /// The last sequence number the device applied, at the end.
    pub last_seq: Option<u64>,
    /// Whether the device still has a timer armed at the end, when the
    /// driver can tell (`None`: it cannot).
    pub timer_armed: Option<bool>,
}

impl DeviceRecord {
    /// A running device that saw nothing yet.
    pub fn new(name: impl Into<String>, user: UserId, device: DeviceId) -> Self {
        Self {
            name: name.into(),
            user,
            device,
            events: Vec::new(),
            handler: None,
            alive: true,
            last_seq: None,
            timer_armed: None,
        }
    }
}

/// What a device's handler ran.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct HandlerRecord {
    /// The events of the stream that fire a callback, in order.
    pub due: Vec<AppEvent>,
    /// The events the handler's callbacks ran with, in the order they ran.
    pub ran: Vec<AppEvent>,
}

impl HandlerRecord {
    /// A handler record from what was due and what ran.
    pub fn new(due: Vec<AppEvent>, ran: Vec<AppEvent>) -> Self {
        Self { due, ran }
    }
}

/// An invitation acknowledged to its inviter (`invited` or `joined`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Acknowledged {
    /// The call.
    pub call_id: CallId,
    /// The device that invited (index into [`Record::devices`]).
    pub inviter: usize,
    /// The invite joined the other side's call (glare): the inviter is a
    /// callee of `call_id`, not its caller.
    pub joined: bool,
}

impl Acknowledged {
    /// `call_id` acknowledged to device `inviter`.
    pub fn new(call_id: CallId, inviter: usize, joined: bool) -> Self {
        Self {
            call_id,
            inviter,
            joined,
        }
    }
}

/// Everything the oracle checks besides the switchboard.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Record {
    /// Every device (every client run) of the run.
    pub devices: Vec<DeviceRecord>,
    /// Every acknowledged invitation.
    pub invitations: Vec<Acknowledged>,
    /// The longest a server message can be held on its way to a device
    /// (injected delay, a peer that stops reading): a ring may arrive this
    /// much after it was sent. Zero when messages are delivered at once.
    pub slack: Duration,
}

impl Record {
    /// An empty record with this slack.
    pub fn new(slack: Duration) -> Self {
        Self {
            slack,
            ..Self::default()
        }
    }
}

/// The checker. See the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct Oracle {
    /// The first outcome seen per (call, callee) since its latest re-ring
    /// or late join, with the number of those it belongs to.
    outcomes: HashMap<(CallId, UserId), (Reason, u32)>,
    /// Late joins seen per (call, invitee).
    joined: HashMap<(CallId, UserId), u32>,
    /// The live calls each user was in at the previous look.
    present_before: HashMap<UserId, Vec<CallId>>,
    /// Every ring deadline seen per (call, callee), oldest first (a call
    /// that grew rings later invitees until later deadlines).
    ring_deadlines: HashMap<(CallId, UserId), Vec<Instant>>,
    violations: Vec<String>,
}

impl Oracle {
    /// An oracle that saw nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every broken invariant found so far.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// The invariants that hold at every moment: outcomes never change (6);
    /// the switchboard has a timer exactly when a call rings or waits for a
    /// vanished caller (7).
    pub fn observe(&mut self, sb: &Switchboard) {
        let mut live = false;
        let mut present: HashMap<UserId, Vec<CallId>> = HashMap::new();
        let mut new_joins: Vec<(CallId, UserId)> = Vec::new();
        for call in sb.calls() {
            live |= call.is_ringing() || call.caller_gone_at().is_some();
            let participants = call.participants();
            // 8: once someone accepted, a live call has two in it.
            if call.ended().is_none() && call.established() && participants.len() < 2 {
                self.violations.push(format!(
                    "inv8: {} goes on with {} in it",
                    call.call_id(),
                    participants.len()
                ));
            }
            if call.ended().is_none() && call.established() {
                for (user, _) in participants {
                    present
                        .entry(user)
                        .or_default()
                        .push(call.call_id().clone());
                }
            }
            for callee in call.callees() {
                let key = (call.call_id().clone(), callee.id.clone());
                if let Some(dl) = call.ring_deadline(&callee.id) {
                    let seen = self.ring_deadlines.entry(key.clone()).or_default();
                    if seen.last() != Some(&dl) {
                        seen.push(dl);
                    }
                }
                // A callee rung again or joined late has a new outcome since
                // (the switchboard counts both): compare from then on.
                let epoch = call.rung_again(&callee.id) + call.joined_late(&callee.id);
                let joins = call.joined_late(&callee.id);
                if joins > self.joined.get(&key).copied().unwrap_or(0) {
                    self.joined.insert(key.clone(), joins);
                    new_joins.push(key.clone());
                }
                let Some(now) = call.outcome(&callee.id) else {
                    continue;
                };
                let (first, seen_epoch) = *self.outcomes.entry(key.clone()).or_insert((now, epoch));
                if seen_epoch != epoch {
                    self.outcomes.insert(key, (now, epoch));
                    continue;
                }
                if first != now {
                    self.violations.push(format!(
                        "inv6: the outcome of {} in {} changed from {first} to {now}",
                        callee.id,
                        call.call_id()
                    ));
                }
            }
        }
        // A late join never puts a user in a second call: one they were in
        // before the join and still are.
        for (call_id, user) in new_joins {
            let now_in = present.get(&user).map_or(&[][..], Vec::as_slice);
            let before = self
                .present_before
                .get(&user)
                .map_or(&[][..], Vec::as_slice);
            if let Some(other) = before.iter().find(|c| **c != call_id && now_in.contains(c)) {
                self.violations
                    .push(format!("inv8: {user} joined {call_id} while in {other}"));
            }
        }
        self.present_before = present;
        let timer = sb.poll_timeout().is_some();
        if timer != live {
            self.violations.push(format!(
                "inv7: the switchboard has a timer: {timer}, something with a deadline: {live}"
            ));
        }
    }

    /// Checks everything on the settled switchboard and the complete
    /// record; returns every broken invariant (empty: the run passed).
    pub fn finish(mut self, sb: &Switchboard, record: &Record) -> Vec<String> {
        self.observe(sb);
        let mut run = Run {
            sb,
            record,
            v: self.violations,
            accepted_by: HashMap::new(),
            ring_deadlines: self.ring_deadlines,
            caller_left: HashSet::new(),
        };
        for d in &record.devices {
            for (_, e) in &d.events {
                if let AppEvent::ParticipantLeft { call_id, user, .. } = e
                    && sb.call(call_id).is_some_and(|v| &v.caller().id == user)
                {
                    run.caller_left.insert(call_id.clone());
                }
            }
        }
        run.settled();
        for (n, device) in record.devices.iter().enumerate() {
            run.device(n, device);
        }
        run.accepts();
        run.deliveries();
        run.v
    }
}

/// One `finish`.
struct Run<'a> {
    sb: &'a Switchboard,
    record: &'a Record,
    v: Vec<String>,
    /// Devices that fired "accepted", per (call, callee).
    accepted_by: HashMap<(CallId, UserId), Vec<usize>>,
    /// Ring deadlines per (call, callee), from `observe`.
    ring_deadlines: HashMap<(CallId, UserId), Vec<Instant>>,
    /// Calls whose caller left while the others went on (a device saw it):
    /// the caller does not hear the outcomes decided after that.
    caller_left: HashSet<CallId>,
}

impl<'a> Run<'a> {
    fn call(&mut self, call_id: &CallId) -> Option<CallView<'a>> {
        let view = self.sb.call(call_id);
        if view.is_none() {
            let msg = format!("{call_id} is no longer held by the switchboard: cannot check it");
            if !self.v.contains(&msg) {
                self.v.push(msg);
            }
        }
        view
    }

    /// 8: every device receipt a caller saw comes from a callee device
    /// that rang for the call, no later than the caller learned it.
    fn deliveries(&mut self) {
        for d in &self.record.devices {
            for (at, e) in &d.events {
                let AppEvent::CalleeDelivered {
                    call_id,
                    callee,
                    device,
                } = e
                else {
                    continue;
                };
                let rang = self.record.devices.iter().any(|r| {
                    &r.user == callee
                        && &r.device == device
                        && r.events.iter().any(|(t, e)| {
                            t <= at
                                && matches!(e, AppEvent::IncomingCallReceived { call_id: c, .. } if c == call_id)
                        })
                });
                if !rang {
                    self.v.push(format!(
                        "inv9: {} learned that {callee}/{device} has {call_id}, but that device never rang for it before",
                        d.name
                    ));
                }
            }
        }
    }

    /// 1 and 7 at the switchboard.
    fn settled(&mut self) {
        if self.sb.poll_timeout().is_some() {
            self.v
                .push("inv7: the switchboard still has a timer after everything settled".into());
        }
        for call in self.sb.calls() {
            if call.is_ringing() {
                self.v.push(format!(
                    "inv7: {} still rings after settling",
                    call.call_id()
                ));
            }
        }
        for inv in &self.record.invitations {
            let Some(view) = self.call(&inv.call_id) else {
                continue;
            };
            for callee in view.callees() {
                if view.outcome(&callee.id).is_none() {
                    self.v.push(format!(
                        "inv1: {} has no outcome for {}",
                        inv.call_id, callee.id
                    ));
                }
            }
        }
    }

    fn device(&mut self, n: usize, d: &DeviceRecord) {
        let name = &d.name;
        let resynced = d
            .events
            .iter()
            .any(|(_, e)| matches!(e, AppEvent::Resynced { .. }));
        let slack = self.record.slack;

        // 4: nothing twice.
        let mut seen: HashSet<String> = HashSet::new();
        for (_, e) in &d.events {
            if matches!(
                e,
                AppEvent::Connection(_)
                    | AppEvent::Resynced { .. }
                    | AppEvent::CalleeRinging { .. }
                    // may repeat (rung again, left, joined again): checked
                    // below
                    | AppEvent::IncomingCallReceived { .. }
                    | AppEvent::ParticipantJoined { .. }
                    | AppEvent::ParticipantLeft { .. }
            ) {
                continue;
            }
            // A callee rung again may see the same ending again, and the
            // others the same outcome of them: counted per ring below.
            let again = e.call_id().is_some_and(|c| {
                self.rerung_count(c, &d.user) > 0
                    || outcome_of(e).is_some_and(|(c, callee, _)| self.rerung_count(c, callee) > 0)
            });
            if again {
                continue;
            }
            if !seen.insert(format!("{e:?}")) {
                self.v.push(format!("inv4: {name} saw twice: {e:?}"));
            }
        }
        // 4: the handler ran exactly the callbacks of the stream.
        if let (Some(h), true) = (&d.handler, d.alive) {
            let mut due: Vec<String> = h.due.iter().map(|e| format!("{e:?}")).collect();
            let mut ran: Vec<String> = h.ran.iter().map(|e| format!("{e:?}")).collect();
            due.sort();
            ran.sort();
            if due != ran {
                self.v.push(format!(
                    "inv4: {name}: the stream had {} callback events, the handler ran {} \
                     (not the same events)",
                    due.len(),
                    ran.len()
                ));
            }
        }

        // 8: per call and user, joins and leaves alternate on a device
        // (each reaches it once, in order).
        let mut inside: HashMap<(CallId, UserId), bool> = HashMap::new();
        for (_, e) in &d.events {
            let (call_id, user, joins) = match e {
                AppEvent::ParticipantJoined { call_id, user, .. } => (call_id, user, true),
                AppEvent::ParticipantLeft { call_id, user, .. } => (call_id, user, false),
                _ => continue,
            };
            let was = inside.insert((call_id.clone(), user.clone()), joins);
            if was == Some(joins) {
                let what = if joins { "joined" } else { "left" };
                self.v.push(format!(
                    "inv8: {name}: {user} {what} {call_id} twice in a row; events: {}",
                    names(&d.events)
                ));
            }
        }

        // 1, 3 and 6 on the incoming side; outcomes on the caller side.
        let mut rang: Vec<CallId> = Vec::new();
        let mut ring_ended: HashMap<CallId, usize> = HashMap::new();
        let mut outcomes: HashMap<(CallId, UserId), Vec<Reason>> = HashMap::new();
        for (at, e) in &d.events {
            match e {
                AppEvent::IncomingCallReceived {
                    call_id,
                    ring_remaining,
                    ..
                } => {
                    let rings = rang.iter().filter(|c| *c == call_id).count();
                    let ends = ring_ended.get(call_id).copied().unwrap_or(0);
                    rang.push(call_id.clone());
                    let Some(view) = self.call(call_id) else {
                        continue;
                    };
                    // Only a new ring at the switchboard (a participant
                    // added them once more) rings a device again.
                    if rings > self.rerung_count(call_id, &d.user) {
                        self.v
                            .push(format!("inv4: {name} rang twice for {call_id}"));
                        if ends >= rings {
                            self.v
                                .push(format!("inv6: {name} rang for {call_id} after it ended"));
                        }
                    }
                    let floor = Duration::from_secs(5).min(view.ring_timeout() / 2);
                    if *ring_remaining < floor {
                        self.v.push(format!(
                            "inv3: {name} rang for {call_id} with {ring_remaining:?} left"
                        ));
                    }
                    // This ring's deadline: the latest one whose ring had
                    // started when the device got it (the invite's, unless
                    // the callee was added to a running call).
                    let observed = self
                        .ring_deadlines
                        .get(&(call_id.clone(), d.user.clone()))
                        .and_then(|ds| {
                            ds.iter()
                                .copied()
                                .filter(|dl| {
                                    dl.checked_sub(view.ring_timeout())
                                        .is_none_or(|start| start <= *at)
                                })
                                .max()
                        });
                    let later = view.added_later(&d.user) || view.rung_again(&d.user) > 0;
                    let ring_deadline = match (observed, later) {
                        (Some(dl), false) => dl,
                        (Some(dl), true) if dl > *at => dl,
                        (None, false) => view.deadline(),
                        // A later ring that started and ended between two
                        // looks: its deadline is unknown here.
                        (_, true) => continue,
                    };
                    let deadline = ring_deadline + slack;
                    if *at >= deadline {
                        self.v.push(format!(
                            "inv3: {name} rang for {call_id} {:?} after its deadline",
                            at.duration_since(ring_deadline)
                        ));
                    } else if *at + *ring_remaining > deadline {
                        self.v.push(format!(
                            "inv3: {name} rang for {call_id} with {ring_remaining:?} left, \
                             past its deadline"
                        ));
                    }
                }
                AppEvent::IncomingCallCanceled { call_id, .. }
                | AppEvent::IncomingCallTimeout { call_id, .. }
                | AppEvent::IncomingCallDeclineButtonPressed { call_id, .. } => {
                    *ring_ended.entry(call_id.clone()).or_default() += 1;
                }
                AppEvent::IncomingCallAcceptButtonPressed { call_id, .. } => {
                    *ring_ended.entry(call_id.clone()).or_default() += 1;
                    self.accepted_by
                        .entry((call_id.clone(), d.user.clone()))
                        .or_default()
                        .push(n);
                }
                _ => {
                    let Some((call_id, callee, reason)) = outcome_of(e) else {
                        continue;
                    };
                    let Some(view) = self.call(call_id) else {
                        continue;
                    };
                    if view.caller().id == d.user {
                        outcomes
                            .entry((call_id.clone(), callee.clone()))
                            .or_default()
                            .push(reason);
                    } else if callee != &view.caller().id {
                        // A participant of a call that grew hears how an
                        // invitee's ring ended: no ring of its own ends.
                    } else {
                        // Glare: this device's invite joined the call, which
                        // ends its ring.
                        *ring_ended.entry(call_id.clone()).or_default() += 1;
                    }
                }
            }
        }
        rang.sort();
        rang.dedup_by(|a, b| a == b);
        let mut rings_of: HashMap<CallId, usize> = HashMap::new();
        for (_, e) in &d.events {
            if let AppEvent::IncomingCallReceived { call_id, .. } = e {
                *rings_of.entry(call_id.clone()).or_default() += 1;
            }
        }
        for call_id in &rang {
            let rings = rings_of[call_id];
            let ends = ring_ended.get(call_id).copied().unwrap_or(0);
            if ends > rings || (d.alive && ends != rings) {
                self.v.push(format!(
                    "inv1: {name}: the ring of {call_id} ended {ends} times; events: {}",
                    names(&d.events)
                ));
            }
        }

        // 1 on the caller side.
        for inv in self.record.invitations.iter().filter(|i| !i.joined) {
            let Some(view) = self.call(&inv.call_id) else {
                continue;
            };
            if view.caller().id != d.user {
                continue;
            }
            for callee in view.callees() {
                let seen = outcomes
                    .get(&(inv.call_id.clone(), callee.id.clone()))
                    .map_or(&[][..], Vec::as_slice);
                let rerung = view.rung_again(&callee.id) as usize;
                if seen.len() > 1 + rerung {
                    self.v.push(format!(
                        "inv1: {name}: the outcome of {} in {} seen {} times",
                        callee.id,
                        inv.call_id,
                        seen.len()
                    ));
                }
                let left = self.caller_left.contains(&inv.call_id);
                if inv.inviter == n && d.alive && !resynced && !left && seen.is_empty() {
                    self.v.push(format!(
                        "inv1: {name}: never learnt the outcome of {} in {}",
                        callee.id, inv.call_id
                    ));
                }
                let moved_on = rerung > 0 || view.joined_late(&callee.id) > 0;
                if let (Some(first), Some(truth), false) =
                    (seen.first(), view.outcome(&callee.id), moved_on)
                {
                    if *first != truth && *first != Reason::Timeout {
                        self.v.push(format!(
                            "inv1: {name}: {} in {} reported {first}, the switchboard says {truth}",
                            callee.id, inv.call_id
                        ));
                    }
                }
            }
        }

        // 5: in step with the switchboard at the end.
        if d.alive {
            let truth = Some(self.sb.last_seq(&d.user));
            if d.last_seq != truth {
                self.v.push(format!(
                    "inv5: {name} at seq {:?}, the switchboard at {truth:?}",
                    d.last_seq
                ));
            }
            if d.timer_armed == Some(true) {
                self.v.push(format!(
                    "inv5: {name} still has a timer armed after everything settled"
                ));
            }
        }
    }

    /// How many times the switchboard rang `user` again in `call_id`.
    fn rerung_count(&self, call_id: &CallId, user: &UserId) -> usize {
        self.sb
            .call(call_id)
            .map_or(0, |v| v.rung_again(user) as usize)
    }

    /// 2: one accepting device per callee, the one the switchboard recorded.
    fn accepts(&mut self) {
        let mut keys: Vec<_> = self.accepted_by.keys().cloned().collect();
        keys.sort();
        for key in keys {
            let (call_id, user) = &key;
            let devices = &self.accepted_by[&key];
            let names: Vec<&str> = devices
                .iter()
                .map(|i| self.record.devices[*i].name.as_str())
                .collect();
            let Some(view) = self.sb.call(call_id) else {
                continue; // reported by `call`
            };
            // One accept per ring: a callee rung again may accept again.
            if devices.len() > 1 + view.rung_again(user) as usize {
                self.v
                    .push(format!("inv2: {call_id}: {user} accepted on {names:?}"));
            }
            // The latest accept is the switchboard's, unless a later ring
            // ended otherwise or a late join moved the user's device.
            let settled_by_accept =
                view.outcome(user) == Some(Reason::Accepted) && view.joined_late(user) == 0;
            let last = devices.len() - 1;
            let device = &self.record.devices[devices[last]].device;
            let truth = view.answered_by(user);
            if settled_by_accept && truth != Some(device) {
                self.v.push(format!(
                    "inv2: {call_id}: {user} accepted on {}, the switchboard says {truth:?}",
                    names[last]
                ));
            }
        }
    }
}

/// The callee outcome an event tells the caller's side, if any.
fn outcome_of(e: &AppEvent) -> Option<(&CallId, &UserId, Reason)> {
    Some(match e {
        AppEvent::OutgoingCallAccepted {
            call_id, callee, ..
        } => (call_id, callee, Reason::Accepted),
        AppEvent::OutgoingCallDeclined {
            call_id, callee, ..
        } => (call_id, callee, Reason::Declined),
        AppEvent::OutgoingCallRejectedCauseBusy {
            call_id, callee, ..
        } => (call_id, callee, Reason::Busy),
        AppEvent::OutgoingCallTimeout {
            call_id, callee, ..
        } => (call_id, callee, Reason::Timeout),
        AppEvent::CalleeOutcome {
            call_id,
            callee,
            reason,
            ..
        } => (call_id, callee, *reason),
        _ => return None,
    })
}

fn names(events: &[(Instant, AppEvent)]) -> String {
    let mut s = String::new();
    for (i, (_, e)) in events.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{}", event_name(e));
    }
    s
}

/// A short name for an app event, for messages and test assertions.
pub fn event_name(e: &AppEvent) -> &'static str {
    match e {
        AppEvent::IncomingCallReceived { .. } => "incoming_received",
        AppEvent::IncomingCallCanceled { .. } => "incoming_canceled",
        AppEvent::IncomingCallTimeout { .. } => "incoming_timeout",
        AppEvent::IncomingCallAcceptButtonPressed { .. } => "accept_pressed",
        AppEvent::IncomingCallDeclineButtonPressed { .. } => "decline_pressed",
        AppEvent::OutgoingCallCancelButtonPressed { .. } => "cancel_pressed",
        AppEvent::OutgoingCallAccepted { .. } => "outgoing_accepted",
        AppEvent::OutgoingCallRejectedCauseBusy { .. } => "outgoing_busy",
        AppEvent::OutgoingCallDeclined { .. } => "outgoing_declined",
        AppEvent::OutgoingCallTimeout { .. } => "outgoing_timeout",
        AppEvent::AnsweredElsewhere { .. } => "answered_elsewhere",
        AppEvent::DeclinedElsewhere { .. } => "declined_elsewhere",
        AppEvent::CalleeRinging { .. } => "callee_ringing",
        AppEvent::CalleeDelivered { .. } => "callee_delivered",
        AppEvent::CalleeOutcome { .. } => "callee_outcome",
        AppEvent::OutgoingCallStarted { .. } => "outgoing_started",
        AppEvent::CallEnded { .. } => "call_ended",
        AppEvent::ParticipantJoined { .. } => "participant_joined",
        AppEvent::ParticipantLeft { .. } => "participant_left",
        AppEvent::Resynced { .. } => "resynced",
        AppEvent::Connection(_) => "connection",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::id::{RequestId, SequentialCallIds};
    use crate::model::{CallType, User};
    use crate::protocol::{Command, InviteRequest, ReplyResult};
    use crate::switchboard::{ConnId, SwitchboardConfig};

    /// Alice (one device) calls Bob (two devices); Bob's `d0` accepts one
    /// second in. Returns the switchboard, the call and the honest record.
    fn answered_call() -> (Switchboard, CallId, Record, Instant) {
        #[allow(clippy::disallowed_methods)] // the origin of test time
        let t0 = Instant::now();
        let mut sb = Switchboard::new(SwitchboardConfig::default(), SequentialCallIds::default());
        let (alice, bob) = (User::named("alice", "Alice"), User::named("bob", "Bob"));
        let dev = |s: &str| DeviceId::new(s).unwrap();
        sb.connect(t0, ConnId::new(1), alice.clone(), dev("d0"), None, None);
        sb.connect(t0, ConnId::new(2), bob.clone(), dev("d0"), None, None);
        sb.connect(t0, ConnId::new(3), bob.clone(), dev("d1"), None, None);
        let invite = Command::Invite(InviteRequest {
            callees: vec![bob.id.clone()],
            call_type: CallType::Voice,
            custom_data: None,
            timeout_s: Some(30),
        });
        let Ok(ReplyResult::Invited { call_id, .. }) =
            sb.handle_command(t0, ConnId::new(1), RequestId::new("r1").unwrap(), invite)
        else {
            panic!("invited")
        };
        let t1 = t0 + Duration::from_secs(1);
        let accept = Command::Accept {
            call_id: call_id.clone(),
            custom_data: None,
        };
        sb.handle_command(t1, ConnId::new(2), RequestId::new("r2").unwrap(), accept)
            .unwrap();
        while sb.poll_output().is_some() {}

        let ring = AppEvent::IncomingCallReceived {
            call_id: call_id.clone(),
            caller: alice.clone(),
            call_type: CallType::Voice,
            callees: Arc::from(vec![bob.clone()]),
            custom_data: None,
            ring_remaining: Duration::from_secs(30),
        };
        let mut record = Record::new(Duration::ZERO);
        let mut a = DeviceRecord::new("alice/d0", alice.id.clone(), dev("d0"));
        a.events = vec![(
            t1,
            AppEvent::OutgoingCallAccepted {
                call_id: call_id.clone(),
                callee: bob.id.clone(),
                custom_data: None,
            },
        )];
        a.last_seq = Some(sb.last_seq(&alice.id));
        let mut b0 = DeviceRecord::new("bob/d0", bob.id.clone(), dev("d0"));
        b0.events = vec![
            (t0, ring.clone()),
            (
                t1,
                AppEvent::IncomingCallAcceptButtonPressed {
                    call_id: call_id.clone(),
                },
            ),
        ];
        b0.last_seq = Some(sb.last_seq(&bob.id));
        let mut b1 = DeviceRecord::new("bob/d1", bob.id.clone(), dev("d1"));
        b1.events = vec![
            (t0, ring),
            (
                t1,
                AppEvent::IncomingCallCanceled {
                    call_id: call_id.clone(),
                    caller: alice,
                    custom_data: None,
                    reason: Reason::AnsweredElsewhere,
                },
            ),
        ];
        b1.last_seq = Some(sb.last_seq(&bob.id));
        record.devices = vec![a, b0, b1];
        record.invitations = vec![Acknowledged::new(call_id.clone(), 0, false)];
        (sb, call_id, record, t0)
    }

    fn check(sb: &Switchboard, record: &Record) -> Vec<String> {
        Oracle::new().finish(sb, record)
    }

    fn assert_caught(v: &[String], invariant: &str) {
        assert!(
            v.iter().any(|m| m.starts_with(invariant)),
            "expected {invariant}, got {v:#?}"
        );
    }

    #[test]
    fn an_honest_record_passes() {
        let (sb, _, record, _) = answered_call();
        assert_eq!(check(&sb, &record), Vec::<String>::new());
    }

    #[test]
    fn two_accepting_devices_are_caught() {
        let (sb, call_id, mut record, t0) = answered_call();
        record.devices[2].events[1] = (t0, AppEvent::IncomingCallAcceptButtonPressed { call_id });
        assert_caught(&check(&sb, &record), "inv2");
    }

    #[test]
    fn an_accept_on_another_device_than_the_switchboards_is_caught() {
        let (sb, call_id, mut record, t0) = answered_call();
        record.devices[1].events.pop();
        record.devices[1].events.push((
            t0,
            AppEvent::IncomingCallCanceled {
                call_id: call_id.clone(),
                caller: User::named("alice", "Alice"),
                custom_data: None,
                reason: Reason::AnsweredElsewhere,
            },
        ));
        record.devices[2].events[1] = (t0, AppEvent::IncomingCallAcceptButtonPressed { call_id });
        let v = check(&sb, &record);
        assert!(
            v.iter()
                .any(|m| m.contains("the switchboard says Some(DeviceId(\"d0\"))")),
            "{v:#?}"
        );
    }

    #[test]
    fn a_lost_or_doubled_or_wrong_outcome_is_caught() {
        let (sb, call_id, mut record, t0) = answered_call();
        let accepted = record.devices[0].events[0].clone();
        record.devices[0].events.clear();
        assert_caught(&check(&sb, &record), "inv1: alice/d0: never learnt");
        record.devices[0].events = vec![accepted.clone(), accepted];
        assert_caught(&check(&sb, &record), "inv1: alice/d0: the outcome");
        record.devices[0].events = vec![(
            t0,
            AppEvent::OutgoingCallDeclined {
                call_id,
                callee: UserId::new("bob").unwrap(),
                custom_data: None,
            },
        )];
        assert_caught(
            &check(&sb, &record),
            "inv1: alice/d0: bob in call-1 reported",
        );
    }

    #[test]
    fn a_ring_that_never_ends_or_ends_twice_is_caught() {
        let (sb, _, mut record, _) = answered_call();
        let end = record.devices[2].events.pop().unwrap();
        assert_caught(&check(&sb, &record), "inv1: bob/d1: the ring");
        record.devices[2].alive = false;
        assert!(
            check(&sb, &record).is_empty(),
            "a stopped device may miss it"
        );
        record.devices[2].events.push(end.clone());
        record.devices[2].events.push(end);
        assert_caught(&check(&sb, &record), "inv1: bob/d1: the ring");
    }

    #[test]
    fn a_late_short_or_repeated_ring_is_caught() {
        let (sb, _, record, t0) = answered_call();
        let ring = record.devices[2].events[0].1.clone();
        let mut late = record.clone();
        late.devices[2].events[0].0 = t0 + Duration::from_secs(30);
        assert_caught(&check(&sb, &late), "inv3");
        late.slack = Duration::from_secs(2);
        assert_caught(&check(&sb, &late), "inv3");
        late.slack = Duration::ZERO;
        late.devices[2].events[0].0 = t0 + Duration::from_secs(1);
        assert_caught(
            &check(&sb, &late),
            "inv3: bob/d1 rang for call-1 with 30s left, past",
        );
        late.slack = Duration::from_secs(1);
        assert!(check(&sb, &late).is_empty(), "within the slack");

        let mut again = record.clone();
        again.devices[2].events.push((t0, ring));
        let v = check(&sb, &again);
        assert_caught(&v, "inv6");
        assert_caught(&v, "inv4: bob/d1 rang twice");
    }

    #[test]
    fn a_join_or_leave_seen_twice_in_a_row_is_caught() {
        let (sb, call_id, mut record, t0) = answered_call();
        let joined = AppEvent::ParticipantJoined {
            call_id: call_id.clone(),
            user: UserId::new("carol").unwrap(),
            device: DeviceId::new("d0").unwrap(),
        };
        let left = AppEvent::ParticipantLeft {
            call_id,
            user: UserId::new("carol").unwrap(),
            reason: crate::protocol::LeaveReason::Left,
        };
        // Joined, left, joined again: in order.
        record.devices[0].events.extend([
            (t0, joined.clone()),
            (t0, left.clone()),
            (t0, joined.clone()),
        ]);
        assert_eq!(check(&sb, &record), Vec::<String>::new());
        record.devices[0].events.push((t0, joined));
        assert_caught(
            &check(&sb, &record),
            "inv8: alice/d0: carol joined call-1 twice",
        );
        record.devices[0].events.pop();
        record.devices[0]
            .events
            .extend([(t0, left.clone()), (t0, left)]);
        assert_caught(
            &check(&sb, &record),
            "inv8: alice/d0: carol left call-1 twice",
        );
    }

    #[test]
    fn a_duplicate_event_a_missing_callback_and_a_stale_device_are_caught() {
        let (sb, _, mut record, _) = answered_call();
        let first = record.devices[0].events[0].clone();
        record.devices[0].events.push(first.clone());
        assert_caught(&check(&sb, &record), "inv4: alice/d0 saw twice");
        record.devices[0].events.pop();
        record.devices[0].handler = Some(HandlerRecord::new(vec![first.1], Vec::new()));
        assert_caught(&check(&sb, &record), "inv4: alice/d0: the stream had 1");
        record.devices[0].handler = None;
        record.devices[1].last_seq = Some(0);
        assert_caught(&check(&sb, &record), "inv5: bob/d0 at seq");
        record.devices[1].last_seq = Some(sb.last_seq(&UserId::new("bob").unwrap()));
        record.devices[1].timer_armed = Some(true);
        assert_caught(&check(&sb, &record), "inv5: bob/d0 still has a timer");
    }

    #[test]
    fn a_ringing_switchboard_and_an_unended_invitation_are_caught() {
        #[allow(clippy::disallowed_methods)] // the origin of test time
        let t0 = Instant::now();
        let mut sb = Switchboard::new(SwitchboardConfig::default(), SequentialCallIds::default());
        let dev = DeviceId::new("d0").unwrap();
        sb.connect(
            t0,
            ConnId::new(1),
            User::named("a", "A"),
            dev.clone(),
            None,
            None,
        );
        sb.connect(t0, ConnId::new(2), User::named("b", "B"), dev, None, None);
        let invite = Command::Invite(InviteRequest {
            callees: vec![UserId::new("b").unwrap()],
            call_type: CallType::Voice,
            custom_data: None,
            timeout_s: Some(30),
        });
        let Ok(ReplyResult::Invited { call_id, .. }) =
            sb.handle_command(t0, ConnId::new(1), RequestId::new("r1").unwrap(), invite)
        else {
            panic!("invited")
        };
        let mut oracle = Oracle::new();
        oracle.observe(&sb);
        assert!(oracle.violations().is_empty(), "a ring has a deadline");
        let mut record = Record::new(Duration::ZERO);
        record.invitations = vec![Acknowledged::new(call_id, 0, false)];
        record.devices = vec![DeviceRecord::new(
            "a/d0",
            UserId::new("a").unwrap(),
            DeviceId::new("d0").unwrap(),
        )];
        let v = oracle.finish(&sb, &record);
        assert_caught(&v, "inv7: the switchboard still has a timer");
        assert_caught(&v, "inv7: call-1 still rings");
        assert_caught(&v, "inv1: call-1 has no outcome for b");
    }

    /// A receipt the caller learned from a device that rang passes once;
    /// from a device that never rang, before it rang, or twice, it is caught.
    #[test]
    fn receipts_from_devices_that_did_not_ring_or_twice_are_caught() {
        let (sb, call_id, mut record, t0) = answered_call();
        let delivered = |device: &str| AppEvent::CalleeDelivered {
            call_id: call_id.clone(),
            callee: UserId::new("bob").unwrap(),
            device: DeviceId::new(device).unwrap(),
        };
        let t1 = t0 + Duration::from_millis(1);
        record.devices[0].events.insert(0, (t1, delivered("d1")));
        assert_eq!(check(&sb, &record), Vec::<String>::new());

        let mut twice = record.clone();
        twice.devices[0].events.insert(1, (t1, delivered("d1")));
        assert_caught(&check(&sb, &twice), "inv4");

        let mut stranger = record.clone();
        stranger.devices[0].events.insert(1, (t1, delivered("d9")));
        assert_caught(&check(&sb, &stranger), "inv9");

        let mut early = record;
        let before = t0.checked_sub(Duration::from_millis(1)).unwrap();
        early.devices[0].events.insert(0, (before, delivered("d0")));
        assert_caught(&check(&sb, &early), "inv9");
    }
}
