//! The durable server as an operator meets it: the real binary on a
//! temporary data directory, killed with SIGKILL in the middle of a ringing
//! call (or stopped cleanly), restarted on the same directory and port, and
//! real WebSocket clients resuming from their last sequence number. Every
//! event each side receives is checked by sequence number: nothing missing,
//! nothing twice. Damaged data directories stop the start with an error
//! naming the file; a torn tail is cut with a warning.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use invitation_core::UserId;
use invitation_server::Authority;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

mod common;

use common::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_invitation-server");
const SECRET: &str = "durable-test-secret-0123456789";
/// Bound for anything that should happen "now" over loopback.
const SOON: Duration = Duration::from_secs(20);

/// A running server process and what it printed.
struct Proc {
    child: Child,
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

/// The binary on `dir`, listening on `port` (0: any), with `env` settings.
fn command(dir: &Path, port: u16, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("INVITATION_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.env("INVITATION_SECRET", SECRET)
        .env("INVITATION_DATA_DIR", dir)
        .env("INVITATION_LISTEN", format!("127.0.0.1:{port}"))
        .env("INVITATION_LOG_FORMAT", "json")
        .env("INVITATION_SHED_INVITES_AFTER_MS", "0")
        .env("INVITATION_CALLER_GONE_GRACE_S", "60")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Collects a child's output lines into `lines`; `tx` hears each one.
fn collect(child: &mut Child, lines: Arc<Mutex<Vec<String>>>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    for stream in [Box::new(out) as Box<dyn Read + Send>, Box::new(err)] {
        let tx = tx.clone();
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
    }
    rx
}

/// Starts the server and waits for its "listening" line.
fn start(dir: &Path, port: u16, env: &[(&str, &str)]) -> Proc {
    let mut child = command(dir, port, env).spawn().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let rx = collect(&mut child, lines.clone());
    let deadline = Instant::now() + SOON;
    let addr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            panic!(
                "the server did not start listening; it printed {:#?}",
                lines.lock().unwrap()
            );
        };
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(addr) = v["fields"]["addr"].as_str() {
            if v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("listening"))
            {
                break addr.parse().unwrap();
            }
        }
    };
    Proc { child, addr, lines }
}

/// Starts the server expecting it to refuse: returns its exit status and
/// everything it printed.
fn start_refused(dir: &Path, env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let mut child = command(dir, 0, env).spawn().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let _rx = collect(&mut child, lines.clone());
    let deadline = Instant::now() + SOON;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!(
                "the server started on a directory it must refuse: {:#?}",
                lines.lock().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The reader threads finish with the pipes.
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end && Arc::strong_count(&lines) > 1 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let text = lines.lock().unwrap().join("\n");
    (status, text)
}

impl Proc {
    /// SIGKILL: no chance to write anything more.
    fn kill9(mut self) -> Vec<String> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.lines.lock().unwrap().clone()
    }

    /// SIGTERM, and waits for the process to end.
    fn terminate(mut self) -> Vec<String> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + SOON;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "a clean stop exits 0: {status:?}");
                break;
            }
            assert!(Instant::now() < deadline, "the server did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.lines.lock().unwrap().clone()
    }

    /// The printed JSON lines whose message starts with `prefix`.
    fn logged(&self, prefix: &str) -> Vec<Value> {
        logged(&self.lines.lock().unwrap(), prefix)
    }
}

fn logged(lines: &[String], prefix: &str) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(prefix))
        })
        .collect()
}

/// A raw protocol client that tracks the sequence numbers it saw.
struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Every event received, in order: (seq, the whole message).
    events: Vec<(u64, Value)>,
    /// Every other message received.
    others: Vec<Value>,
}

