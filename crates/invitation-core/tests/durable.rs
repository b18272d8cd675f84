//! The durable switchboard: a journal of inputs plus snapshots rebuild the
//! exact state, and the rebuilt switchboard then behaves, output for output,
//! as the original would have.

use std::time::{Duration, Instant};

use invitation_core::durable::{
    Durable, JournalEntry, JournalInput, RecoverError, SNAPSHOT_VERSION, SwitchboardSnapshot,
    TimeFrame,
};
use invitation_core::protocol::{
    Command, Event, InviteRequest, PushPlatform, PushRegistration, ReplyResult, ServerBody,
};
use invitation_core::switchboard::PushNotice;
use invitation_core::{
    BusyPolicy, CallId, CallNotice, CallType, CommandError, ConnId, CustomData, DeviceId,
    EndPolicy, Output, Reason, RequestId, SequentialCallIds, SwitchboardConfig, User, UserId,
};

const UNIX_T0: i64 = 1_767_225_600_123_456_789;

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}
fn user(s: &str) -> User {
    User::new(uid(s), s).unwrap()
}
fn did(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}
fn rid(s: &str) -> RequestId {
    RequestId::new(s).unwrap()
}

/// The origin of test time.
#[allow(clippy::disallowed_methods)]
fn origin() -> Instant {
    Instant::now()
}

/// splitmix64: a seeded, portable random source.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

const USERS: [&str; 5] = ["u0", "u1", "u2", "u3", "u4"];
/// Named as a callee, never connects (held invitations, idle records).
const GHOST: &str = "ghost";
const DEVICES: [&str; 2] = ["d0", "d1"];

/// One input of the workload, at `at` after the start.
#[derive(Debug, Clone)]
enum Input {
    Connect {
        conn: u64,
        user: usize,
        device: usize,
        /// Resume this many events behind the server's newest (`None`: a
        /// fresh start).
        back: Option<u64>,
    },
    Disconnect(u64),
    Command(u64, RequestId, Command),
    Sync(u64, RequestId),
    Receipt(u64, CallId),
    Timeout,
}

#[derive(Debug, Clone)]
struct Step {
    at: Duration,
    /// The input's `now` is this much earlier than `at` (an owner whose
    /// clock readings are not in order: the switchboard never goes back).
    skew: Duration,
    input: Input,
}

/// A seeded random workload: devices come and go (some resume, some start
/// fresh), invite groups, answer, cancel, hang up, add, join, end, send
/// receipts and syncs, retry commands with the same request id; time moves
/// by microseconds to seconds, and timers fire when due.
fn workload(seed: u64, n: usize) -> Vec<Step> {
    let mut rng = Rng(seed);
    let mut at = Duration::from_nanos(rng.below(1_000_000_000));
    let mut next_conn = 1u64;
    // The connection the workload believes each device has.
    let mut conns: Vec<Option<u64>> = vec![None; USERS.len() * DEVICES.len()];
    let mut invites = 0u64;
    let mut request = 0u64;
    let mut sent: Vec<(u64, RequestId, Command)> = Vec::new();
    let mut steps = Vec::new();
    for _ in 0..n {
        // Time: mostly small steps, sometimes past a ring deadline.
        at += match rng.below(20) {
            0..=8 => Duration::from_micros(rng.below(2_000)),
            9..=16 => Duration::from_millis(rng.below(1_500)),
            17 => Duration::from_secs(5 + rng.below(20)),
            _ => Duration::ZERO,
        };
        let open: Vec<(usize, u64)> = conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.map(|c| (i, c)))
            .collect();
        let call = |rng: &mut Rng| -> CallId {
            let n = 1 + rng.below(invites + 1);
            CallId::new(format!("call-{n}")).unwrap()
        };
        let data = |rng: &mut Rng| -> Option<CustomData> {
            rng.chance(0.2)
                .then(|| CustomData::new(format!("data-{}", rng.below(100))).unwrap())
        };
        let roll = rng.below(100);
        let input = if open.is_empty() || roll < 15 {
            let dev = rng.below(conns.len() as u64) as usize;
            let conn = next_conn;
            next_conn += 1;
            conns[dev] = Some(conn);
            let back = match rng.below(4) {
                0 => None,
                1 => Some(0),
                _ => Some(rng.below(15)),
            };
            Input::Connect {
                conn,
                user: dev / DEVICES.len(),
                device: dev % DEVICES.len(),
                back,
            }
        } else if roll < 22 {
            let (dev, conn) = open[rng.below(open.len() as u64) as usize];
            conns[dev] = None;
            Input::Disconnect(conn)
        } else if roll < 26 {
            // A user goes offline on every device (becomes idle once their
            // calls end).
            let u = rng.below(USERS.len() as u64) as usize;
            let mut last = None;
            for d in 0..DEVICES.len() {
                if let Some(conn) = conns[u * DEVICES.len() + d].take() {
                    if let Some(prev) = last.replace(conn) {
                        steps.push(Step {
                            at,
                            skew: Duration::ZERO,
                            input: Input::Disconnect(prev),
                        });
                    }
                }
            }
            match last {
                Some(conn) => Input::Disconnect(conn),
                None => Input::Timeout,
            }
        } else if roll < 30 {
            Input::Timeout
        } else if roll < 34 {
            let (_, conn) = open[rng.below(open.len() as u64) as usize];
            request += 1;
            Input::Sync(conn, rid(&format!("s{request}")))
        } else if roll < 38 {
            let (_, conn) = open[rng.below(open.len() as u64) as usize];
            Input::Receipt(conn, call(&mut rng))
        } else if roll < 44 && !sent.is_empty() {
            // A retry: the same request again, maybe on a newer connection
            // of the same device.
            let (conn, id, command) = sent[rng.below(sent.len() as u64) as usize].clone();
            let dev = open.iter().find(|(_, c)| *c == conn).map(|(d, _)| *d);
            let conn = dev.and_then(|d| conns[d]).unwrap_or(conn);
            Input::Command(conn, id, command)
        } else {
            let (dev, conn) = open[rng.below(open.len() as u64) as usize];
            let me = dev / DEVICES.len();
            let command = match rng.below(23) {
                0..=5 => {
                    let mut callees = Vec::new();
                    for _ in 0..1 + rng.below(3) {
                        let u = rng.below(USERS.len() as u64) as usize;
                        if u != me && !callees.contains(&uid(USERS[u])) {
                            callees.push(uid(USERS[u]));
                        }
                    }
                    if callees.is_empty() || rng.chance(0.15) {
                        callees.push(uid(GHOST));
                    }
                    invites += 1;
                    Command::Invite(
                        InviteRequest::new(callees, CallType::Video)
                            .with_custom_data(data(&mut rng))
                            .with_timeout_s(Some([1, 5, 10, 30][rng.below(4) as usize])),
                    )
                }
                6..=9 => Command::Accept {
                    call_id: call(&mut rng),
                    custom_data: data(&mut rng),
                },
                10..=11 => Command::Decline {
                    call_id: call(&mut rng),
                    busy: rng.chance(0.3),
                    custom_data: data(&mut rng),
                },
                12..=13 => Command::Cancel {
                    call_id: call(&mut rng),
                    custom_data: data(&mut rng),
                },
                14..=15 => Command::HangUp {
                    call_id: call(&mut rng),
                    custom_data: data(&mut rng),
                },
                16 => Command::Add {
                    call_id: call(&mut rng),
                    callees: vec![uid(USERS[rng.below(USERS.len() as u64) as usize])],
                },
                17 => Command::Join {
                    call_id: call(&mut rng),
                },
                18 => Command::End {
                    call_id: call(&mut rng),
                },
                19 => {
                    let platform = [PushPlatform::Apns, PushPlatform::Fcm][rng.below(2) as usize];
                    let token = format!("tok-{}", rng.below(1000));
                    Command::RegisterPush(PushRegistration::new(platform, token))
                }
                20 => Command::AppState {
                    background: rng.chance(0.5),
                },
                21 => Command::UnregisterPush,
                _ => Command::Received {
                    call_id: call(&mut rng),
                },
            };
            request += 1;
            let id = rid(&format!("r{request}"));
            sent.push((conn, id.clone(), command.clone()));
            Input::Command(conn, id, command)
        };
        let skew = if rng.chance(0.15) {
            Duration::from_micros(rng.below(300_000))
        } else {
            Duration::ZERO
        };
        steps.push(Step { at, skew, input });
    }
    steps
}

