//! Several `invitation-server` processes on one NATS, behind a load
//! balancer (a TCP proxy here that sends each new connection to the next
//! node that answers), with nodes killed with SIGKILL while calls ring.
//!
//! After the chaos, the switchboard's state is read back from JetStream
//! (as the next leader would) and handed, with what every device saw, to
//! the invariant oracle the simulation uses: no outcome lost or doubled,
//! every ring ended once on every device, every inviting device learned
//! every outcome once, timers fired once.
//!
//! Then, with in-process nodes: the HTTP API from any node, the per-user
//! device cap across nodes, and a leader that stops cleanly handing the
//! lease over.
//!
//! Skipped (saying so) without nats-server; under `.ci/run` its absence
//! fails (`INVITATION_REQUIRE_NATS=1`).

mod common;
mod suite;

use suite::Fixture as _;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::nats::nats_server;
use invitation::Callback;
use invitation::prelude::*;
use invitation::testing::Recorder;
use invitation::testing::fault::SimRng;
use invitation::testing::oracle::{Acknowledged, DeviceRecord, HandlerRecord, Oracle, Record};
use invitation::transport::ws::WsTransport;
use invitation_core::durable::{Durable, TimeFrame};
use invitation_core::{AppEvent, DeviceId, SequentialCallIds, SwitchboardConfig};
use invitation_server::auth::Authority;
use invitation_server::cluster::{Nats, read_state};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_invitation-server");
const DEPLOYMENT: &str = "chaos";
/// Bound for anything that should happen "now", failovers included.
const SOON: Duration = Duration::from_secs(30);

/// One node process and everything it printed.
struct Node {
    child: Child,
    port: u16,
    lines: Arc<Mutex<Vec<String>>>,
}

/// Starts node `name` on `port` (0: any) and waits for it to listen.
fn start_node(nats_url: &str, name: &str, port: u16) -> Node {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("INVITATION_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.env("INVITATION_SECRET", common::SECRET)
        .env("INVITATION_LISTEN", format!("127.0.0.1:{port}"))
        .env("INVITATION_IN_MEMORY", "true")
        .env("INVITATION_LOG_FORMAT", "json")
        .env("INVITATION_NATS_URL", nats_url)
        .env("INVITATION_CLUSTER_NAME", DEPLOYMENT)
        .env("INVITATION_NODE_NAME", name)
        .env("INVITATION_CLUSTER_LEASE_MS", "1000")
        .env("INVITATION_SHED_INVITES_AFTER_MS", "0")
        .env("INVITATION_CALLER_GONE_GRACE_S", "5")
        .env("INVITATION_INVITE_RATE_PER_USER", "1000")
        .env("INVITATION_INVITE_BURST_PER_USER", "1000")
        .env("INVITATION_CONN_RATE_PER_IP", "10000")
        .env("INVITATION_CONN_BURST_PER_IP", "10000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("the server binary starts");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let out: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
    let err: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
    for stream in [out, err] {
        let (tx, lines) = (tx.clone(), lines.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
    }
    let deadline = std::time::Instant::now() + SOON;
    let port = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            panic!(
                "{name} did not listen; it printed {:#?}",
                lines.lock().unwrap()
            );
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let listening = v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("listening"));
        if let (true, Some(addr)) = (listening, v["fields"]["addr"].as_str()) {
            break addr.parse::<SocketAddr>().unwrap().port();
        }
    };
    Node { child, port, lines }
}

/// A node outlives no test, failed ones included.
impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

impl Node {
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn said(&self, message: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(message))
            .count()
    }
}

/// `GET /metrics` of a node; empty when it does not answer.
async fn metrics(port: u16) -> String {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    tokio::time::timeout(Duration::from_secs(2), get)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
}