impl Client {
    /// Connects as `user` on `device`, resuming after `last_seq`; returns
    /// the client and its `welcome`.
    async fn hello(
        addr: SocketAddr,
        user: &str,
        device: &str,
        last_seq: Option<u64>,
    ) -> (Self, Value) {
        let (ws, _) = tokio::time::timeout(
            SOON,
            tokio_tungstenite::connect_async(format!("ws://{addr}/")),
        )
        .await
        .expect("connects in time")
        .expect("connects");
        let token = Authority::new(SECRET.as_bytes(), "invitation", None).mint(
            &UserId::new(user).unwrap(),
            user,
            Duration::from_secs(3600),
        );
        let mut c = Client {
            ws,
            events: Vec::new(),
            others: Vec::new(),
        };
        let mut hello =
            json!({"v": 1, "id": "hello", "type": "hello", "device": device, "token": token});
        if let Some(s) = last_seq {
            hello["last_seq"] = s.into();
        }
        c.send(hello).await;
        let welcome = c.next().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (c, welcome)
    }

    async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// The next message (pings skipped), within the deadline.
    async fn next(&mut self) -> Value {
        tokio::time::timeout(SOON, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        return serde_json::from_str::<Value>(&t).unwrap();
                    }
                    Some(Ok(Message::Close(f))) => panic!("closed: {f:?}"),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => panic!("connection failed: {e}"),
                    None => panic!("connection ended"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("nothing arrived in time; events so far {:#?}", self.events))
    }

    /// Records one message; returns it.
    fn note(&mut self, m: Value) -> Value {
        if m["type"] == "event" {
            self.events.push((m["seq"].as_u64().unwrap(), m.clone()));
        } else {
            self.others.push(m.clone());
        }
        m
    }

    /// Everything that arrives before the answer to a ping.
    async fn settle(&mut self) {
        self.send(json!({"v": 1, "id": "settle", "type": "ping"}))
            .await;
        loop {
            let m = self.next().await;
            if m["type"] == "pong" {
                return;
            }
            self.note(m);
        }
    }

    /// Reads until an event of this type arrives; returns it.
    async fn until_event(&mut self, ty: &str) -> Value {
        loop {
            let m = self.next().await;
            let m = self.note(m);
            if m["type"] == "event" && m["event"]["type"] == ty {
                return m;
            }
        }
    }

    /// The newest sequence number seen.
    fn last_seq(&self) -> u64 {
        self.events.last().map_or(0, |(s, _)| *s)
    }