/// `call-{first}`, `call-{first + 1}` ...: the generator of a server that
/// drew `first - 1` ids before (ids never repeat across restarts).
fn ids_from(first: u64) -> impl FnMut() -> CallId + Send {
    let mut n = first;
    move || {
        n += 1;
        CallId::new(format!("call-{}", n - 1)).unwrap()
    }
}

/// Call ids drawn in these entries.
fn drawn(entries: &[JournalEntry]) -> u64 {
    entries.iter().map(|e| e.ids.len() as u64).sum()
}

/// What one input produced.
#[derive(Debug, Clone, PartialEq)]
struct Produced {
    outputs: Vec<Output>,
    notices: Vec<CallNotice>,
    pushes: Vec<PushNotice>,
}

fn apply(d: &mut Durable, t0: Instant, step: &Step) -> Produced {
    let now = t0 + step.at.saturating_sub(step.skew);
    match &step.input {
        Input::Connect {
            conn,
            user: u,
            device,
            back,
        } => {
            let name = USERS[*u];
            let last_seq = back.map(|b| d.last_seq(&uid(name)).saturating_sub(b));
            d.connect(
                now,
                ConnId::new(*conn),
                user(name),
                did(DEVICES[*device]),
                last_seq,
                Some(rid("hello")),
            );
        }
        Input::Disconnect(conn) => d.disconnect(now, ConnId::new(*conn)),
        Input::Command(conn, id, command) => {
            let _ = d.handle_command(now, ConnId::new(*conn), id.clone(), command.clone());
        }
        Input::Sync(conn, id) => d.handle_sync(now, ConnId::new(*conn), id.clone()),
        Input::Receipt(conn, call) => d.handle_receipt(now, ConnId::new(*conn), call),
        Input::Timeout => d.handle_timeout(now),
    }
    drain(d)
}

fn drain(d: &mut Durable) -> Produced {
    let mut p = Produced {
        outputs: Vec::new(),
        notices: Vec::new(),
        pushes: Vec::new(),
    };
    while let Some(push) = d.poll_push() {
        p.pushes.push(push);
    }
    while let Some(o) = d.poll_output() {
        p.outputs.push(o);
    }
    while let Some(n) = d.poll_notice() {
        p.notices.push(n);
    }
    p
}

/// Through JSON and back, as the files keep them.
fn through_json_entries(entries: &[JournalEntry]) -> Vec<JournalEntry> {
    entries
        .iter()
        .map(|e| {
            let line = serde_json::to_string(e).unwrap();
            let back: JournalEntry = serde_json::from_str(&line).unwrap();
            assert_eq!(&back, e, "{line}");
            back
        })
        .collect()
}

fn through_json(s: &SwitchboardSnapshot) -> SwitchboardSnapshot {
    let text = serde_json::to_string(s).unwrap();
    let back: SwitchboardSnapshot = serde_json::from_str(&text).unwrap();
    assert_eq!(&back, s);
    back
}