/// The index of the node that leads, waiting for one (at most [`SOON`]).
async fn leader(ports: &[u16]) -> usize {
    let deadline = Instant::now() + SOON;
    loop {
        for (i, port) in ports.iter().enumerate() {
            if metrics(*port)
                .await
                .contains("invitation_cluster_leading 1")
            {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no node leads after {SOON:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A load balancer: each new connection goes to the next node that
/// accepts it (a killed node's port refuses, so its clients land elsewhere).
async fn balancer(ports: Vec<u16>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut down, _)) = listener.accept().await {
            let (ports, next) = (ports.clone(), next.clone());
            tokio::spawn(async move {
                let first = next.fetch_add(1, Ordering::Relaxed);
                for k in 0..ports.len() {
                    let port = ports[(first + k) % ports.len()];
                    if let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// One device for the whole run: its client and what it saw.
struct Device {
    client: Client,
    rec: Recorder,
    events: Arc<Mutex<Vec<(Instant, AppEvent)>>>,
    user: UserId,
    device: DeviceId,
}

async fn device(lb: SocketAddr, user: &str, device: &str, seed: u64) -> Device {
    let authority = Authority::new(
        common::SECRET.as_bytes(),
        &invitation_server::Config::default().audience,
        None,
    );
    let uid = UserId::new(user).unwrap();
    let token = authority.mint(&uid, user, Duration::from_secs(3600));
    let rec = Recorder::with_deadline(SOON);
    let client = Client::builder()
        .user(User::named(user, user))
        .device(device)
        .token(token)
        .transport(Arc::new(WsTransport::new(format!("ws://{lb}/"))))
        .handler(rec.clone())
        .backoff(Duration::from_millis(20), Duration::from_millis(300))
        .jitter_seed(seed)
        .command_timeout(SOON)
        .ring_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut rx = client.events();
    let sink = events.clone();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(e) => sink.lock().unwrap().push((Instant::now(), e)),
                Err(RecvError::Lagged(n)) => panic!("an event stream lagged by {n}"),
                Err(RecvError::Closed) => break,
            }
        }
    });
    tokio::time::timeout(SOON, client.connect())
        .await
        .expect("connects in time")
        .expect("connects");
    Device {
        client,
        rec,
        events,
        user: uid,
        device: DeviceId::new(device).unwrap(),
    }
}

/// What the callee (or caller) does with a call.
#[derive(Clone, Copy, Debug)]
enum Fate {
    /// A callee device accepts; the caller hangs up a little later.
    Accept,
    Decline,
    /// The caller cancels.
    Cancel,
    /// Nobody answers: the ring times out.
    Timeout,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_nodes_mid_ring_loses_and_doubles_no_outcome() {
    let Some(nats) = nats_server("chaos").await else {
        return;
    };
    let names = ["n0", "n1", "n2"];
    let mut nodes: Vec<Node> = names.iter().map(|n| start_node(&nats.url, n, 0)).collect();
    let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
    let first_leader = leader(&ports).await;
    let lb = balancer(ports.clone()).await;

    // Five users, two of them with two devices (every device rings).
    let plan: [(&str, &[&str]); 5] = [
        ("u0", &["d0"]),
        ("u1", &["d0", "d1"]),
        ("u2", &["d0"]),
        ("u3", &["d0", "d1"]),
        ("u4", &["d0"]),
    ];
    let mut devices = Vec::new();
    for (u, devs) in plan {
        for d in devs {
            let seed = devices.len() as u64 + 1;
            devices.push(device(lb, u, d, seed).await);
        }
    }
    let devices = Arc::new(devices);
    let of_user = |u: usize| -> Vec<usize> {
        let id = plan[u].0;
        (0..devices.len())
            .filter(|&i| devices[i].user.as_str() == id)
            .collect()
    };

    // The chaos, between the rounds of calls: the leader dies, then
    // another node, then the (new) leader again; each comes back on its
    // port 1.5 s after it died.

    let mut rng = SimRng::new(0x00c1_a05e);
    let acked: Arc<Mutex<Vec<Acknowledged>>> = Arc::new(Mutex::new(Vec::new()));
    let mut calls = tokio::task::JoinSet::new();
    let started = Instant::now();
    let mut kills = vec![(2500u64, true), (6000, false), (9500, true)]
        .into_iter()
        .peekable();
    let mut downs: Vec<(usize, Instant)> = Vec::new();
    let mut terms_expected = 1;
    // Calls acknowledged and not yet answered: a kill waits for one, so
    // every kill lands mid-ring.
    let ringing = Arc::new(AtomicUsize::new(0));
    const ROUNDS: usize = 28;
    let mut round = 0;
    while round < ROUNDS || kills.peek().is_some() {
        assert!(
            round < 3 * ROUNDS,
            "{} kills never found a call ringing in {round} rounds",
            kills.len()
        );
        // Kills and restarts happen between rounds, on schedule.
        let now_ms = started.elapsed().as_millis() as u64;
        let due = kills.peek().is_some_and(|(at, _)| *at <= now_ms);
        if due && ringing.load(Ordering::Relaxed) > 0 {
            let (_, kill_leader) = kills.next().unwrap();
            let lead = leader(&ports).await;
            let victim = if kill_leader {
                lead
            } else {
                (lead + 1) % ports.len()
            };
            nodes[victim].kill9();
            if kill_leader {
                terms_expected += 1;
            }
            downs.push((victim, Instant::now()));
        }
        let mut restarted = Vec::new();
        for (k, (victim, at)) in downs.iter().enumerate() {
            if at.elapsed() >= Duration::from_millis(1500) {
                let old = std::mem::take(&mut *nodes[*victim].lines.lock().unwrap());
                nodes[*victim] = start_node(&nats.url, names[*victim], ports[*victim]);
                nodes[*victim].lines.lock().unwrap().splice(0..0, old);
                restarted.push(k);
            }
        }
        for k in restarted.into_iter().rev() {
            downs.remove(k);
        }

        let caller = rng.below(plan.len() as u64) as usize;
        let callee = (caller + 1 + rng.below(plan.len() as u64 - 1) as usize) % plan.len();
        let inviter = of_user(caller)[0];
        let callee_devs = of_user(callee);
        let answering = callee_devs[rng.below(callee_devs.len() as u64) as usize];
        let fate = match rng.below(4) {
            0 => Fate::Accept,
            1 => Fate::Decline,
            2 => Fate::Cancel,
            _ => Fate::Timeout,
        };
        let delay = Duration::from_millis(200 + rng.below(1300));
        let (devices, acked, ringing) = (devices.clone(), acked.clone(), ringing.clone());
        let callee_id = plan[callee].0;
        calls.spawn(async move {
            let t0 = Instant::now();
            let log = run_call(
                round, inviter, answering, callee_id, fate, delay, &devices, &acked, &ringing,
            )
            .await;
            format!("{log} ({} ms)", t0.elapsed().as_millis())
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        round += 1;
    }
    let mut log = Vec::new();
    while let Some(r) = tokio::time::timeout(SOON * 2, calls.join_next())
        .await
        .expect("every call's actions finish")
    {
        log.push(r.expect("no call task panics"));
    }
    for (victim, _) in std::mem::take(&mut downs) {
        let old = std::mem::take(&mut *nodes[victim].lines.lock().unwrap());
        nodes[victim] = start_node(&nats.url, names[victim], ports[victim]);
        nodes[victim].lines.lock().unwrap().splice(0..0, old);
    }

    // Settled: nothing rings or waits in the state JetStream holds, and
    // every device caught up with its user's last event.
    let calls_done = started.elapsed();
    let js = Nats::connect(&nats.url, DEPLOYMENT).await.unwrap();
    let deadline = Instant::now() + SOON * 2;
    let durable = loop {
        let (snapshot, entries) = read_state(&js).await.expect("the state reads back");
        let now = std::time::Instant::now();
        let unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        let (mut durable, _) = Durable::recover(
            SwitchboardConfig::default(),
            SequentialCallIds::default(),
            TimeFrame::new(now, unix_ns),
            snapshot,
            entries,
            now,
        )
        .expect("the log replays");
        durable.handle_timeout(now);
        let sb = durable.switchboard();
        let behind: Vec<String> = devices
            .iter()
            .filter(|d| d.client.last_seq() != Some(sb.last_seq(&d.user)))
            .map(|d| {
                format!(
                    "{}/{}: {:?} of {}",
                    d.user,
                    d.device,
                    d.client.last_seq(),
                    sb.last_seq(&d.user)
                )
            })
            .collect();
        if durable.poll_timeout().is_none() && behind.is_empty() {
            break durable;
        }
        assert!(
            Instant::now() < deadline,
            "not settled: timer {:?}, devices behind {behind:?}\ncalls: {log:#?}",
            durable.poll_timeout()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let mut record = Record::new(Duration::from_secs(5));
    for d in devices.iter() {
        let mut r = DeviceRecord::new(
            format!("{}/{}", d.user, d.device),
            d.user.clone(),
            d.device.clone(),
        );
        r.events = d
            .events
            .lock()
            .unwrap()
            .iter()
            .map(|(at, e)| (at.into_std(), e.clone()))
            .collect();
        let due = r
            .events
            .iter()
            .filter(|(_, e)| Callback::of(e).is_some())
            .map(|(_, e)| e.clone())
            .collect();
        let ran = d.rec.records().into_iter().map(|x| x.event).collect();
        r.handler = Some(HandlerRecord::new(due, ran));
        r.last_seq = d.client.last_seq();
        record.devices.push(r);
    }
    record.invitations = acked.lock().unwrap().clone();
    let violations = Oracle::new().finish(durable.switchboard(), &record);
    assert!(
        violations.is_empty(),
        "{} violations:\n{}\ncalls: {log:#?}",
        violations.len(),
        violations.join("\n")
    );
    assert!(
        record.invitations.len() >= ROUNDS / 3,
        "too few invitations were acknowledged: {} of {ROUNDS}\n{log:#?}",
        record.invitations.len()
    );
    // The last take-over may come after the calls settled.
    leader(&ports).await;
    let terms: usize = nodes
        .iter()
        .map(|n| n.said("leading: the switchboard runs on this node"))
        .sum();
    assert!(
        terms >= terms_expected,
        "the lead changed hands {terms} times, expected at least {terms_expected} (first leader n{first_leader})"
    );
    println!(
        "{terms} terms; {} invitations acknowledged; calls done after {calls_done:?}, \
         settled after {:?}\n{}",
        record.invitations.len(),
        started.elapsed(),
        log.join("\n")
    );
    for d in devices.iter() {
        d.client.close().await;
    }
    for n in &mut nodes {
        n.kill9();
    }
}

/// One call of the stream: invited, then its fate; a line for the log.
#[allow(clippy::too_many_arguments)]
async fn run_call(
    round: usize,
    inviter: usize,
    answering: usize,
    callee_id: &str,
    fate: Fate,
    delay: Duration,
    devices: &[Device],
    acked: &Mutex<Vec<Acknowledged>>,
    ringing: &AtomicUsize,
) -> String {
    let c = &devices[inviter].client;
    let invitation = match c.invite([callee_id], CallType::Voice, None).await {
        Ok(inv) => inv,
        Err(e) => return format!("round {round}: invite refused: {e}"),
    };
    acked.lock().unwrap().push(Acknowledged::new(
        invitation.call_id.clone(),
        inviter,
        invitation.joined.is_some(),
    ));
    if invitation.joined.is_some() {
        // Glare: the invite joined the other side's call; it ends.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = c.hang_up(&invitation.call_id).await;
        return format!("round {round}: joined, hang up -> {r:?}");
    }
    let call = invitation.call_id;
    ringing.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(delay).await;
    ringing.fetch_sub(1, Ordering::Relaxed);
    let answer = match fate {
        Fate::Accept => {
            let r = devices[answering].client.accept(&call).await;
            if r.is_ok() {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let hung_up = c.hang_up(&call).await;
                return format!("round {round}: {call} accepted, hang up -> {hung_up:?}");
            }
            r
        }
        Fate::Decline => devices[answering].client.decline(&call).await,
        Fate::Cancel => c.cancel(&call).await,
        Fate::Timeout => Ok(()),
    };
    format!("round {round}: {call} {fate:?} -> {answer:?}")
}

/// A backend command sent to one node rings a user on another; the same
/// request sent again to a third node is answered, not run again.
#[tokio::test]
async fn a_backend_command_on_any_node_reaches_users_on_the_others() {
    let Some(f) = suite::Cluster::start("backend").await else {
        return;
    };
    let bob = f.device("bob", "phone").await;
    let request = invitation_core::RequestId::new("backend-1").unwrap();
    let invite =
        invitation_core::protocol::Command::Invite(invitation_core::protocol::InviteRequest::new(
            vec![UserId::new("bob").unwrap()],
            CallType::Voice,
        ));
    let alice = User::named("alice", "Alice");
    let first = f.nodes[1]
        .backend_command(alice.clone(), request.clone(), invite.clone())
        .await
        .expect("invited through node 1");
    let invitation_core::protocol::ReplyResult::Invited { call_id, .. } = &first else {
        panic!("expected an invitation, got {first:?}");
    };
    let ring = bob.rec.wait_for(Callback::IncomingCallReceived, 1).await;
    assert_eq!(&ring.call_id, call_id);
    let again = f.nodes[2]
        .backend_command(alice, request, invite)
        .await
        .expect("answered through node 2");
    assert_eq!(again, first, "the same request is answered, not run again");
    f.stop().await;
}

/// `max_devices_per_user` counts a user's devices on every node.
#[tokio::test]
async fn the_device_cap_holds_across_nodes() {
    let Some(f) = suite::Cluster::start_with("devcap", 3, |c| c.max_devices_per_user = 2).await
    else {
        return;
    };
    let (mut d1, _) = common::Raw::hello(&f.nodes[0], "alice", "d1", None).await;
    let (mut d2, _) = common::Raw::hello(&f.nodes[1], "alice", "d2", None).await;
    let mut d3 = common::Raw::connect(&f.nodes[2]).await;
    d3.send_hello(&f.nodes[2].token("alice", "alice"), "d3", None)
        .await;
    let (_, seen) = d3.until_closed().await;
    let refused = invitation_core::protocol::ServerBody::Closing {
        reason: invitation_core::protocol::CloseReason::TooManyDevices,
    };
    assert!(seen.iter().any(|m| m.body == refused), "{seen:?}");
    assert!(
        !seen.iter().any(|m| matches!(
            m.body,
            invitation_core::protocol::ServerBody::Welcome { .. }
        )),
        "{seen:?}"
    );
    // The first two are still served.
    d1.ping().await;
    d2.ping().await;
    f.stop().await;
}

/// A leader stopped with SIGTERM (a drain) hands the lease back on its way
/// out; another node leads and calls go on between the others.
#[tokio::test]
async fn a_drained_leader_hands_the_lease_over() {
    let Some(mut f) = suite::Cluster::start("drain").await else {
        return;
    };
    let nats = Nats::connect(&f.nats.url, "flows").await.unwrap();
    let observer =
        invitation_server::cluster::Lease::open(&nats, "observer", Duration::from_secs(1))
            .await
            .unwrap();
    let before = observer.holder().await.unwrap().expect("the lease is held");
    let leader = f.leader().expect("a node leads");
    f.nodes.remove(leader).stop().await;
    let after = observer.holder().await.unwrap();
    assert_ne!(
        after.as_deref(),
        Some(before.as_str()),
        "the stopped leader still holds the lease"
    );
    f.settled().await;
    let alice = f.device("alice", "phone").await;
    let bob = f.device("bob", "phone").await;
    let call = suite::invite(&alice, &["bob"], 60).await.call_id;
    let ring = bob.rec.wait_for(Callback::IncomingCallReceived, 1).await;
    assert_eq!(ring.call_id, call);
    f.stop().await;
}

/// Once the log has grown past `snapshot_after_mb`, the leader writes a
/// snapshot to JetStream and trims the log it covers; a node that takes
/// over starts from that snapshot and still knows a call from before it.
#[tokio::test]
async fn a_snapshot_bounds_the_log_and_a_new_leader_starts_from_it() {
    use invitation_core::protocol::{Command, InviteRequest, ReplyResult};
    let Some(mut f) = suite::Cluster::start_with("snapshot", 2, |c| c.snapshot_after_mb = 1).await
    else {
        return;
    };
    let alice = User::named("alice", "Alice");
    let invite = |callee: &str| {
        Command::Invite(
            InviteRequest::new(vec![UserId::new(callee).unwrap()], CallType::Voice)
                .with_timeout_s(Some(600)),
        )
    };
    let request = |i: usize| invitation_core::RequestId::new(format!("r-{i}")).unwrap();
    // A call that rings through everything below.
    let kept = match f.nodes[0]
        .backend_command(alice.clone(), request(0), invite("bob"))
        .await
        .unwrap()
    {
        ReplyResult::Invited { call_id, .. } => call_id,
        other => panic!("{other:?}"),
    };
    // Churn: carol's calls, invited and canceled, until snapshots are written.
    let leader = f.leader().expect("a node leads");
    let deadline = Instant::now() + SOON * 4;
    let mut i = 1;
    // Two, so that the second trims the first's pieces.
    while f.nodes[leader].metrics.snapshots.load(Ordering::Relaxed) < 2 {
        assert!(Instant::now() < deadline, "no snapshot after {i} commands");
        let carol = User::named("carol", "Carol");
        let call = match f.nodes[0]
            .backend_command(carol.clone(), request(i), invite("dave"))
            .await
            .unwrap()
        {
            ReplyResult::Invited { call_id, .. } => call_id,
            other => panic!("{other:?}"),
        };
        f.nodes[0]
            .backend_command(
                carol,
                request(i + 1),
                Command::Cancel {
                    call_id: call,
                    custom_data: None,
                },
            )
            .await
            .unwrap();
        i += 2;
    }
    // The snapshot lands, then the log before it is trimmed.
    let nats = Nats::connect(&f.nats.url, "flows").await.unwrap();
    let deadline = Instant::now() + SOON;
    loop {
        let (snapshot, entries) = read_state(&nats).await.unwrap();
        if snapshot.is_some() && entries.len() < i / 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no trimmed snapshot in JetStream: snapshot {}, {} entries after {i} commands",
            snapshot.is_some(),
            entries.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The other node takes over from the snapshot: the first call rings on.
    f.nodes.remove(leader).stop().await;
    f.settled().await;
    let canceled = f.nodes[0]
        .backend_command(
            alice,
            request(i),
            Command::Cancel {
                call_id: kept,
                custom_data: None,
            },
        )
        .await;
    assert_eq!(
        canceled,
        Ok(ReplyResult::Done),
        "the call from before the snapshot"
    );
    f.stop().await;
}

/// Ended calls are recorded in JetStream, and any node pages through a
/// user's records, oldest first, with the same cursors as one node.
#[tokio::test]
async fn call_records_are_kept_and_read_from_any_node() {
    use invitation_server::RecordQuery;
    let Some(f) = suite::Cluster::start("records").await else {
        return;
    };
    let alice = f.device("alice", "phone").await;
    let bob = f.device("bob", "phone").await;
    let mut calls = Vec::new();
    for n in 1..=3 {
        let call = suite::invite(&alice, &["bob"], 60).await.call_id;
        bob.rec.wait_for(Callback::IncomingCallReceived, n).await;
        bob.client.decline(&call).await.unwrap();
        calls.push(call);
    }
    let query = |cursor| RecordQuery {
        user: UserId::new("bob").unwrap(),
        from: 0,
        to: i64::MAX,
        cursor,
        limit: 2,
    };
    // Published after the turn that ended each call: wait for the third.
    let deadline = Instant::now() + SOON;
    let first = loop {
        let page = f.nodes[2].call_records(query(None)).await.unwrap();
        if page.next_cursor.is_some() {
            break page;
        }
        assert!(Instant::now() < deadline, "records not listed: {page:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let second = f.nodes[1]
        .call_records(query(first.next_cursor.clone()))
        .await
        .unwrap();
    let listed: Vec<_> = first
        .records
        .iter()
        .chain(&second.records)
        .map(|r| r.call_id.clone())
        .collect();
    assert_eq!(listed, calls, "every call once, oldest first");
    assert!(second.next_cursor.is_none());
    assert!(
        first.records.iter().all(|r| r.reason == Reason::Declined),
        "{first:?}"
    );
    f.stop().await;
}

/// NATS down: no node decides alone (each stops serving calls once a
/// lease's time passed without a leader, `/healthz` 503); NATS back: a
/// leader is elected again, the state comes back from JetStream, and a call
/// that rang before the outage is answered after it.
#[tokio::test]
async fn a_nats_outage_pauses_calls_and_loses_none() {
    let Some(mut f) = suite::Cluster::start_with("outage", 2, |_| {}).await else {
        return;
    };
    let alice = f.device("alice", "phone").await;
    let bob = f.device("bob", "phone").await;
    let call = suite::invite(&alice, &["bob"], 600).await.call_id;
    bob.rec.wait_for(Callback::IncomingCallReceived, 1).await;

    f.nats.kill().await;
    let deadline = Instant::now() + SOON;
    while !f
        .nodes
        .iter()
        .all(|n| n.metrics.cluster_no_leader.load(Ordering::Relaxed))
    {
        assert!(
            Instant::now() < deadline,
            "a node still follows a leader {SOON:?} into the outage"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(f.leader().is_none(), "a node still leads without NATS");

    f.nats.restart().await;
    f.settled().await;
    bob.client
        .accept(&call)
        .await
        .expect("the call rang through the outage");
    let accepted = alice.rec.wait_for(Callback::OutgoingCallAccepted, 1).await;
    assert_eq!(accepted.call_id, call);
    f.stop().await;
}