    /// Event types received, in order.
    fn types(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|(_, m)| m["event"]["type"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// Every event of every connection a user had, in order: sequence numbers
/// must run 1, 2, 3 ... without a gap or a repeat.
fn assert_contiguous(who: &str, runs: &[&Client]) {
    let seqs: Vec<u64> = runs
        .iter()
        .flat_map(|c| c.events.iter().map(|(s, _)| *s))
        .collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "{who}: every event once, in order");
}

async fn invite(alice: &mut Client, callee: &str) -> String {
    alice
        .send(json!({"v": 1, "id": "inv-1", "type": "invite", "callees": [callee], "call_type": "voice"}))
        .await;
    let answer = loop {
        let m = alice.next().await;
        let m = alice.note(m);
        if m["re"] == "inv-1" {
            break m;
        }
    };
    assert_eq!(answer["result"]["type"], "invited", "{answer}");
    answer["result"]["call_id"].as_str().unwrap().to_owned()
}

/// Alice's phone calls bob's, which rings: both clients and the call id.
async fn ringing(addr: SocketAddr) -> (Client, Client, String) {
    let (mut alice, _) = Client::hello(addr, "alice", "phone", None).await;
    let (mut bob, _) = Client::hello(addr, "bob", "phone", None).await;
    let call_id = invite(&mut alice, "bob").await;
    bob.until_event("incoming_call").await;
    // The caller's `callee_ringing` comes from the hub while a ping's pong
    // comes from alice's own connection, so `settle` can return before it.
    // Wait for it, or a test that kills the server next resumes alice from
    // before it (it then comes again, correctly, after the restart, and the
    // test sees one event more than it expects: a flake seen once in CI).
    alice.until_event("callee_ringing").await;
    (alice, bob, call_id)
}

/// SIGKILL while bob's phone rings; restart on the same directory and
/// port. The call still rings (a new device of bob's is told so), bob's
/// accept reaches alice, and neither side gets an event twice or misses
/// one.
#[tokio::test]
async fn kill_9_mid_ring_then_the_accept_reaches_the_caller() {
    let tmp = TempDir::new("ring");
    let first = start(&tmp.0, 0, &[]);
    let (mut alice, mut bob, call_id) = ringing(first.addr).await;
    alice.settle().await;
    bob.settle().await;
    assert_eq!(alice.types(), ["outgoing_call", "callee_ringing"]);
    assert_eq!(bob.types(), ["incoming_call"]);
    let port = first.addr.port();
    first.kill9();

    let second = start(&tmp.0, port, &[]);
    let recovered = second.logged("state recovered");
    assert_eq!(recovered.len(), 1, "{:#?}", second.lines.lock().unwrap());
    assert!(recovered[0]["fields"]["replayed"].as_u64().unwrap() > 0);

    // A new device of bob's learns that the call rings.
    let (mut tablet, welcome) = Client::hello(second.addr, "bob", "tablet", None).await;
    assert_eq!(welcome["resumed"], false);
    let sync = tablet.next().await;
    assert_eq!(sync["type"], "sync", "{sync}");
    let calls = sync["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{sync}");
    assert_eq!(calls[0]["call_id"], call_id.as_str(), "{sync}");

    // Both resume where they were: nothing missed, nothing repeated.
    let (mut alice2, welcome) =
        Client::hello(second.addr, "alice", "phone", Some(alice.last_seq())).await;
    assert_eq!(welcome["resumed"], true, "{welcome}");
    assert_eq!(welcome["seq"], alice.last_seq(), "{welcome}");
    let (mut bob2, welcome) =
        Client::hello(second.addr, "bob", "phone", Some(bob.last_seq())).await;
    assert_eq!(welcome["resumed"], true, "{welcome}");
    alice2.settle().await;
    bob2.settle().await;
    assert!(alice2.events.is_empty(), "{:#?}", alice2.events);
    assert!(bob2.events.is_empty(), "{:#?}", bob2.events);

    bob2.send(json!({"v": 1, "id": "acc-1", "type": "accept", "call_id": call_id}))
        .await;
    let ended = bob2.until_event("incoming_ended").await;
    assert_eq!(ended["re"], "acc-1", "{ended}");
    assert_eq!(ended["event"]["reason"], "accepted");
    let outcome = alice2.until_event("callee_outcome").await;
    assert_eq!(outcome["event"]["callee"], "bob");
    assert_eq!(outcome["event"]["reason"], "accepted");
    alice2.settle().await;
    bob2.settle().await;
    assert_contiguous("alice", &[&alice, &alice2]);
    assert_contiguous("bob", &[&bob, &bob2]);
    assert_eq!(alice2.types(), ["callee_outcome"]);
    assert_eq!(bob2.types(), ["incoming_ended"]);
    second.kill9();
}

/// A retried command after a crash is answered as before and not done
/// twice: bob's accept went through, the server died, bob (who never saw
/// the answer, say) sends the same request again.
#[tokio::test]
async fn a_retried_command_after_a_crash_is_answered_once() {
    let tmp = TempDir::new("retry");
    let first = start(&tmp.0, 0, &[]);
    let (mut alice, mut bob, call_id) = ringing(first.addr).await;
    let accept = json!({"v": 1, "id": "acc-1", "type": "accept", "call_id": call_id});
    bob.send(accept.clone()).await;
    bob.until_event("incoming_ended").await;
    alice.until_event("callee_outcome").await;
    let port = first.addr.port();
    first.kill9();

    let second = start(&tmp.0, port, &[]);
    let (mut bob2, _) = Client::hello(second.addr, "bob", "phone", Some(bob.last_seq())).await;
    bob2.send(accept).await;
    let answer = loop {
        let m = bob2.next().await;
        if m["re"] == "acc-1" {
            break m;
        }
        bob2.note(m);
    };
    assert_eq!(
        answer["type"], "reply",
        "a plain reply the second time: {answer}"
    );
    let (mut alice2, _) =
        Client::hello(second.addr, "alice", "phone", Some(alice.last_seq())).await;
    alice2.settle().await;
    bob2.settle().await;
    assert!(
        alice2.events.is_empty(),
        "no second outcome: {:#?}",
        alice2.events
    );
    assert!(bob2.events.is_empty(), "{:#?}", bob2.events);
    second.kill9();
}

/// The ring deadline is kept in wall-clock time: a restart one second into
/// a four-second ring times the call out at the original deadline, not four
/// seconds after the restart.
#[tokio::test]
async fn the_timeout_fires_at_the_original_deadline() {
    let tmp = TempDir::new("deadline");
    let env = [("INVITATION_RING_TIMEOUT_S", "4")];
    let first = start(&tmp.0, 0, &env);
    let (mut alice, _) = Client::hello(first.addr, "alice", "phone", None).await;
    let sent = Instant::now();
    let _call_id = invite(&mut alice, "bob").await;
    alice.settle().await;
    let port = first.addr.port();
    first.kill9();
    // Down for a second.
    std::thread::sleep(Duration::from_secs(1));
    let second = start(&tmp.0, port, &env);
    let (mut alice2, _) =
        Client::hello(second.addr, "alice", "phone", Some(alice.last_seq())).await;
    let outcome = alice2.until_event("callee_outcome").await;
    let at = sent.elapsed();
    assert_eq!(outcome["event"]["reason"], "timeout", "{outcome}");
    assert!(
        at >= Duration::from_secs(4),
        "not before the deadline: {at:?}"
    );
    assert!(
        at < Duration::from_millis(5_500),
        "at the original deadline (4 s after the invite), not 4 s after the restart: {at:?}"
    );
    alice2.until_event("call_ended").await;
    alice2.settle().await;
    assert_contiguous("alice", &[&alice, &alice2]);
    second.kill9();
}

/// A deadline that passed while the server was down fires when it starts,
/// once: a second restart does not fire it again.
#[tokio::test]
async fn a_deadline_missed_while_down_fires_once_at_start() {
    let tmp = TempDir::new("missed");
    let env = [("INVITATION_RING_TIMEOUT_S", "1")];
    let first = start(&tmp.0, 0, &env);
    let (mut alice, bob, _) = ringing(first.addr).await;
    alice.settle().await;
    let port = first.addr.port();
    first.kill9();
    // Down past the deadline.
    std::thread::sleep(Duration::from_millis(1500));
    let second = start(&tmp.0, port, &env);
    let (mut alice2, _) =
        Client::hello(second.addr, "alice", "phone", Some(alice.last_seq())).await;
    let (mut bob2, _) = Client::hello(second.addr, "bob", "phone", Some(bob.last_seq())).await;
    alice2.settle().await;
    bob2.settle().await;
    assert_eq!(
        alice2.types(),
        ["callee_outcome", "call_ended"],
        "{:#?}",
        alice2.events
    );
    assert_eq!(alice2.events[0].1["event"]["reason"], "timeout");
    assert_eq!(bob2.types(), ["incoming_ended"], "{:#?}", bob2.events);
    assert_eq!(bob2.events[0].1["event"]["reason"], "timeout");
    second.kill9();

    let third = start(&tmp.0, port, &env);
    let (mut alice3, welcome) =
        Client::hello(third.addr, "alice", "phone", Some(alice2.last_seq())).await;
    assert_eq!(welcome["resumed"], true);
    alice3.settle().await;
    assert!(alice3.events.is_empty(), "fired once: {:#?}", alice3.events);
    assert_contiguous("alice", &[&alice, &alice2, &alice3]);
    assert_contiguous("bob", &[&bob, &bob2]);
    third.kill9();
}

/// A clean stop (SIGTERM) ends no call: after the restart the call still
/// rings and the accept goes through.
#[tokio::test]
async fn a_clean_stop_keeps_ringing_calls() {
    let tmp = TempDir::new("clean");
    let first = start(&tmp.0, 0, &[]);
    let (mut alice, bob, call_id) = ringing(first.addr).await;
    alice.settle().await;
    let port = first.addr.port();
    let lines = first.terminate();
    assert_eq!(logged(&lines, "state saved").len(), 1, "{lines:#?}");
    // The clients saw `closing`, and no call ended.
    drop((alice.ws, bob.ws));

    let second = start(&tmp.0, port, &[]);
    let (mut bob2, _) = Client::hello(
        second.addr,
        "bob",
        "phone",
        Some(bob.events.last().unwrap().0),
    )
    .await;
    bob2.send(json!({"v": 1, "id": "acc-1", "type": "accept", "call_id": call_id}))
        .await;
    let ended = bob2.until_event("incoming_ended").await;
    assert_eq!(ended["event"]["reason"], "accepted", "{ended}");
    let alice_last = alice.events.last().unwrap().0;
    let (mut alice2, _) = Client::hello(second.addr, "alice", "phone", Some(alice_last)).await;
    let outcome = alice2.until_event("callee_outcome").await;
    assert_eq!(outcome["event"]["reason"], "accepted");
    second.kill9();
}

/// The newest journal file, and its length.
fn newest_journal(dir: &Path) -> PathBuf {
    let mut journals: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("journal-"))
        })
        .collect();
    journals.sort();
    journals.pop().expect("a journal")
}