/// A snapshot as JSON without what depends on the request-id memory's
/// hasher seed (a switchboard rebuilt from the journal alone hashes with a
/// new one): the seed, the digests, and which users are tracked exactly
/// (a user is, once the counter it shares with others by hash passes the
/// share: who shares depends on the seed; what is kept and forgotten does
/// not). Everything else must be equal.
fn without_digests(s: &SwitchboardSnapshot) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap();
    let requests = v.get_mut("requests").unwrap();
    requests["seed"] = serde_json::Value::Null;
    requests["heavy"] = serde_json::Value::Null;
    for e in requests["order"].as_array_mut().unwrap() {
        e["digest"] = serde_json::Value::Null;
    }
    v
}

fn small_config(variant: u64) -> SwitchboardConfig {
    let mut c = SwitchboardConfig::default();
    c.retention = Duration::from_secs(20);
    c.max_tombstones = 8;
    c.max_remembered_requests = 40;
    c.max_remembered_requests_per_user = 3;
    c.resume_buffer = 10;
    c.recent_ended_per_user = 3;
    c.caller_gone_grace = Duration::from_secs(4);
    c.push = true;
    c.max_push_devices = 1 + variant as usize % 2;
    if variant % 2 == 1 {
        c.busy_policy = BusyPolicy::RingAnyway;
        c.end_policy = EndPolicy::AnyParticipant;
        c.hide_callee_status = true;
    }
    c
}

/// Drives the original through `steps[..cut]`, snapshotting after
/// `snap_at` steps; returns it, the snapshot, the journal before and after
/// the snapshot, and the latest time it saw.
struct Original {
    d: Durable,
    snapshot: SwitchboardSnapshot,
    before: Vec<JournalEntry>,
    after: Vec<JournalEntry>,
    /// The notices of the inputs after the snapshot.
    notices_after: Vec<CallNotice>,
}

fn original(
    config: SwitchboardConfig,
    frame: TimeFrame,
    t0: Instant,
    steps: &[Step],
    snap_at: usize,
) -> Original {
    let mut d = Durable::new(config, SequentialCallIds::default(), frame);
    let mut before = Vec::new();
    let mut after = Vec::new();
    let mut snapshot = None;
    let mut notices_after = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        if i == snap_at {
            d.drain_journal(&mut before);
            snapshot = Some(d.snapshot());
        }
        let produced = apply(&mut d, t0, step);
        if i >= snap_at {
            notices_after.extend(produced.notices);
        }
    }
    if snapshot.is_none() {
        d.drain_journal(&mut before);
        snapshot = Some(d.snapshot());
    }
    d.drain_journal(&mut after);
    Original {
        d,
        snapshot: snapshot.unwrap(),
        before,
        after,
        notices_after,
    }
}

