//! The simulated world: hub, devices (each a sequence of client
//! incarnations behind one fault injector), workload.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use invitation::Fanout;
use invitation::prelude::*;
use invitation::testing::Recorder;
use invitation::testing::fault::{FaultConfig, FaultStats, FaultyTransport, SimRng};
use invitation::testing::oracle::{
    Acknowledged, DeviceRecord, HandlerRecord, Oracle, Record as OracleRecord,
};
use invitation_core::protocol::InviteRequest;
use invitation_core::{AuthRefusal, Authenticator, CloseCause, DeviceId, Identity, Switchboard};
use invitation_transport::BoxTransport;
use invitation_transport::memory::MemoryTransport;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

/// A fault profile: message faults (lossy, slow, flapping), connection
/// faults (connection), or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// No faults.
    Clean,
    /// 5 % of messages lost, 5 % duplicated.
    Lossy,
    /// 0-2 s jittered delay on every server message (reorders).
    Slow,
    /// Links break often and partitions keep devices away for 1-10 s.
    Flapping,
    /// Connection-level faults on an ordered link: lost `welcome`s, tokens
    /// that expire and renewals racing the expiry, bursts of `sync`,
    /// clients that stop reading (long enough, with enough written
    /// meanwhile, to be dropped as too slow).
    Connection,
    /// The server crashes and restarts: at random moments the hub keeps a
    /// snapshot, and at others it is replaced by one recovered from the
    /// last snapshot and the journal since; every link drops and clients
    /// reconnect and resume. Server messages are delayed a little (some
    /// are in flight at the crash) and 3 % of messages are lost.
    Restart,
    /// The HTTP transport's session logic: server messages reach clients
    /// only by long polls over the server's numbered, acknowledged message
    /// log; 20 % of poll answers are lost, at most 4 in a row (the client
    /// asks again from the same number after 50 ms), and 1 % of messages
    /// break the link (a new session, resumed).
    Http,
}

/// How long a token lives in the `connection` profile.
const TOKEN_LIFE: Duration = Duration::from_secs(30);

impl Profile {
    /// The profiles CI runs.
    pub const ALL: [Profile; 6] = [
        Profile::Lossy,
        Profile::Slow,
        Profile::Flapping,
        Profile::Connection,
        Profile::Restart,
        Profile::Http,
    ];

    /// Parses `clean`, `lossy`, `slow`, `flapping`, `connection`, `restart`,
    /// `http`.
    pub fn parse(s: &str) -> Option<Profile> {
        Some(match s {
            "clean" => Profile::Clean,
            "lossy" => Profile::Lossy,
            "slow" => Profile::Slow,
            "flapping" => Profile::Flapping,
            "connection" => Profile::Connection,
            "restart" => Profile::Restart,
            "http" => Profile::Http,
            _ => return None,
        })
    }

    /// Whether the hub checks tokens that expire (and clients renew them).
    fn tokens(self) -> bool {
        self == Profile::Connection
    }

    /// Whether the server crashes and restarts.
    fn restarts(self) -> bool {
        self == Profile::Restart
    }

    /// The longest a server message can be held on its way: injected delay
    /// plus a read stall plus lost poll answers (plus a millisecond of
    /// rounding).
    fn slack(self) -> Duration {
        let f = self.faults();
        let polls = match self {
            Profile::Http => crate::longpoll::MAX_HOLD,
            _ => Duration::ZERO,
        };
        f.delay.1 + f.stall_for.1 + polls + Duration::from_millis(1)
    }

