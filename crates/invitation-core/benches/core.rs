//! Micro-benchmarks of the core: a complete 1:1 flow through the
//! switchboard, encode/decode of every message, and the memory a pending
//! invitation costs with 1,000,000 pending.
//!
//! `cargo bench -p invitation-core`. The 1M-invitation memory run needs
//! ~2 GiB and a few seconds: `INVITATION_BENCH_MEMORY=skip` skips it,
//! `=quick` runs it with 100,000.

#![allow(missing_docs)]
// A benchmark measures real time.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use invitation_core::protocol::*;
use invitation_core::*;

/// The pre-connection-machine shape of the switchboard's inputs, kept for
/// the benchmarks' brevity: ids chosen here, commands as whole messages.
trait Feed {
    fn join(&mut self, now: Instant, user: User, device: DeviceId, last_seq: Option<u64>)
    -> ConnId;
    fn handle_message(
        &mut self,
        now: Instant,
        conn: ConnId,
        message: ClientMessage,
    ) -> Result<ReplyResult, CommandError>;
}

static NEXT_CONN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Feed for Switchboard {
    fn join(
        &mut self,
        now: Instant,
        user: User,
        device: DeviceId,
        last_seq: Option<u64>,
    ) -> ConnId {
        let conn = ConnId::new(NEXT_CONN.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        self.connect(now, conn, user, device, last_seq, None);
        conn
    }

    fn handle_message(
        &mut self,
        now: Instant,
        conn: ConnId,
        message: ClientMessage,
    ) -> Result<ReplyResult, CommandError> {
        let ClientBody::Command(command) = message.body else {
            panic!("a call command")
        };
        self.handle_command(now, conn, message.id, command)
    }
}

fn rid(n: u64) -> RequestId {
    RequestId::new(format!("r{n}")).unwrap()
}

fn drain(sb: &mut Switchboard) -> usize {
    let mut n = 0;
    while let Some(o) = sb.poll_output() {
        black_box(&o);
        n += 1;
    }
    n
}

/// One complete flow at `now`: invite, accept, hang up, outputs drained.
fn one_flow(
    sb: &mut Switchboard,
    now: Instant,
    alice: ConnId,
    bob: ConnId,
    bob_id: &UserId,
    n: u64,
) {
    let invite = Command::Invite(InviteRequest::new(vec![bob_id.clone()], CallType::Voice));
    let Ok(ReplyResult::Invited { call_id, .. }) =
        sb.handle_message(now, alice, ClientMessage::new(rid(n), invite))
    else {
        panic!("invite failed")
    };
    drain(sb);
    sb.handle_message(
        now,
        bob,
        ClientMessage::new(
            rid(n + 1),
            Command::Accept {
                call_id: call_id.clone(),
                custom_data: None,
            },
        ),
    )
    .unwrap();
    drain(sb);
    sb.handle_message(
        now,
        bob,
        ClientMessage::new(
            rid(n + 2),
            Command::HangUp {
                call_id,
                custom_data: None,
            },
        ),
    )
    .unwrap();
    drain(sb);
}

/// Invitation number `i` at `at`: caller `{prefix}caller{i}` connects and
/// invites the offline `{prefix}callee{i}`, ringing `ring_s` seconds.
fn invite_offline(sb: &mut Switchboard, at: Instant, prefix: &str, i: usize, ring_s: u32) {
    let user = User::new(UserId::new(format!("{prefix}caller{i}")).unwrap(), "").unwrap();
    let conn = sb.join(at, user, DeviceId::new("d").unwrap(), Some(0));
    let invite = Command::Invite(
        InviteRequest::new(
            vec![UserId::new(format!("{prefix}callee{i}")).unwrap()],
            CallType::Voice,
        )
        .with_timeout_s(Some(ring_s)),
    );
    sb.handle_message(at, conn, ClientMessage::new(rid(i as u64), invite))
        .unwrap();
    drain(sb);
}

/// `n` invitations left ringing (600 s), each from its own connected
/// caller to its own offline callee.
fn fill_pending(sb: &mut Switchboard, t0: Instant, n: usize) {
    for i in 0..n {
        invite_offline(sb, t0, "p", i, 600);
    }
}

/// A plain timed loop beside criterion: CPU per flow over many flows (one
/// per ms of switchboard time), with `pending` other invitations ringing
/// meanwhile. With `warm`, a full retention period of flows runs untimed
/// first, so the timed ones see the steady state (history at its size,
/// no table growth). Returns µs per flow.
fn flow_loop(
    flows: u64,
    label: &str,
    config: SwitchboardConfig,
    pending: usize,
    warm: bool,
) -> f64 {
    let warm_up = if warm {
        config.retention.as_millis() as u64 * 11 / 10
    } else {
        0
    };
    let mut sb = Switchboard::new(config, SequentialCallIds::default());
    let t0 = Instant::now();
    fill_pending(&mut sb, t0, pending);
    let phone = DeviceId::new("phone").unwrap();
    let alice = sb.join(t0, User::named("alice", "Alice"), phone.clone(), None);
    let bob = sb.join(t0, User::named("bob", "Bob"), phone, None);
    drain(&mut sb);
    let bob_id = UserId::new("bob").unwrap();
    let mut started = Instant::now();
    for i in 0..warm_up + flows {
        if i == warm_up {
            started = Instant::now();
        }
        one_flow(
            &mut sb,
            t0 + Duration::from_millis(i),
            alice,
            bob,
            &bob_id,
            i * 3,
        );
    }
    let per = started.elapsed().as_secs_f64() * 1e6 / flows as f64;
    println!(
        "flow ({label}, {pending} other invitations pending): {flows} complete 1:1 flows (invite, ring, accept, hang up): {per:.2} us each"
    );
    per
}

/// Timer lateness with `n` invitations pending: their deadlines are spread
/// evenly over `window` (created, in switchboard time, at the same pace), and
/// a real-time loop sleeps until the next deadline, fires what is due and
/// drains the events. Lateness = events drained - deadline, per timeout.
fn timer_lateness(n: usize, window: Duration) {
    let ring = Duration::from_secs(30);
    let mut sb = Switchboard::new(SwitchboardConfig::default(), SequentialCallIds::default());
    let anchor = Instant::now();
    let step = window / n as u32;
    let mut deadlines = Vec::with_capacity(n);
    for i in 0..n {
        let at = anchor + step * i as u32;
        invite_offline(&mut sb, at, "", i, ring.as_secs() as u32);
        deadlines.push(at + ring);
    }
    let ready = Instant::now();
    assert!(
        ready < deadlines[0],
        "creating {n} invitations took longer than the ring timeout"
    );
    let mut late_us: Vec<u64> = Vec::with_capacity(n);
    while let Some(next) = sb.poll_timeout() {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        sb.handle_timeout(Instant::now());
        let mut ended = 0;
        while let Some(out) = sb.poll_output() {
            if let Output::Send { message, .. } = &out {
                if let ServerBody::Event {
                    event: Event::CallEnded { .. },
                    ..
                } = message.body
                {
                    ended += 1;
                }
            }
        }
        let done = Instant::now();
        // Timers fire in deadline order, which is creation order here.
        for d in &deadlines[late_us.len()..late_us.len() + ended] {
            late_us.push(done.saturating_duration_since(*d).as_micros() as u64);
        }
    }
    assert_eq!(late_us.len(), n, "every invitation timed out once");
    late_us.sort_unstable();
    let q = |p: f64| late_us[((n as f64 * p).ceil() as usize).clamp(1, n) - 1];
    println!(
        "timers: {n} pending, deadlines spread over {:.0} s ({:.0} timeouts/s): lateness p50 {} us, p99 {} us, max {} us (target p99 <= 5 ms, max <= 50 ms)",
        window.as_secs_f64(),
        n as f64 / window.as_secs_f64(),
        q(0.5),
        q(0.99),
        q(1.0)
    );
}

fn flow(c: &mut Criterion) {
    flow_with(
        c,
        "flow_1to1_invite_ring_accept_hangup",
        SwitchboardConfig::default(),
    );
    let mut short = SwitchboardConfig::default();
    short.retention = Duration::from_secs(1);
    flow_with(c, "flow_1to1_short_retention", short);
}

fn flow_with(c: &mut Criterion, name: &str, config: SwitchboardConfig) {
    let mut sb = Switchboard::new(config, SequentialCallIds::default());
    let t0 = Instant::now();
    let phone = DeviceId::new("phone").unwrap();
    let alice = sb.join(t0, User::named("alice", "Alice"), phone.clone(), None);
    let bob = sb.join(t0, User::named("bob", "Bob"), phone.clone(), None);
    drain(&mut sb);
    let bob_id = UserId::new("bob").unwrap();
    let mut n = 0u64;
    let mut g = c.benchmark_group("switchboard");
    g.throughput(Throughput::Elements(1));
    let mut now = t0;
    g.bench_function(name, |b| {
        b.iter(|| {
            n += 3;
            // 10 µs of simulated time per flow: with the default 10-minute
            // retention the request-id memory and tombstones reach their
            // steady state (caps) as a busy server's would.
            now += Duration::from_micros(10);
            let t0 = now;
            let invite = Command::Invite(InviteRequest::new(vec![bob_id.clone()], CallType::Voice));
            let Ok(ReplyResult::Invited { call_id, .. }) =
                sb.handle_message(t0, alice, ClientMessage::new(rid(n), invite))
            else {
                panic!("invite failed")
            };
            drain(&mut sb);
            sb.handle_message(
                t0,
                bob,
                ClientMessage::new(
                    rid(n + 1),
                    Command::Accept {
                        call_id: call_id.clone(),
                        custom_data: None,
                    },
                ),
            )
            .unwrap();
            drain(&mut sb);
            sb.handle_message(
                t0,
                bob,
                ClientMessage::new(
                    rid(n + 2),
                    Command::HangUp {
                        call_id,
                        custom_data: None,
                    },
                ),
            )
            .unwrap();
            drain(&mut sb);
        })
    });
    g.finish();
}

/// (name, JSON) pairs.
type Samples = Vec<(&'static str, String)>;

fn sample_messages() -> (Samples, Samples) {
    let cid = CallId::new("c-8f3a2b").unwrap();
    let alice = User::named("alice", "Alice");
    let bob = User::named("bob", "Bob");
    let client = vec![
        (
            "invite",
            ClientMessage::new(
                rid(1),
                Command::Invite(
                    InviteRequest::new(vec![bob.id.clone()], CallType::Video)
                        .with_custom_data(Some(CustomData::new("{\"room\":\"abc\"}").unwrap()))
                        .with_timeout_s(Some(60)),
                ),
            ),
        ),
        (
            "accept",
            ClientMessage::new(
                rid(2),
                Command::Accept {
                    call_id: cid.clone(),
                    custom_data: None,
                },
            ),
        ),
        (
            "decline",
            ClientMessage::new(
                rid(3),
                Command::Decline {
                    call_id: cid.clone(),
                    busy: true,
                    custom_data: None,
                },
            ),
        ),
        (
            "cancel",
            ClientMessage::new(
                rid(4),
                Command::Cancel {
                    call_id: cid.clone(),
                    custom_data: None,
                },
            ),
        ),
        (
            "hang_up",
            ClientMessage::new(
                rid(5),
                Command::HangUp {
                    call_id: cid.clone(),
                    custom_data: None,
                },
            ),
        ),
        (
            "hello",
            ClientMessage::new(
                rid(6),
                Control::Hello {
                    device: DeviceId::new("phone").unwrap(),
                    token: Some("x".repeat(200)),
                    last_seq: Some(41),
                },
            ),
        ),
        ("ping", ClientMessage::new(rid(7), Control::Ping)),
    ];
    let ev = |event| ServerMessage::new(ServerBody::event(42, event));
    let server = vec![
        (
            "incoming_call",
            ev(Event::IncomingCall {
                call_id: cid.clone(),
                caller: alice.clone(),
                call_type: CallType::Video,
                callees: vec![bob.clone()].into(),
                custom_data: Some(CustomData::new("{\"room\":\"abc\"}").unwrap()),
                ring_remaining_ms: 59_874,
                ring_timeout_ms: 60_000,
            }),
        ),
        (
            "incoming_ended",
            ev(Event::IncomingEnded {
                call_id: cid.clone(),
                reason: Reason::AnsweredElsewhere,
                device: Some(DeviceId::new("laptop").unwrap()),
                custom_data: None,
            }),
        ),
        (
            "callee_outcome",
            ev(Event::CalleeOutcome {
                call_id: cid.clone(),
                callee: bob.id.clone(),
                reason: Reason::Accepted,
                custom_data: None,
            }),
        ),
        (
            "reply_invited",
            ServerMessage::new(ServerBody::Reply {
                re: rid(1),
                result: ReplyResult::Invited {
                    call_id: cid.clone(),
                    ring_remaining_ms: 60_000,
                    callees: vec![CalleeStatus::new(bob.id.clone(), InitialStatus::Ringing)],
                },
            }),
        ),
        (
            "error",
            ServerMessage::new(ServerBody::Error(ErrorBody::from_command(
                Some(rid(2)),
                &CommandError::Ended {
                    reason: Reason::Canceled,
                },
            ))),
        ),
    ];
    (
        client.into_iter().map(|(n, m)| (n, m.encode())).collect(),
        server.into_iter().map(|(n, m)| (n, m.encode())).collect(),
    )
}

fn codec(c: &mut Criterion) {
    let limits = DecodeLimits::default();
    let (client, server) = sample_messages();
    let mut g = c.benchmark_group("protocol");
    for (name, json) in &client {
        let msg = ClientMessage::decode(json, &limits).unwrap();
        g.bench_function(format!("decode_client_{name}"), |b| {
            b.iter(|| ClientMessage::decode(black_box(json), &limits).unwrap())
        });
        g.bench_function(format!("encode_client_{name}"), |b| {
            b.iter(|| black_box(&msg).encode())
        });
    }
    for (name, json) in &server {
        let msg = ServerMessage::decode(json, &limits).unwrap();
        g.bench_function(format!("decode_server_{name}"), |b| {
            b.iter(|| ServerMessage::decode(black_box(json), &limits).unwrap())
        });
        g.bench_function(format!("encode_server_{name}"), |b| {
            b.iter(|| black_box(&msg).encode())
        });
    }
    g.finish();
}

/// Resident set size in bytes, from /proc (Linux).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// 1,000,000 pending 1:1 invitations, each from its own connected caller to
/// its own offline callee (every pending invitation needs a distinct caller
/// and callee: both are busy while it rings). The callers' connections are
/// set up first and excluded; what remains is the invitation, the callee's
/// user record and log, both log entries, the timer and the request-id memory.
fn pending_memory(n: usize) {
    let t0 = Instant::now();
    let mut sb = Switchboard::new(SwitchboardConfig::default(), SequentialCallIds::default());
    let device = DeviceId::new("d").unwrap();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let user = User::new(UserId::new(format!("caller{i}")).unwrap(), "").unwrap();
        conns.push(sb.join(t0, user, device.clone(), Some(0)));
        while sb.poll_output().is_some() {}
    }
    let callees: Vec<UserId> = (0..n)
        .map(|i| UserId::new(format!("callee{i}")).unwrap())
        .collect();
    let requests: Vec<RequestId> = (0..n).map(|i| rid(i as u64)).collect();
    let before = rss_bytes().unwrap_or(0);
    let started = Instant::now();
    for i in 0..n {
        let invite = Command::Invite(InviteRequest::new(
            vec![callees[i].clone()],
            CallType::Voice,
        ));
        sb.handle_message(
            t0,
            conns[i],
            ClientMessage::new(requests[i].clone(), invite),
        )
        .unwrap();
        while sb.poll_output().is_some() {}
    }
    let took = started.elapsed();
    let after = rss_bytes().unwrap_or(0);
    let per = (after.saturating_sub(before)) as f64 / n as f64;
    println!(
        "memory: {n} pending invitations: {:.0} bytes each (RSS delta {:.1} MiB; target < 1024 B); invite CPU {:.2} us each",
        per,
        after.saturating_sub(before) as f64 / (1024.0 * 1024.0),
        took.as_secs_f64() * 1e6 / n as f64,
    );
    // Timer lateness is the owner's business; here: firing all of them.
    let fire = Instant::now();
    sb.handle_timeout(t0 + Duration::from_secs(61));
    while sb.poll_output().is_some() {}
    println!(
        "timers: {n} ring timeouts fired in {:.0} ms ({:.2} us each)",
        fire.elapsed().as_secs_f64() * 1e3,
        fire.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    assert_eq!(sb.poll_timeout(), None);
}

/// A fixed amount of work for the instruction-count guard
/// (`.ci/instructions`): `n` repetitions of one scenario, nothing timed.
/// The guard runs each scenario with `n` and with 0 under callgrind and
/// divides the difference by `n`, so set-up costs cancel out.
fn instructions(scenario: &str, n: u64) {
    let t0 = Instant::now();
    match scenario {
        // One complete 1:1 call through the switchboard: invite, accept,
        // hang up, every output drained.
        "call" => {
            let mut sb =
                Switchboard::new(SwitchboardConfig::default(), SequentialCallIds::default());
            let phone = DeviceId::new("phone").unwrap();
            let alice = sb.join(t0, User::named("alice", "Alice"), phone.clone(), None);
            let bob = sb.join(t0, User::named("bob", "Bob"), phone, None);
            drain(&mut sb);
            let bob_id = UserId::new("bob").unwrap();
            for i in 0..n {
                let now = t0 + Duration::from_millis(i);
                one_flow(&mut sb, now, alice, bob, &bob_id, i * 3);
            }
        }
        // Decode and encode of every sample client and server message.
        "codec" => {
            let limits = DecodeLimits::default();
            let (client, server) = sample_messages();
            for _ in 0..n {
                for (_, json) in &client {
                    black_box(
                        ClientMessage::decode(black_box(json), &limits)
                            .unwrap()
                            .encode(),
                    );
                }
                for (_, json) in &server {
                    black_box(
                        ServerMessage::decode(black_box(json), &limits)
                            .unwrap()
                            .encode(),
                    );
                }
            }
        }
        // An invitation to an offline callee whose ring timer fires.
        "timer" => {
            let mut sb =
                Switchboard::new(SwitchboardConfig::default(), SequentialCallIds::default());
            for i in 0..n as usize {
                let at = t0 + Duration::from_secs(2 * i as u64);
                invite_offline(&mut sb, at, "t", i, 1);
                sb.handle_timeout(at + Duration::from_secs(1));
                drain(&mut sb);
            }
        }
        other => panic!("unknown scenario {other:?}: call, codec, timer"),
    }
}

fn main() {
    if let Ok(spec) = std::env::var("INVITATION_INSTRUCTIONS") {
        let (scenario, n) = spec.split_once(':').expect("scenario:count");
        return instructions(scenario, n.parse().expect("a count"));
    }
    let flows = std::env::var("INVITATION_BENCH_FLOWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300_000);
    flow_loop(
        flows,
        "default config, 10 min history",
        SwitchboardConfig::default(),
        0,
        false,
    );
    // Steady state (60 s of history, warmed up), alternated, best of two:
    // one run's freed tables make the next one's allocator slower or faster,
    // which is not what is compared here.
    let mut sixty = SwitchboardConfig::default();
    sixty.retention = Duration::from_secs(60);
    let (mut none, mut busy) = (f64::MAX, f64::MAX);
    for _ in 0..2 {
        let label = "60 s history, warmed up";
        none = none.min(flow_loop(flows, label, sixty.clone(), 0, true));
        busy = busy.min(flow_loop(flows, label, sixty.clone(), 50_000, true));
    }
    println!(
        "throughput with 50,000 invitations pending: {:.2}x the throughput with none (best of 2: {none:.2} vs {busy:.2} us per flow; target >= 0.95x)",
        none / busy
    );
    let mut short = SwitchboardConfig::default();
    short.retention = Duration::from_secs(1);
    flow_loop(flows, "1 s history", short, 0, true);
    match std::env::var("INVITATION_BENCH_MEMORY").as_deref() {
        Ok("skip") => {}
        Ok("quick") => {
            pending_memory(100_000);
            timer_lateness(100_000, Duration::from_secs(5));
        }
        _ => {
            pending_memory(1_000_000);
            timer_lateness(1_000_000, Duration::from_secs(10));
        }
    }
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    flow(&mut c);
    codec(&mut c);
    c.final_summary();
}