#[test]
fn recovered_switchboards_behave_exactly_as_the_original() {
    let mut compared_outputs = 0usize;
    let mut compared_pushes = 0usize;
    let mut replayed_notices = 0usize;
    let mut compared_states = 0usize;
    let mut replayed = 0usize;
    let mut dropped = 0usize;
    let mut ringing = 0usize;
    for seed in 0..12u64 {
        let steps = workload(seed, 500);
        let t0 = origin();
        let frame = TimeFrame::new(t0, UNIX_T0);
        // The same moments seen from a later boot: a new instant base.
        let later = TimeFrame::new(t0 + Duration::from_secs(3600), UNIX_T0 + 3_600_000_000_000);
        let config = small_config(seed);
        let mut rng = Rng(seed ^ 0xc0ff_ee00);
        for _ in 0..4 {
            let cut = 20 + rng.below(steps.len() as u64 - 40) as usize;
            // Mostly shortly before the cut (what the snapshot holds is
            // then still live at the cut), sometimes long before.
            let snap_at = if rng.chance(0.7) {
                cut - 1 - rng.below(12) as usize
            } else {
                rng.below(cut as u64) as usize
            };
            let (head, tail) = steps.split_at(cut);
            let mut a = original(config.clone(), frame, t0, head, snap_at);
            // The original's connections die with it at the last moment it
            // saw; the recovered ones drop theirs at that same moment.
            let crash = t0
                + head
                    .iter()
                    .map(|s| s.at.saturating_sub(s.skew))
                    .max()
                    .unwrap();
            let mut open: Vec<u64> = Vec::new();
            for e in a.before.iter().chain(&a.after) {
                match e.input {
                    JournalInput::Connect { .. } => open.push(e.conn.unwrap()),
                    JournalInput::Disconnect => open.retain(|c| Some(*c) != e.conn),
                    _ => {}
                }
            }
            open.sort_unstable();
            open.dedup();
            for conn in &open {
                a.d.disconnect(crash, ConnId::new(*conn));
            }
            let at_cut = drain(&mut a.d);
            assert!(at_cut.outputs.is_empty(), "{at_cut:?}");

            let snapshot = through_json(&a.snapshot);
            let next = 1 + drawn(&a.before) + drawn(&a.after);
            let (mut b1, r1) = Durable::recover(
                config.clone(),
                ids_from(next),
                frame,
                Some(snapshot),
                through_json_entries(&a.after),
                crash,
            )
            .unwrap();
            let all: Vec<JournalEntry> = a.before.iter().chain(&a.after).cloned().collect();
            let (mut b2, r2) = Durable::recover(
                config.clone(),
                ids_from(next),
                later,
                None,
                through_json_entries(&all),
                crash,
            )
            .unwrap();
            assert_eq!(r1.entries, a.after.len());
            // The replay made the notices the original made after the
            // snapshot (what an owner sends on again after a crash).
            assert_eq!(
                b1.take_replayed_notices(),
                a.notices_after,
                "seed {seed} cut {cut} snap {snap_at}"
            );
            replayed_notices += a.notices_after.len();
            assert_eq!(r2.entries, all.len());
            assert_eq!(
                (r1.calls, r1.ringing, r1.users),
                (r2.calls, r2.ringing, r2.users)
            );
            assert_eq!(r1.dropped, r2.dropped);
            assert_eq!(r1.dropped, a.d.connection_count().max(r1.dropped));
            assert_eq!(b1.connection_count(), 0);
            replayed += r1.entries + r2.entries;
            dropped += r1.dropped;
            ringing += r1.ringing;
            // The recovered journals start with the run's settings, then
            // the drop.
            let mut j = Vec::new();
            b1.drain_journal(&mut j);
            assert_eq!(j.len(), 1 + usize::from(r1.dropped > 0));
            assert!(
                matches!(j[0].input, JournalInput::Settings(_)),
                "{:?}",
                j[0]
            );
            if let Some(e) = j.get(1) {
                assert_eq!(e.input, JournalInput::Restart);
                assert_eq!(e.at, frame.to_unix_ns(crash));
            }
            b2.drain_journal(&mut Vec::new());

            // The same further inputs, then a fresh connection per user
            // (a full sync of everything each user has).
            let mut further = tail.to_vec();
            let end = tail.last().map_or(crash, |s| t0 + s.at);
            for (i, name) in USERS.iter().enumerate() {
                further.push(Step {
                    at: end - t0 + Duration::from_millis(1),
                    skew: Duration::ZERO,
                    input: Input::Connect {
                        conn: 10_000 + i as u64,
                        user: i,
                        device: 0,
                        back: None,
                    },
                });
                let _ = name;
            }
            for (k, step) in further.iter().enumerate() {
                let pa = apply(&mut a.d, t0, step);
                let p1 = apply(&mut b1, t0, step);
                let p2 = apply(&mut b2, t0, step);
                assert_eq!(
                    pa, p1,
                    "seed {seed} cut {cut} snap {snap_at} step {k}: {step:?}"
                );
                assert_eq!(
                    pa, p2,
                    "seed {seed} cut {cut} (journal only) step {k}: {step:?}"
                );
                compared_outputs += pa.outputs.len();
                compared_pushes += pa.pushes.len();
                // Once an input was journaled (a timeout with nothing due is
                // not, and the original may have forgotten expired history
                // at it), the whole states are equal again.
                let journaled = b1.journal_len() > 0;
                b1.drain_journal(&mut Vec::new());
                if journaled {
                    assert_eq!(
                        a.d.snapshot(),
                        b1.snapshot(),
                        "seed {seed} cut {cut} step {k}"
                    );
                    compared_states += 1;
                    if k % 8 == 0 {
                        assert_eq!(
                            without_digests(&a.d.snapshot()),
                            without_digests(&b2.snapshot()),
                            "seed {seed} cut {cut} step {k}: journal only"
                        );
                    }
                }
            }
            // Every user's full sync was among them; the states are equal.
            let (sa, s1, s2) = (a.d.snapshot(), b1.snapshot(), b2.snapshot());
            assert_eq!(sa, s1, "seed {seed} cut {cut}: snapshot + journal");
            assert_eq!(
                without_digests(&sa),
                without_digests(&s2),
                "seed {seed} cut {cut}: journal only"
            );
            for name in USERS {
                assert_eq!(a.d.last_seq(&uid(name)), b1.last_seq(&uid(name)));
            }
        }
    }
    println!(
        "12 seeds x 4 cuts: {replayed} entries replayed, {dropped} connections dropped, \
         {ringing} calls ringing at the cuts, {compared_outputs} outputs, \
         {compared_pushes} pushes and {compared_states} whole states compared"
    );
    assert!(compared_pushes > 50, "{compared_pushes}");
    assert!(
        replayed_notices > 100,
        "{replayed_notices} notices replayed"
    );
    assert!(compared_outputs > 10_000, "{compared_outputs}");
    assert!(ringing > 0 && dropped > 0, "{ringing} {dropped}");
}

/// Two devices and an invitation, on a switchboard journaling from `t`.
struct Setup {
    d: Durable,
    t: Instant,
    frame: TimeFrame,
}

fn setup(timeout_s: u32) -> (Setup, CallId) {
    // Sub-millisecond offsets everywhere: a journal that rounded to
    // milliseconds would move the deadline.
    let t = origin() + Duration::from_nanos(123_456_789);
    let frame = TimeFrame::new(t - Duration::from_nanos(987_654_321), UNIX_T0);
    let mut d = Durable::new(
        SwitchboardConfig::default(),
        SequentialCallIds::default(),
        frame,
    );
    d.connect(t, ConnId::new(1), user("alice"), did("a"), None, None);
    d.connect(t, ConnId::new(2), user("bob"), did("b"), None, None);
    let at = t + Duration::from_micros(777);
    let r = d
        .handle_command(
            at,
            ConnId::new(1),
            rid("inv"),
            Command::Invite(
                InviteRequest::new(vec![uid("bob")], CallType::Voice)
                    .with_timeout_s(Some(timeout_s)),
            ),
        )
        .unwrap();
    let ReplyResult::Invited { call_id, .. } = r else {
        panic!("{r:?}")
    };
    drain(&mut d);
    (Setup { d, t: at, frame }, call_id)
}

fn accept_near_deadline(
    offset: i64,
) -> (
    Result<ReplyResult, CommandError>,
    Option<Reason>,
    Option<Reason>,
) {
    let (mut s, call) = setup(5);
    let deadline = s.d.call(&call).unwrap().deadline();
    assert_eq!(deadline, s.t + Duration::from_secs(5));
    let at = if offset < 0 {
        deadline - Duration::from_micros(offset.unsigned_abs())
    } else {
        deadline + Duration::from_micros(offset as u64)
    };
    let accept = Command::Accept {
        call_id: call.clone(),
        custom_data: None,
    };
    let live = s.d.handle_command(at, ConnId::new(2), rid("acc"), accept);
    let original = s.d.call(&call).unwrap().outcome(&uid("bob"));
    let mut journal = Vec::new();
    s.d.drain_journal(&mut journal);
    // Recovered on a later boot from the journal alone.
    let later = TimeFrame::new(
        s.t + Duration::from_secs(7200),
        s.frame.to_unix_ns(s.t) + 7_200_000_000_000,
    );
    let (b, _) = Durable::recover(
        SwitchboardConfig::default(),
        SequentialCallIds::default(),
        later,
        None,
        through_json_entries(&journal),
        at,
    )
    .unwrap();
    let replayed = b.call(&call).unwrap().outcome(&uid("bob"));
    (live, original, replayed)
}