/// A crash in the middle of a write leaves a torn last entry: the start
/// warns, naming the file, keeps every whole entry, and serves.
#[tokio::test]
async fn a_torn_tail_is_dropped_with_a_warning() {
    let tmp = TempDir::new("torn");
    let first = start(&tmp.0, 0, &[]);
    let (mut alice, _) = Client::hello(first.addr, "alice", "phone", None).await;
    let call_id = invite(&mut alice, "bob").await;
    // A last entry whose loss changes nothing anyone was told.
    alice
        .send(json!({"v": 1, "id": "s-1", "type": "sync"}))
        .await;
    alice.settle().await;
    let port = first.addr.port();
    first.kill9();
    let journal = newest_journal(&tmp.0);
    let len = std::fs::metadata(&journal).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap();
    file.set_len(len - 5).unwrap();
    drop(file);

    let second = start(&tmp.0, port, &[]);
    let warned = second.logged("the journal ended in a torn write");
    assert_eq!(warned.len(), 1, "{:#?}", second.lines.lock().unwrap());
    assert_eq!(warned[0]["level"], "WARN");
    assert_eq!(warned[0]["fields"]["file"], journal.display().to_string());
    // The call from the whole entries is there.
    let (mut bob, _) = Client::hello(second.addr, "bob", "phone", None).await;
    let sync = bob.next().await;
    assert_eq!(sync["calls"][0]["call_id"], call_id.as_str(), "{sync}");
    second.kill9();
}