    fn faults(self) -> FaultConfig {
        let mut f = FaultConfig::default();
        match self {
            Profile::Clean => {}
            Profile::Lossy => {
                f.drop = 0.05;
                f.duplicate = 0.05;
            }
            Profile::Slow => f.delay = (Duration::ZERO, Duration::from_secs(2)),
            Profile::Flapping => {
                f.disconnect = 0.03;
                f.partition = 0.3;
                f.partition_for = (Duration::from_secs(1), Duration::from_secs(10));
            }
            Profile::Connection => {
                // An ordered link that loses nothing without breaking (what
                // a WebSocket gives): what is lost is lost with the link.
                // Loss, duplication and reordering are the other profiles'.
                f.drop_welcome = 0.2;
                f.stall = 0.004;
                f.stall_for = (Duration::from_secs(1), Duration::from_secs(8));
                f.stall_writes = (0, 1500);
                f.sync_burst = 0.02;
                f.sync_burst_size = (1, 64);
            }
            Profile::Restart => {
                // Some messages lost too: answers the client retries, some
                // of them across a crash (then answered from the request-id
                // memory the recovery restored).
                f.delay = (Duration::ZERO, Duration::from_millis(300));
                f.drop = 0.03;
            }
            Profile::Http => {
                // Server messages are lost only as poll answers (asked for
                // again by the long-poll link); links break now and then.
                f.disconnect = 0.01;
            }
        }
        f
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Profile::Clean => "clean",
            Profile::Lossy => "lossy",
            Profile::Slow => "slow",
            Profile::Flapping => "flapping",
            Profile::Connection => "connection",
            Profile::Restart => "restart",
            Profile::Http => "http",
        })
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Broken invariants (the oracle's, then the simulation's own checks).
    pub violations: Vec<String>,
    /// The trace of the run.
    pub trace: Vec<String>,
    /// Invitations acknowledged to callers.
    pub calls: usize,
    /// What the fault injectors did, summed over every device.
    pub faults: FaultStats,
    /// Links the hub closed, per cause (connection faults that happened).
    pub closes: Vec<(CloseCause, u64)>,
    /// Server crashes and restarts (restart profile).
    pub restarts: Restarts,
    /// Long-poll answers lost and asked for again (http profile).
    pub poll_answers_lost: u64,
}

/// What the restart profile did in one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restarts {
    /// Snapshots kept.
    pub snapshots: u64,
    /// Crashes, each followed by a recovery.
    pub crashes: u64,
    /// Journal entries replayed by the recoveries.
    pub replayed: u64,
    /// Calls still ringing at a crash (recovered ringing).
    pub ringing: u64,
    /// Connections the recoveries dropped.
    pub dropped: u64,
    /// Commands answered from the request-id memory at the end of the run
    /// (retries, many of them resent after a crash).
    pub retries_answered: u64,
}

impl Restarts {
    /// Adds another run's counts.
    pub fn add(&mut self, other: &Restarts) {
        self.snapshots += other.snapshots;
        self.crashes += other.crashes;
        self.replayed += other.replayed;
        self.ringing += other.ringing;
        self.dropped += other.dropped;
        self.retries_answered += other.retries_answered;
    }
}

/// The close causes a run reports.
const CLOSES: [CloseCause; 4] = [
    CloseCause::TokenExpired,
    CloseCause::TooSlow,
    CloseCause::Unauthorized,
    CloseCause::NoHello,
];

/// Tokens of the `connection` profile: `user@ms`, valid until `ms`
/// milliseconds after the start of the run; refused after.
struct Tokens {
    t0: Instant,
}

impl Tokens {
    fn mint(t0: Instant, user: &UserId, until: Instant) -> String {
        format!("{user}@{}", until.duration_since(t0).as_millis())
    }
}

impl Authenticator for Tokens {
    fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthRefusal> {
        let (user, ms) = token
            .and_then(|t| t.split_once('@'))
            .ok_or_else(|| AuthRefusal::new("no token"))?;
        let ms: u64 = ms.parse().map_err(|_| AuthRefusal::new("bad token"))?;
        let until = self.t0 + Duration::from_millis(ms);
        let now = Instant::now();
        if now >= until {
            return Err(AuthRefusal::new("expired"));
        }
        let user = UserId::new(user).map_err(|_| AuthRefusal::new("bad user"))?;
        let user = User::new(user.clone(), user.as_str()).map_err(|_| AuthRefusal::new("bad"))?;
        Ok(Identity::new(user, Some(until - now)))
    }
}

/// An acknowledged invitation: (call, inviter incarnation, callees, joined).
type Acked = (CallId, usize, Vec<UserId>, bool);

/// Sleeps on some incoming calls: handler slowness.
struct Slow(Mutex<SimRng>);

#[async_trait]
impl InvitationEvents for Slow {
    async fn on_incoming_call_received(
        &self,
        _: &CallContext,
        _: &CallId,
        _: &User,
        _: CallType,
        _: &[User],
        _: Option<&CustomData>,
    ) {
        let d = {
            let mut r = self.0.lock().expect("rng");
            if r.chance(0.3) {
                r.between(Duration::ZERO, Duration::from_secs(3))
            } else {
                Duration::ZERO
            }
        };
        tokio::time::sleep(d).await;
    }
}