#[test]
fn replay_keeps_an_accept_one_microsecond_before_the_deadline() {
    let (live, original, replayed) = accept_near_deadline(-1);
    assert_eq!(live, Ok(ReplyResult::Done));
    assert_eq!(original, Some(Reason::Accepted));
    assert_eq!(replayed, Some(Reason::Accepted));
}

#[test]
fn replay_keeps_a_timeout_one_microsecond_after_the_deadline() {
    let (live, original, replayed) = accept_near_deadline(1);
    assert_eq!(
        live,
        Err(CommandError::Ended {
            reason: Reason::Timeout
        })
    );
    assert_eq!(original, Some(Reason::Timeout));
    assert_eq!(replayed, Some(Reason::Timeout));
}

fn count_events(p: &Produced, conn: u64, f: impl Fn(&Event) -> bool) -> usize {
    p.outputs
        .iter()
        .filter(|o| match o {
            Output::Send { conn: c, message } => {
                c.get() == conn
                    && matches!(&message.body, ServerBody::Event { event, .. } if f(event))
            }
            Output::Close { .. } => false,
        })
        .count()
}

#[test]
fn a_deadline_that_passed_while_down_fires_once_on_the_first_timeout() {
    let (mut s, call) = setup(5);
    let mut journal = Vec::new();
    s.d.drain_journal(&mut journal);
    let snapshot = s.d.snapshot();
    let caller_seq = s.d.last_seq(&uid("alice"));
    drop(s.d); // kill -9, one second after the invite
    let now = s.t + Duration::from_secs(60);
    let (mut b, r) = Durable::recover(
        SwitchboardConfig::default(),
        SequentialCallIds::default(),
        s.frame,
        Some(through_json(&snapshot)),
        Vec::new(),
        now,
    )
    .unwrap();
    assert_eq!((r.entries, r.calls, r.ringing, r.dropped), (0, 1, 1, 2));
    // Nothing fired yet: the call still rings, its deadline is due.
    assert!(b.call(&call).unwrap().is_ringing());
    assert_eq!(b.poll_timeout(), Some(s.t + Duration::from_secs(5)));
    assert!(drain(&mut b).outputs.is_empty());
    b.handle_timeout(now);
    let fired = drain(&mut b);
    let outcomes: Vec<&CallNotice> = fired
        .notices
        .iter()
        .filter(|n| matches!(n, CallNotice::Outcome { .. }))
        .collect();
    assert_eq!(outcomes.len(), 1, "{:?}", fired.notices);
    assert!(matches!(
        outcomes[0],
        CallNotice::Outcome { reason: Reason::Timeout, callee, .. } if *callee == uid("bob")
    ));
    assert_eq!(b.call(&call).unwrap().ended(), Some(Reason::Timeout));
    assert_eq!(b.poll_timeout(), None);
    b.handle_timeout(now + Duration::from_secs(1));
    assert!(drain(&mut b).notices.is_empty());
    // The journal: the run's settings, the drop, then the timeout, at the
    // restart's time.
    let mut j = Vec::new();
    b.drain_journal(&mut j);
    assert!(
        matches!(j[0].input, JournalInput::Settings(_)),
        "{:?}",
        j[0]
    );
    let inputs: Vec<&JournalInput> = j[1..].iter().map(|e| &e.input).collect();
    assert_eq!(inputs, [&JournalInput::Restart, &JournalInput::Timeout]);
    assert_eq!(j[2].at, s.frame.to_unix_ns(now));
    // The caller resumes and learns the outcome exactly once.
    b.connect(
        now,
        ConnId::new(3),
        user("alice"),
        did("a"),
        Some(caller_seq),
        None,
    );
    let resumed = drain(&mut b);
    let n = count_events(&resumed, 3, |e| matches!(e, Event::CalleeOutcome { .. }));
    assert_eq!(n, 1, "{:?}", resumed.outputs);
}

#[test]
fn a_ringing_callers_grace_counts_from_the_restart() {
    let (mut s, call) = setup(120);
    let mut journal = Vec::new();
    s.d.drain_journal(&mut journal);
    let now = s.t + Duration::from_secs(40);
    let (b, r) = Durable::recover(
        SwitchboardConfig::default(),
        SequentialCallIds::default(),
        s.frame,
        None,
        journal,
        now,
    )
    .unwrap();
    assert_eq!(r.dropped, 2);
    let view = b.call(&call).unwrap();
    assert!(view.is_ringing());
    assert_eq!(view.caller_gone_at(), Some(now + Duration::from_secs(15)));
    assert_eq!(b.poll_timeout(), Some(now + Duration::from_secs(15)));
}

#[test]
fn an_unknown_snapshot_version_is_refused() {
    let (s, _) = setup(5);
    let snapshot = s.d.snapshot();
    assert_eq!(snapshot.version(), SNAPSHOT_VERSION);
    let mut json = serde_json::to_value(&snapshot).unwrap();
    json["version"] = serde_json::json!(SNAPSHOT_VERSION + 1);
    let future: SwitchboardSnapshot = serde_json::from_value(json).unwrap();
    let err = Durable::recover(
        SwitchboardConfig::default(),
        SequentialCallIds::default(),
        s.frame,
        Some(future),
        Vec::new(),
        s.t,
    )
    .unwrap_err();
    assert_eq!(
        err,
        RecoverError::UnknownVersion {
            found: SNAPSHOT_VERSION + 1,
            supported: SNAPSHOT_VERSION
        }
    );
    assert!(err.to_string().contains("version 2"), "{err}");
}