/// Damage a crash cannot cause (a flipped byte with whole entries after
/// it; a file that is not ours) stops the start with an error naming the
/// file, and the file is left as it was.
#[tokio::test]
async fn a_damaged_or_foreign_file_stops_the_start_naming_it() {
    let tmp = TempDir::new("damaged");
    let first = start(&tmp.0, 0, &[]);
    let (mut alice, _) = Client::hello(first.addr, "alice", "phone", None).await;
    invite(&mut alice, "bob").await;
    alice.settle().await;
    first.kill9();
    let journal = newest_journal(&tmp.0);
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes[16 + 8 + 3] ^= 0x01; // inside the first entry
    std::fs::write(&journal, &bytes).unwrap();
    let (status, text) = start_refused(&tmp.0, &[]);
    assert!(!status.success(), "{text}");
    assert!(text.contains(&journal.display().to_string()), "{text}");
    assert!(text.contains("damaged frame at byte 16"), "{text}");
    assert_eq!(std::fs::read(&journal).unwrap(), bytes, "left as it was");

    std::fs::write(&journal, b"PK\x03\x04 a zip file, not a journal").unwrap();
    let (status, text) = start_refused(&tmp.0, &[]);
    assert!(!status.success(), "{text}");
    assert!(text.contains(&journal.display().to_string()), "{text}");
    assert!(text.contains("wrong header"), "{text}");
}

/// Two servers cannot share a data directory.
#[tokio::test]
async fn a_second_server_on_the_same_directory_is_refused() {
    let tmp = TempDir::new("lock");
    let first = start(&tmp.0, 0, &[]);
    let (status, text) = start_refused(&tmp.0, &[]);
    assert!(!status.success(), "{text}");
    assert!(text.contains("in use by another server"), "{text}");
    // The first one is untouched.
    let (mut alice, _) = Client::hello(first.addr, "alice", "phone", None).await;
    invite(&mut alice, "bob").await;
    first.kill9();
}