struct Live {
    client: Client,
    rec: Recorder,
    events: Arc<Mutex<Vec<(Instant, AppEvent)>>>,
    index: usize,
    /// Renews the token (connection profile).
    renewer: Option<tokio::task::AbortHandle>,
}

struct Device {
    user: UserId,
    device: DeviceId,
    transport: FaultyTransport<BoxTransport>,
    live: Option<Live>,
    starts: usize,
}

struct World {
    rng: SimRng,
    hub: MemoryHub,
    /// Server crashes (restart profile): when to snapshot, when to crash.
    crashes: Option<SimRng>,
    restarts: Restarts,
    t0: Instant,
    seed: u64,
    devices: Vec<Device>,
    /// Every client incarnation (an app start) of every device, as the
    /// oracle sees it.
    incarnations: Vec<DeviceRecord>,
    trace: Arc<Mutex<Vec<String>>>,
    acked: Arc<Mutex<Vec<Acked>>>,
    tasks: tokio::task::JoinSet<()>,
    /// Clients carry expiring tokens and renew them.
    tokens: bool,
    /// The network was healed: renewals come well before the expiry.
    healed: Arc<AtomicBool>,
    /// Every app event goes to the trace too (`SIM_EVENTS=1`).
    show_events: bool,
}

const USERS: [(&str, &[&str]); 4] = [
    ("u0", &["d0"]),
    ("u1", &["d0", "d1"]),
    ("u2", &["d0"]),
    ("u3", &["d0", "d1"]),
];

impl World {
    fn log(&self, s: String) {
        let t = self.t0.elapsed().as_secs_f64();
        self.trace
            .lock()
            .expect("trace")
            .push(format!("{t:8.3}s {s}"));
    }