#[test]
fn call_ids_that_run_out_or_are_left_over_are_refused() {
    let (mut s, _) = setup(5);
    let mut journal = Vec::new();
    s.d.drain_journal(&mut journal);
    let invite = journal
        .iter()
        .position(|e| !e.ids.is_empty())
        .expect("the invite drew an id");
    assert_eq!(journal[invite].ids, [CallId::new("call-1").unwrap()]);
    let recover = |entries: Vec<JournalEntry>| {
        Durable::recover(
            SwitchboardConfig::default(),
            SequentialCallIds::default(),
            s.frame,
            None,
            entries,
            s.t,
        )
        .map(|_| ())
    };
    let mut short = journal.clone();
    short[invite].ids.clear();
    assert_eq!(
        recover(short),
        Err(RecoverError::IdsExhausted { entry: invite })
    );
    let mut long = journal.clone();
    long[0].ids.push(CallId::new("call-9").unwrap());
    assert_eq!(
        recover(long),
        Err(RecoverError::IdsLeftOver { entry: 0, left: 1 })
    );
    let mut lost = journal.clone();
    lost[invite].conn = None;
    assert_eq!(
        recover(lost),
        Err(RecoverError::NoConnection { entry: invite })
    );
    assert_eq!(recover(journal), Ok(()));
}