/// Ended calls are kept as records, readable through the server's API
/// (`RunningServer::call_records`), and still there after a restart on
/// the same directory (here in-process: the library's `Config::data_dir`).
#[tokio::test]
async fn ended_calls_are_kept_as_records_across_a_restart() {
    use invitation_server::{Config, RecordQuery, Server};
    let tmp = TempDir::new("records");
    let config = || Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        secret: Some(SECRET.to_owned()),
        data_dir: Some(tmp.0.clone()),
        shed_invites_after_ms: 0,
        ..Config::default()
    };
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64
    };
    let before = unix_now();
    let server = Server::bind(config()).await.unwrap().spawn();
    let (mut alice, _) = Client::hello(server.addr, "alice", "phone", None).await;
    let (mut bob, _) = Client::hello(server.addr, "bob", "tablet", None).await;
    alice
        .send(
            json!({"v": 1, "id": "inv-1", "type": "invite", "callees": ["bob", "carol"],
                     "call_type": "video", "custom_data": "room-7"}),
        )
        .await;
    bob.until_event("incoming_call").await;
    let call_id = alice.until_event("outgoing_call").await["event"]["call_id"]
        .as_str()
        .unwrap()
        .to_owned();
    bob.send(json!({"v": 1, "id": "a", "type": "accept", "call_id": call_id}))
        .await;
    alice.until_event("callee_outcome").await;
    bob.send(json!({"v": 1, "id": "h", "type": "hang_up", "call_id": call_id}))
        .await;
    alice.until_event("call_ended").await;
    let query = |user: &str| RecordQuery {
        user: UserId::new(user).unwrap(),
        from: before,
        to: unix_now() + 1_000_000_000,
        cursor: None,
        limit: 10,
    };
    let check = |page: invitation_server::Page| {
        assert_eq!(page.records.len(), 1, "{page:?}");
        assert!(page.next_cursor.is_none());
        let r = &page.records[0];
        assert_eq!(r.call_id.as_str(), call_id);
        assert_eq!(r.caller.as_str(), "alice");
        assert_eq!(r.caller_device.as_str(), "phone");
        assert_eq!(r.custom_data.as_ref().map(|d| d.as_str()), Some("room-7"));
        let v = serde_json::to_value(r).unwrap();
        assert_eq!(v["call_type"], "video");
        assert_eq!(v["reason"], "hung_up");
        let callees = v["callees"].as_array().unwrap();
        assert_eq!(callees.len(), 2);
        assert_eq!(callees[0]["user"], "bob");
        assert_eq!(callees[0]["outcome"], "accepted", "{v}");
        assert_eq!(callees[0]["device"], "tablet", "{v}");
        assert_eq!(callees[1]["user"], "carol");
        assert_eq!(callees[1]["outcome"], "canceled", "{v}");
        assert!(r.invited_at >= before);
        let answered = r.answered_at.expect("answered");
        assert!(r.invited_at <= answered && answered <= r.ended_at);
        assert_eq!(r.duration.as_nanos() as i64, r.ended_at - answered);
    };
    // Caller and callee both find it; someone else does not.
    check(server.call_records(query("alice")).await.unwrap());
    check(server.call_records(query("bob")).await.unwrap());
    assert!(
        server
            .call_records(query("erin"))
            .await
            .unwrap()
            .records
            .is_empty()
    );
    server.stop().await;

    let again = Server::bind(config()).await.unwrap().spawn();
    check(again.call_records(query("alice")).await.unwrap());
    again.stop().await;
}