    async fn start(&mut self, i: usize) {
        let seed = self.seed;
        loop {
            let dev = &mut self.devices[i];
            dev.starts += 1;
            let user = User::new(dev.user.clone(), dev.user.as_str()).expect("valid");
            let rec = Recorder::new();
            let slow = Slow(Mutex::new(SimRng::new(
                seed ^ (i as u64 * 7919) ^ dev.starts as u64,
            )));
            let mut builder = Client::builder().user(user);
            if self.tokens {
                // The app's backend: a fresh token whenever the client asks
                // (first connect, after an expiry, after a refusal). The
                // renewer below renews in band on its own schedule, racing
                // the expiry.
                let (t0, id) = (self.t0, dev.user.clone());
                builder = builder.token_provider(move || {
                    let token = Tokens::mint(t0, &id, Instant::now() + TOKEN_LIFE);
                    async move { Ok::<_, std::convert::Infallible>(token) }
                });
            }
            let client = builder
                .device(dev.device.as_str())
                .transport(dev.transport.clone())
                .handler(Fanout(vec![Arc::new(slow), Arc::new(rec.clone())]))
                .jitter_seed(
                    seed.wrapping_mul(31)
                        .wrapping_add(i as u64 * 1000 + dev.starts as u64),
                )
                .backoff(Duration::from_millis(100), Duration::from_secs(5))
                .command_timeout(Duration::from_secs(90))
                .build()
                .expect("valid client");
            let events = Arc::new(Mutex::new(Vec::new()));
            let mut rx = client.events();
            let sink = events.clone();
            let trace = self.trace.clone();
            let (t0, show_events) = (self.t0, self.show_events);
            let label = format!("{}/{}#{}", dev.user, dev.device, dev.starts);
            self.tasks.spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(e) => {
                            if show_events {
                                trace.lock().expect("trace").push(format!(
                                    "{:8.3}s {label} event {e:?}",
                                    t0.elapsed().as_secs_f64()
                                ));
                            }
                            sink.lock().expect("events").push((Instant::now(), e))
                        }
                        Err(RecvError::Lagged(n)) => {
                            trace
                                .lock()
                                .expect("trace")
                                .push(format!("VIOLATION: an event stream lagged by {n}"));
                        }
                        Err(RecvError::Closed) => break,
                    }
                }
            });
            let name = format!("{}/{}#{}", dev.user, dev.device, dev.starts);
            // Renewing starts with the client: its first connect may take
            // longer than its first token lives.
            let renewer = self
                .tokens
                .then(|| self.spawn_renewer(client.clone(), i, name.clone()));
            match client.connect().await {
                Ok(()) => {
                    let index = self.incarnations.len();
                    self.incarnations.push(DeviceRecord::new(
                        name.clone(),
                        self.devices[i].user.clone(),
                        self.devices[i].device.clone(),
                    ));
                    self.devices[i].live = Some(Live {
                        client,
                        rec,
                        events,
                        index,
                        renewer,
                    });
                    self.log(format!("{name} connected"));
                    return;
                }
                Err(e) => {
                    if let Some(r) = renewer {
                        r.abort();
                    }
                    self.log(format!("{name} could not connect: {e}"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Renews the client's token every 0.75-1.1 token lives, or exactly
    /// one (so about a third of the renewals race the expiry, and some
    /// lose), every half life once healed. Renewals run as their own tasks: one that waits
    /// for a reconnect does not hold up the next.
    fn spawn_renewer(
        &mut self,
        client: Client,
        i: usize,
        name: String,
    ) -> tokio::task::AbortHandle {
        let user = self.devices[i].user.clone();
        let mut rng = SimRng::new(
            self.seed ^ 0x5eed_7041 ^ ((i as u64) << 20) ^ self.devices[i].starts as u64,
        );
        let (t0, trace, healed) = (self.t0, self.trace.clone(), self.healed.clone());
        self.tasks.spawn(async move {
            loop {
                let f = if healed.load(Ordering::Relaxed) {
                    0.5
                } else if rng.chance(0.1) {
                    1.0 // at the very instant the token expires
                } else {
                    0.8 + 0.25 * rng.unit()
                };
                tokio::time::sleep(TOKEN_LIFE.mul_f64(f)).await;
                let token = Tokens::mint(t0, &user, Instant::now() + TOKEN_LIFE);
                let (client, trace, name) = (client.clone(), trace.clone(), name.clone());
                tokio::spawn(async move {
                    let r = client.renew_token(token).await;
                    let t = t0.elapsed().as_secs_f64();
                    trace
                        .lock()
                        .expect("trace")
                        .push(format!("{t:8.3}s {name} renew -> {r:?}"));
                });
            }
        })
    }

    async fn stop(&mut self, i: usize) {
        if let Some(live) = self.devices[i].live.take() {
            if let Some(r) = &live.renewer {
                r.abort();
            }
            live.client.close().await;
            self.harvest(&live, false);
            self.log(format!("{} stopped", self.incarnations[live.index].name));
        }
    }

    fn harvest(&mut self, live: &Live, alive: bool) {
        let inc = &mut self.incarnations[live.index];
        inc.events = live
            .events
            .lock()
            .expect("events")
            .iter()
            .map(|(at, e)| (at.into_std(), e.clone()))
            .collect();
        let due = inc
            .events
            .iter()
            .filter(|(_, e)| Callback::of(e).is_some())
            .map(|(_, e)| e.clone())
            .collect();
        let ran = live.rec.records().into_iter().map(|r| r.event).collect();
        inc.handler = Some(HandlerRecord::new(due, ran));
        inc.alive = alive;
        inc.last_seq = live.client.last_seq();
    }

    fn pick_device_of(&mut self, user: &UserId) -> Option<usize> {
        let options: Vec<usize> = (0..self.devices.len())
            .filter(|i| &self.devices[*i].user == user && self.devices[*i].live.is_some())
            .collect();
        (!options.is_empty()).then(|| options[self.rng.below(options.len() as u64) as usize])
    }

    fn command(&mut self, i: usize, what: &'static str, call: CallId) {
        let Some(live) = &self.devices[i].live else {
            return;
        };
        let client = live.client.clone();
        let name = self.incarnations[live.index].name.clone();
        let trace = self.trace.clone();
        let t0 = self.t0;
        self.log(format!("{name} {what} {call}"));
        self.tasks.spawn(async move {
            let r = match what {
                "accept" => client.accept(&call).await,
                "decline" => client.decline(&call).await,
                "decline_busy" => client.decline_busy(&call).await,
                "cancel" => client.cancel(&call).await,
                "join" => client.join(&call).await,
                "end" => client.end(&call).await,
                _ => client.hang_up(&call).await,
            };
            let t = t0.elapsed().as_secs_f64();
            trace
                .lock()
                .expect("trace")
                .push(format!("{t:8.3}s {name} {what} {call} -> {r:?}"));
        });
    }

    /// The restart profile: sometimes the server keeps a snapshot,
    /// sometimes it crashes and recovers from the last one plus the
    /// journal since.
    async fn maybe_crash(&mut self) {
        let Some(rng) = &mut self.crashes else {
            return;
        };
        let (snapshot, crash) = (rng.chance(0.15), rng.chance(0.06));
        if snapshot {
            // (Its size is not traced: the request-id memory's hasher seed
            // is random, so the JSON's length varies from run to run.)
            if self.hub.snapshot().await.is_some() {
                self.restarts.snapshots += 1;
            }
            self.log("server snapshot".into());
        }
        if crash {
            match self.hub.restart().await {
                Ok(r) => {
                    self.restarts.crashes += 1;
                    self.restarts.replayed += r.entries as u64;
                    self.restarts.ringing += r.ringing as u64;
                    self.restarts.dropped += r.dropped as u64;
                    self.log(format!("server crashed and recovered: {r:?}"));
                }
                Err(e) => {
                    let msg = format!("VIOLATION: the server could not recover: {e}");
                    self.trace.lock().expect("trace").push(msg);
                }
            }
        }
    }

    async fn step(&mut self) {
        let roll = self.rng.below(100);
        let acked: Vec<(CallId, usize, Vec<UserId>, bool)> =
            self.acked.lock().expect("acked").clone();
        match roll {
            0..=29 => {
                let i = self.rng.below(self.devices.len() as u64) as usize;
                let Some(live) = &self.devices[i].live else {
                    return;
                };
                let me = self.devices[i].user.clone();
                let n = 1 + self.rng.below(3) as usize;
                let mut callees: Vec<UserId> = Vec::new();
                for _ in 0..n {
                    let (u, _) = USERS[self.rng.below(USERS.len() as u64) as usize];
                    let u = UserId::new(u).expect("valid");
                    if u != me && !callees.contains(&u) {
                        callees.push(u);
                    }
                }
                if callees.is_empty() {
                    return;
                }
                let timeout_s = [5u32, 10, 30][self.rng.below(3) as usize];
                let client = live.client.clone();
                let index = live.index;
                let name = self.incarnations[index].name.clone();
                let (trace, acked_list, t0) = (self.trace.clone(), self.acked.clone(), self.t0);
                self.log(format!("{name} invite {callees:?} ({timeout_s} s)"));
                self.tasks.spawn(async move {
                    let req = InviteRequest::new(callees.clone(), CallType::Voice)
                        .with_timeout_s(Some(timeout_s));
                    let r = client.invite_with(req).await;
                    let t = t0.elapsed().as_secs_f64();
                    if let Ok(inv) = &r {
                        acked_list.lock().expect("acked").push((
                            inv.call_id.clone(),
                            index,
                            callees,
                            inv.joined.is_some(),
                        ));
                    }
                    trace.lock().expect("trace").push(format!(
                        "{t:8.3}s {name} invite -> {:?}",
                        r.map(|i| i.call_id)
                    ));
                });
            }
            30..=64 if !acked.is_empty() => {
                let (call, _, callees, _) =
                    acked[self.rng.below(acked.len() as u64) as usize].clone();
                let callee = callees[self.rng.below(callees.len() as u64) as usize].clone();
                let Some(i) = self.pick_device_of(&callee) else {
                    return;
                };
                let what = match self.rng.below(10) {
                    0..=5 => "accept",
                    6..=8 => "decline",
                    _ => "decline_busy",
                };
                self.command(i, what, call.clone());
                // Sometimes a second device of the same callee answers too.
                if self.rng.chance(0.3) {
                    if let Some(j) = self.pick_device_of(&callee) {
                        self.command(j, "accept", call);
                    }
                }
            }
            65..=79 if !acked.is_empty() => {
                let (call, inviter, callees, _) =
                    acked[self.rng.below(acked.len() as u64) as usize].clone();
                let caller = self.incarnations[inviter].user.clone();
                let who = if self.rng.chance(0.7) {
                    caller
                } else {
                    callees[0].clone()
                };
                let Some(i) = self.pick_device_of(&who) else {
                    return;
                };
                let what = if self.rng.chance(0.5) {
                    "cancel"
                } else {
                    "hang_up"
                };
                self.command(i, what, call);
            }
            // Calls that grow and shrink: someone adds a user, an invitee
            // joins late, someone ends the call for everyone.
            90..=97 if !acked.is_empty() => {
                // One of the newest calls: the ones most likely still going.
                let newest = self.rng.below(acked.len().min(3) as u64) as usize;
                let (call, inviter, callees, _) = acked[acked.len() - 1 - newest].clone();
                let caller = self.incarnations[inviter].user.clone();
                let mut members = callees.clone();
                members.push(caller);
                let who = members[self.rng.below(members.len() as u64) as usize].clone();
                let Some(i) = self.pick_device_of(&who) else {
                    return;
                };
                match self.rng.below(3) {
                    0 => {
                        let (u, _) = USERS[self.rng.below(USERS.len() as u64) as usize];
                        let added = UserId::new(u).expect("valid");
                        let Some(live) = &self.devices[i].live else {
                            return;
                        };
                        let client = live.client.clone();
                        let name = self.incarnations[live.index].name.clone();
                        let (trace, t0) = (self.trace.clone(), self.t0);
                        self.log(format!("{name} add {added} to {call}"));
                        self.tasks.spawn(async move {
                            let r = client.invite_more(&call, [added.as_str()]).await;
                            let t = t0.elapsed().as_secs_f64();
                            trace.lock().expect("trace").push(format!(
                                "{t:8.3}s {name} add {added} to {call} -> {:?}",
                                r.map(|i| i.callees)
                            ));
                        });
                    }
                    1 => self.command(i, "join", call),
                    _ => self.command(i, "end", call),
                }
            }
            80..=89 => {
                let i = self.rng.below(self.devices.len() as u64) as usize;
                self.stop(i).await;
                if self.rng.chance(0.8) {
                    let d = self.rng.between(Duration::ZERO, Duration::from_secs(20));
                    tokio::time::sleep(d).await;
                    self.start(i).await;
                }
            }
            _ => {}
        }
        let d = self.rng.between(Duration::ZERO, Duration::from_secs(3));
        if let Some(rng) = &mut self.crashes {
            // The crash comes at any moment, often while the commands just
            // sent (or their answers) are on their way.
            let first = if rng.chance(0.5) {
                rng.between(Duration::ZERO, Duration::from_millis(200))
            } else {
                rng.between(Duration::ZERO, d)
            };
            let first = first.min(d);
            tokio::time::sleep(first).await;
            self.maybe_crash().await;
            tokio::time::sleep(d - first).await;
        } else {
            tokio::time::sleep(d).await;
        }
    }
}

/// Looks at the hub's switchboard between steps (outcomes never change; a
/// timer exactly when something has a deadline).
async fn observe(hub: &MemoryHub, oracle: Oracle) -> Oracle {
    hub.inspect(move |sb: &Switchboard| {
        let mut oracle = oracle;
        oracle.observe(sb);
        oracle
    })
    .await
    .expect("hub alive")
}

/// A device's link to the hub: direct, or (http profile) a long-polled
/// session.
fn link(
    profile: Profile,
    hub: MemoryTransport,
    seed: u64,
    stats: &Arc<Mutex<crate::longpoll::LongPollStats>>,
) -> BoxTransport {
    match profile {
        Profile::Http => Arc::new(crate::longpoll::LongPollTransport::new(
            hub,
            seed ^ 0x4854_5450,
            0.2,
            stats.clone(),
        )),
        _ => Arc::new(hub),
    }
}

/// Runs the world for `steps` workload steps, heals, settles, and hands
/// the record to the oracle.
pub async fn run_world(seed: u64, profile: Profile, steps: usize) -> Outcome {
    // History kept for the whole run, so the oracle sees every call.
    let mut config = invitation_core::SwitchboardConfig::default();
    config.retention = Duration::from_secs(3600);
    let t0 = Instant::now();
    let ids = invitation_core::SequentialCallIds::default();
    let hub = if profile.restarts() {
        MemoryHub::with_restarts(config, ids, None)
    } else if profile.tokens() {
        MemoryHub::with_authenticator(config, ids, Arc::new(Tokens { t0 }))
    } else {
        MemoryHub::with_config(config, ids)
    };
    let mut devices = Vec::new();
    let poll_stats = Arc::new(Mutex::new(crate::longpoll::LongPollStats::default()));
    for (u, devs) in USERS {
        for d in devs {
            let user = User::new(UserId::new(u).expect("valid"), u).expect("valid");
            let fault_seed = seed ^ ((devices.len() as u64 + 1) * 0x1000_0001);
            devices.push(Device {
                user: user.id.clone(),
                device: DeviceId::new(*d).expect("valid"),
                transport: FaultyTransport::new(
                    link(profile, hub.transport(user), fault_seed, &poll_stats),
                    profile.faults(),
                    fault_seed,
                ),
                live: None,
                starts: 0,
            });
        }
    }
    let mut world = World {
        rng: SimRng::new(seed),
        hub: hub.clone(),
        crashes: profile
            .restarts()
            .then(|| SimRng::new(seed ^ 0xc4a5_4e57_a47e)),
        restarts: Restarts::default(),
        t0,
        seed,
        devices,
        incarnations: Vec::new(),
        trace: Arc::new(Mutex::new(Vec::new())),
        acked: Arc::new(Mutex::new(Vec::new())),
        tasks: tokio::task::JoinSet::new(),
        tokens: profile.tokens(),
        healed: Arc::new(AtomicBool::new(false)),
        show_events: std::env::var_os("SIM_EVENTS").is_some(),
    };
    let mut oracle = Oracle::new();
    for i in 0..world.devices.len() {
        world.start(i).await;
    }
    for _ in 0..steps {
        world.step().await;
        oracle = observe(&hub, oracle).await;
    }
    // Heal, bring every device back, let every timer fire.
    world.log("heal".into());
    world.healed.store(true, Ordering::Relaxed);
    for d in &world.devices {
        d.transport.set_config(FaultConfig::default());
    }
    for i in 0..world.devices.len() {
        if world.devices[i].live.is_none() {
            world.start(i).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(300)).await;
    for i in 0..world.devices.len() {
        if let Some(live) = world.devices[i].live.take() {
            world.harvest(&live, true);
            world.devices[i].live = Some(live);
        }
    }
    let acked = world.acked.lock().expect("acked").clone();
    let mut record = OracleRecord::new(profile.slack());
    record.devices = world.incarnations.clone();
    record.invitations = acked
        .iter()
        .map(|(call_id, inviter, _, joined)| Acknowledged::new(call_id.clone(), *inviter, *joined))
        .collect();
    let (mut violations, retries) = hub
        .inspect(move |sb: &Switchboard| {
            (oracle.finish(sb, &record), sb.stats().duplicate_requests)
        })
        .await
        .expect("hub alive");
    world.restarts.retries_answered = retries;
    world.tasks.abort_all();
    for d in &mut world.devices {
        if let Some(live) = d.live.take() {
            live.client.close().await;
        }
    }
    let mut faults = FaultStats::default();
    for d in &world.devices {
        faults.add(&d.transport.stats());
    }
    let closes: Vec<(CloseCause, u64)> = CLOSES.iter().map(|c| (*c, hub.closes(*c))).collect();
    let poll_stats = std::mem::take(&mut *poll_stats.lock().unwrap_or_else(|e| e.into_inner()));
    world.log(format!(
        "faults: {faults:?}; hub closes: {closes:?}; poll answers lost: {}",
        poll_stats.lost
    ));
    let trace = world.trace.lock().expect("trace").clone();
    // The simulation's own checks: no event stream fell behind; no `sync`
    // was answered twice.
    violations.extend(trace.iter().filter(|l| l.starts_with("VIOLATION")).cloned());
    if faults.syncs_answered_twice > 0 {
        violations.push(format!(
            "{} sync requests were answered twice",
            faults.syncs_answered_twice
        ));
    }
    // And the long-poll links': every client got exactly what was written.
    violations.extend(poll_stats.misdelivered);
    Outcome {
        violations,
        trace,
        calls: acked.len(),
        faults,
        closes,
        restarts: world.restarts,
        poll_answers_lost: poll_stats.lost,
    }
}