#[test]
fn a_retried_command_after_recovery_is_answered_not_run_again() {
    for from_snapshot in [true, false] {
        let (mut s, call) = setup(30);
        let accept = Command::Accept {
            call_id: call.clone(),
            custom_data: None,
        };
        let at = s.t + Duration::from_secs(1);
        assert_eq!(
            s.d.handle_command(at, ConnId::new(2), rid("acc"), accept.clone()),
            Ok(ReplyResult::Done)
        );
        drain(&mut s.d);
        let mut journal = Vec::new();
        s.d.drain_journal(&mut journal);
        let (snapshot, entries) = if from_snapshot {
            (Some(through_json(&s.d.snapshot())), Vec::new())
        } else {
            (None, journal)
        };
        let now = at + Duration::from_secs(2);
        let (mut b, _) = Durable::recover(
            SwitchboardConfig::default(),
            SequentialCallIds::default(),
            s.frame,
            snapshot,
            entries,
            now,
        )
        .unwrap();
        b.connect(now, ConnId::new(11), user("alice"), did("a"), Some(0), None);
        b.connect(now, ConnId::new(12), user("bob"), did("b"), Some(0), None);
        drain(&mut b);
        // The caller's invite, retried: the same call, no second one.
        let again = b.handle_command(
            now,
            ConnId::new(11),
            rid("inv"),
            Command::Invite(
                InviteRequest::new(vec![uid("bob")], CallType::Voice).with_timeout_s(Some(30)),
            ),
        );
        match again {
            Ok(ReplyResult::Invited {
                call_id, callees, ..
            }) => {
                assert_eq!(call_id, call);
                assert_eq!(callees.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        // The callee's accept, retried: done, not `ended` or a second join.
        assert_eq!(
            b.handle_command(now, ConnId::new(12), rid("acc"), accept),
            Ok(ReplyResult::Done)
        );
        let p = drain(&mut b);
        assert!(
            p.outputs
                .iter()
                .all(|o| matches!(o, Output::Send { message, .. }
                if matches!(message.body, ServerBody::Reply { .. }))),
            "only replies: {:?}",
            p.outputs
        );
        assert_eq!(b.calls().count(), 1);
        assert_eq!(b.stats().invitations, 1);
        assert_eq!(b.stats().duplicate_requests, 2);
        assert_eq!(b.stats().outcome_count(Reason::Accepted), 1);
    }
}

#[test]
fn a_device_resumes_after_recovery_with_exactly_the_missed_events() {
    let (mut s, call) = setup(30);
    // Bob has seen the invitation (seq 1); then he drops off and misses
    // the cancel.
    let bob_seen = s.d.last_seq(&uid("bob"));
    assert_eq!(bob_seen, 1);
    let at = s.t + Duration::from_secs(1);
    s.d.disconnect(at, ConnId::new(2));
    s.d.handle_command(
        at,
        ConnId::new(1),
        rid("cancel"),
        Command::Cancel {
            call_id: call.clone(),
            custom_data: Some(CustomData::new("sorry").unwrap()),
        },
    )
    .unwrap();
    drain(&mut s.d);
    let snapshot = through_json(&s.d.snapshot());
    let seq = s.d.last_seq(&uid("bob"));
    assert_eq!(seq, 2);
    let now = at + Duration::from_secs(3);
    let (mut b, _) = Durable::recover(
        SwitchboardConfig::default(),
        SequentialCallIds::default(),
        s.frame,
        Some(snapshot),
        Vec::new(),
        now,
    )
    .unwrap();
    drain(&mut b);
    b.connect(
        now,
        ConnId::new(5),
        user("bob"),
        did("b"),
        Some(bob_seen),
        None,
    );
    let p = drain(&mut b);
    let bodies: Vec<&ServerBody> = p
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { conn, message } if conn.get() == 5 => Some(&message.body),
            _ => None,
        })
        .collect();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert!(
        matches!(
            bodies[0],
            ServerBody::Welcome {
                seq: 2,
                resumed: true,
                ..
            }
        ),
        "{:?}",
        bodies[0]
    );
    match bodies[1] {
        ServerBody::Event { seq: 2, event, .. } => match event {
            Event::IncomingEnded {
                call_id,
                reason,
                custom_data,
                ..
            } => {
                assert_eq!(call_id, &call);
                assert_eq!(*reason, Reason::Canceled);
                assert_eq!(custom_data.as_ref().map(|d| d.as_str()), Some("sorry"));
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    // Resuming from the newest: nothing again.
    b.connect(now, ConnId::new(6), user("bob"), did("b"), Some(2), None);
    let p = drain(&mut b);
    assert_eq!(count_events(&p, 6, |_| true), 0);
}

/// The operator changed the settings before the restart: the journal is
/// replayed under the settings it was written with (each run records its
/// own first), and the new ones apply from the restart on. Without that,
/// an invite the old limit allowed would be refused on replay and the
/// journal would no longer fit.
#[test]
fn a_journal_replays_under_the_settings_it_was_written_with() {
    let t = origin();
    let frame = TimeFrame::new(t, UNIX_T0);
    let mut before = SwitchboardConfig::default();
    before.max_callees = 4;
    before.default_ring_timeout_s = 60;
    // The caller's grace outlasts the ring: the next timer is the ring's.
    before.caller_gone_grace = Duration::from_secs(600);
    let mut d = Durable::new(before, SequentialCallIds::default(), frame);
    d.connect(t, ConnId::new(1), user("alice"), did("a"), None, None);
    let three = || {
        Command::Invite(InviteRequest::new(
            vec![uid("bob"), uid("carol"), uid("dave")],
            CallType::Voice,
        ))
    };
    let r = d.handle_command(t, ConnId::new(1), rid("inv"), three());
    assert!(matches!(r, Ok(ReplyResult::Invited { .. })), "{r:?}");
    drain(&mut d);
    let mut journal = Vec::new();
    d.drain_journal(&mut journal);
    assert!(
        matches!(journal[0].input, JournalInput::Settings(_)),
        "the journal starts with its settings: {:?}",
        journal[0]
    );

    // Restarted with at most two callees and a 30 s ring.
    let mut after = SwitchboardConfig::default();
    after.max_callees = 2;
    after.default_ring_timeout_s = 30;
    after.caller_gone_grace = Duration::from_secs(600);
    let later = t + Duration::from_secs(1);
    let (mut r2, recovered) = Durable::recover(
        after.clone(),
        SequentialCallIds::default(),
        frame,
        None,
        through_json_entries(&journal),
        later,
    )
    .expect("replays under the old settings");
    assert_eq!(recovered.ringing, 1, "the three-callee call rings");
    let deadline = r2.poll_timeout().expect("its ring timer");
    assert_eq!(deadline, t + Duration::from_secs(60), "its deadline kept");
    // The new settings from the restart on; a snapshot carries them.
    assert_eq!(r2.config().max_callees, 2);
    let mut discard = Vec::new();
    r2.drain_journal(&mut discard);
    let snapshot = r2.snapshot();
    r2.connect(later, ConnId::new(7), user("erin"), did("e"), None, None);
    let refused = r2.handle_command(later, ConnId::new(7), rid("inv2"), three());
    assert!(
        refused.is_err(),
        "three callees are too many now: {refused:?}"
    );
    drain(&mut r2);
    let mut tail = Vec::new();
    r2.drain_journal(&mut tail);

    // Recovered from the snapshot under the defaults (nine callees), the
    // tail replays under the two-callee limit it was written under: the
    // invite is refused again (under nine it would draw a call id the
    // entry does not have, and the recovery would fail).
    let (r3, recovered) = Durable::recover(
        SwitchboardConfig::default(),
        SequentialCallIds::default(),
        frame,
        Some(through_json(&snapshot)),
        through_json_entries(&tail),
        later,
    )
    .expect("the tail fits its settings");
    assert_eq!(recovered.ringing, 1);
    assert_eq!(
        r3.config().max_callees,
        SwitchboardConfig::default().max_callees
    );
}

/// What recovering 100,000 pending invitations costs (offline callees,
/// each invitation held): snapshot size and time, restore time, and the
/// replay rate of a journal of the same inputs. A figure, not a gate: run
/// with `cargo test --release -p invitation-core --test durable -- --ignored
/// --nocapture`.
#[test]
#[ignore = "a measurement of 100,000 invitations (seconds in release, minutes in debug), not a check; the whole-server figure is `invitation-bench recovery` (docs/benchmarks.md)"]
fn recovery_of_100k_pending_invitations() {
    const N: usize = 100_000;
    let t = origin();
    let frame = TimeFrame::new(t, UNIX_T0);
    let mut d = Durable::new(
        SwitchboardConfig::default(),
        SequentialCallIds::default(),
        frame,
    );
    for i in 0..N {
        let conn = ConnId::new(i as u64 + 1);
        let at = t + Duration::from_micros(i as u64);
        d.connect(at, conn, user(&format!("caller{i}")), did("d"), None, None);
        let invite = InviteRequest::new(vec![uid(&format!("callee{i}"))], CallType::Voice)
            .with_timeout_s(Some(600));
        d.handle_command(at, conn, rid("r"), Command::Invite(invite))
            .unwrap();
        while d.poll_output().is_some() {}
    }
    let mut journal = Vec::new();
    d.drain_journal(&mut journal);
    let now = t + Duration::from_secs(1);

    let began = origin();
    let snapshot = d.snapshot();
    let json = serde_json::to_string(&snapshot).unwrap();
    let took_snapshot = began.elapsed();

    let began = origin();
    let back: SwitchboardSnapshot = serde_json::from_str(&json).unwrap();
    let (b, r) = Durable::recover(
        SwitchboardConfig::default(),
        ids_from(N as u64 + 1),
        frame,
        Some(back),
        Vec::new(),
        now,
    )
    .unwrap();
    let took_restore = began.elapsed();
    assert_eq!((r.calls, r.ringing, r.dropped), (N, N, N));
    assert_eq!(b.calls().count(), N);

    let lines: Vec<String> = journal
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    let began = origin();
    let entries: Vec<JournalEntry> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (c, r) = Durable::recover(
        SwitchboardConfig::default(),
        ids_from(N as u64 + 1),
        frame,
        None,
        entries,
        now,
    )
    .unwrap();
    let took_replay = began.elapsed();
    assert_eq!((r.entries, r.ringing), (2 * N, N));
    assert_eq!(c.calls().count(), N);
    println!(
        "{N} pending invitations: snapshot {:.1} MB in {:.2} s (state + JSON), restored in {:.2} s; \
         journal of {} entries, {:.1} MB ({} bytes per invitation), replayed in {:.2} s",
        json.len() as f64 / 1e6,
        took_snapshot.as_secs_f64(),
        took_restore.as_secs_f64(),
        journal.len(),
        bytes as f64 / 1e6,
        bytes / N,
        took_replay.as_secs_f64(),
    );
}

/// A snapshot damaged in ways a checksum would not catch (a bug, a hand
/// edit): restoring it gives a typed error or a switchboard that goes on
/// taking inputs — never a panic. Random edits of real snapshots: numbers
/// changed (indices, deadlines, seqs, slots), list entries dropped or
/// duplicated, strings swapped.
#[test]
fn damaged_snapshots_never_panic() {
    let mut restored = 0;
    let mut refused = 0;
    for seed in 0..6u64 {
        let steps = workload(seed, 300);
        let t0 = origin();
        let frame = TimeFrame::new(t0, UNIX_T0);
        let config = small_config(seed);
        let o = original(config.clone(), frame, t0, &steps[..200], 199);
        let good = serde_json::to_value(&o.snapshot).unwrap();
        let mut rng = Rng(seed ^ 0xdead);
        for _ in 0..300 {
            let mut v = good.clone();
            for _ in 0..1 + rng.below(6) {
                damage(&mut v, &mut rng);
            }
            let Ok(snapshot) = serde_json::from_value::<SwitchboardSnapshot>(v) else {
                refused += 1;
                continue;
            };
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let now = t0 + steps[199].at;
                match Durable::recover(
                    config.clone(),
                    ids_from(1000),
                    frame,
                    Some(snapshot),
                    Vec::new(),
                    now,
                ) {
                    Ok((mut d, _)) => {
                        for step in &steps[200..] {
                            apply(&mut d, t0, step);
                        }
                        d.handle_timeout(t0 + steps[299].at + Duration::from_secs(3600));
                        drain(&mut d);
                        true
                    }
                    Err(_) => false,
                }
            }));
            match result {
                Ok(true) => restored += 1,
                Ok(false) => refused += 1,
                Err(_) => panic!("seed {seed}: a damaged snapshot made the switchboard panic"),
            }
        }
    }
    println!("damaged snapshots: {restored} restored and driven on, {refused} refused");
    assert!(restored > 500 && refused > 100, "{restored} {refused}");
}

/// One random edit somewhere in `v`.
fn damage(v: &mut serde_json::Value, rng: &mut Rng) {
    use serde_json::Value;
    // Pick a random node: walk down by reading, then edit by pointer.
    let mut pointer = String::new();
    let mut at: &Value = v;
    for _ in 0..8 {
        let next = match at {
            Value::Object(m) if !m.is_empty() => {
                let (k, n) = m.iter().nth(rng.below(m.len() as u64) as usize).unwrap();
                Some((k.clone(), n))
            }
            Value::Array(a) if !a.is_empty() => {
                let i = rng.below(a.len() as u64) as usize;
                Some((i.to_string(), &a[i]))
            }
            _ => None,
        };
        match next {
            Some((k, n)) if rng.chance(0.8) => {
                pointer.push('/');
                pointer.push_str(&k);
                at = n;
            }
            _ => break,
        }
    }
    let node = v.pointer_mut(&pointer).unwrap();
    match node {
        Value::Number(n) => {
            let small = rng.below(12);
            *node = match rng.below(4) {
                0 => Value::from(small),
                1 => Value::from(n.as_i64().unwrap_or(0).wrapping_add(small as i64 - 6)),
                2 => Value::from(i64::MAX - small as i64),
                _ => Value::from(0),
            };
        }
        Value::Array(a) if !a.is_empty() => {
            let i = rng.below(a.len() as u64) as usize;
            if rng.chance(0.5) {
                a.remove(i);
            } else {
                let e = a[i].clone();
                a.push(e);
            }
        }
        Value::String(s) => {
            *s = [
                "u0", "u1", "ghost", "call-1", "call-3", "d0", "ringing", "busy",
            ][rng.below(8) as usize]
                .to_owned();
        }
        Value::Bool(b) => *b = !*b,
        _ => {}
    }
}

/// A call the backend started is journaled and replayed like any other,
/// and its answer memory survives: the same request after recovery is
/// answered, not run again.
#[test]
fn backend_commands_are_journaled_and_replayed() {
    let t = origin();
    let frame = TimeFrame::new(t, UNIX_T0);
    let mut d = Durable::new(
        SwitchboardConfig::default(),
        SequentialCallIds::default(),
        frame,
    );
    let invite = || Command::Invite(InviteRequest::new(vec![uid("bob")], CallType::Voice));
    let first = d
        .handle_backend_command(t, user("alice"), rid("api-1"), invite())
        .unwrap();
    drain(&mut d);
    let mut journal = Vec::new();
    d.drain_journal(&mut journal);
    assert!(
        journal.iter().any(
            |e| matches!(&e.input, JournalInput::Backend { id, .. } if id.as_str() == "api-1")
        ),
        "{journal:?}"
    );
    let later = t + Duration::from_secs(1);
    let (mut r, recovered) = Durable::recover(
        SwitchboardConfig::default(),
        SequentialCallIds::new("after").unwrap(),
        frame,
        None,
        through_json_entries(&journal),
        later,
    )
    .unwrap();
    assert_eq!(recovered.ringing, 1);
    let again = r
        .handle_backend_command(later, user("alice"), rid("api-1"), invite())
        .unwrap();
    assert_eq!(again, first, "answered from memory");
    assert_eq!(r.calls().count(), 1, "not run again");
}