/// A call the app's backend starts for alice (through the server's API)
/// rings bob, reaches alice's phone as an outgoing call, survives a restart
/// of a durable server, and the backend cancels it afterwards.
#[tokio::test]
async fn a_backend_call_survives_a_restart_and_is_canceled_by_the_backend() {
    use invitation_core::protocol::{Command, InviteRequest, ReplyResult};
    use invitation_core::{CallId, CallType, RequestId, User};
    use invitation_server::{Config, Server};
    let tmp = TempDir::new("backend");
    let config = || Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        secret: Some(SECRET.to_owned()),
        data_dir: Some(tmp.0.clone()),
        shed_invites_after_ms: 0,
        ..Config::default()
    };
    let server = Server::bind(config()).await.unwrap().spawn();
    let (mut alice, _) = Client::hello(server.addr, "alice", "phone", None).await;
    let (mut bob, _) = Client::hello(server.addr, "bob", "phone", None).await;
    let invite = Command::Invite(InviteRequest::new(
        vec![UserId::new("bob").unwrap()],
        CallType::Voice,
    ));
    let answer = server
        .backend_command(
            User::named("alice", "Alice"),
            RequestId::new("api-1").unwrap(),
            invite,
        )
        .await
        .expect("invited");
    let ReplyResult::Invited { call_id, .. } = answer else {
        panic!("{answer:?}")
    };
    let ring = bob.until_event("incoming_call").await;
    assert_eq!(ring["event"]["call_id"], call_id.as_str());
    let outgoing = alice.until_event("outgoing_call").await;
    assert_eq!(outgoing["event"]["device"], "backend");
    assert!(
        outgoing["re"].is_null(),
        "alice's phone did not ask: {outgoing}"
    );
    server.stop().await;

    let again = Server::bind(config()).await.unwrap().spawn();
    let canceled = again
        .backend_command(
            User::named("alice", "Alice"),
            RequestId::new("api-2").unwrap(),
            Command::cancel(CallId::new(call_id.as_str()).unwrap()),
        )
        .await;
    assert_eq!(canceled, Ok(ReplyResult::Done));
    let (mut bob2, _) = Client::hello(again.addr, "bob", "phone", Some(bob.last_seq())).await;
    let ended = bob2.until_event("incoming_ended").await;
    assert_eq!(ended["event"]["reason"], "canceled");
    again.stop().await;
}

/// The events of a turn are appended to the webhook outbox after the
/// turn's journal write: a crash between the two would lose them. The
/// next run replays the journal and appends what the outbox lacks, with
/// the ids the first run gave them. Here the first run's endpoint is
/// down (events wait in the outbox), the server is killed, and the
/// outbox loses its last event (as if the crash came before it was
/// written); the second run delivers all three, in order, once.
#[tokio::test]
async fn webhook_events_a_crash_kept_from_the_outbox_are_sent_after_it() {
    const HOOK_SECRET: &str = "whsec-durable-0123456789abcdef0123456";
    let tmp = TempDir::new("hooks-crash");
    // A port nobody listens on during the first run; the receiver takes it
    // for the second.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let env = [
        ("INVITATION_WEBHOOK_URLS", url.as_str()),
        ("INVITATION_WEBHOOK_SECRETS", HOOK_SECRET),
    ];
    let first = start(&tmp.0, 0, &env);
    let (mut alice, mut bob, call_id) = ringing(first.addr).await;
    bob.send(json!({"v": 1, "id": "acc-1", "type": "accept", "call_id": call_id}))
        .await;
    alice.until_event("callee_outcome").await;
    // The three events reach the outbox (after the journal: wait for it).
    let outbox = tmp.0.join("webhooks/outbox-000000000001.jsonl");
    let deadline = Instant::now() + SOON;
    let lines = loop {
        let text = std::fs::read_to_string(&outbox).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 3 {
            break lines;
        }
        assert!(Instant::now() < deadline, "the outbox has {lines:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let types: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["call.invited", "call.ringing", "call.accepted"]);
    first.kill9();
    // The crash "came before" the last turn's events were written.
    let kept: String = std::fs::read_to_string(&outbox)
        .unwrap()
        .lines()
        .take(2)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&outbox, kept).unwrap();

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let (_, mut rx) = common::receiver_on(listener);
    let second = start(&tmp.0, 0, &env);
    let mut got = Vec::new();
    for _ in 0..3 {
        let event = common::next_signed(&mut rx, HOOK_SECRET).await;
        got.push((event["type"].clone(), event["id"].clone()));
    }
    let want: Vec<(Value, Value)> = lines
        .iter()
        .map(|l| (l["type"].clone(), l["id"].clone()))
        .collect();
    assert_eq!(got, want, "the same events, the same ids, in order");
    let resent = second.logged("webhook events of the last turn");
    assert_eq!(resent.len(), 1, "{:#?}", second.lines.lock().unwrap());
    assert_eq!(resent[0]["fields"]["events"], 1);
    second.kill9();
}
