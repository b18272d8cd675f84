//! The conformance vector player: reads a vector file (docs/protocol.md,
//! "Conformance vectors"), starts a server with the vector's settings on
//! 127.0.0.1:0, and plays the steps over real WebSockets. Every failure
//! names the vector, the step and what arrived.

#![allow(unreachable_pub)]

pub mod client;
pub mod pattern;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use invitation_core::DecodeLimits;
use invitation_core::protocol::{ServerBody, ServerMessage};
use invitation_server::{Authority, Config, RunningServer, Server};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use pattern::{Bindings, check, fill};

/// The secret of the server a vector runs against (documented: a client
/// in another language mints its tokens with it).
pub const SECRET: &str = "conformance-secret-0123456789";
/// How long an `expect` waits by default.
const DEFAULT_WITHIN_MS: u64 = 5000;
/// The longest a whole vector may take.
const VECTOR_DEADLINE: Duration = Duration::from_secs(120);
/// How many received messages a failure report shows.
const SHOWN: usize = 6;

/// One vector file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vector {
    pub name: String,
    pub description: String,
    #[serde(default)]
    pub server: Map<String, Value>,
    pub clients: BTreeMap<String, ClientSpec>,
    pub steps: Vec<Value>,
}

/// A client of a vector: who it is.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSpec {
    pub user: String,
    pub device: String,
    /// The display name in its token (default: the user id).
    #[serde(default)]
    pub name: Option<String>,
}

/// Every `*.json` under `dir`, recursively, sorted.
pub fn find(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// A vector of either kind.
pub enum AnyVector {
    /// Played against the server (the default kind).
    Server(Vector),
    /// Played against one client (`"kind": "client"`).
    Client(client::ClientVector),
}

impl AnyVector {
    /// Its name.
    pub fn name(&self) -> &str {
        match self {
            AnyVector::Server(v) => &v.name,
            AnyVector::Client(v) => &v.name,
        }
    }

    /// Plays it.
    pub async fn play(self) -> Result<(), String> {
        match self {
            AnyVector::Server(v) => play(v).await,
            AnyVector::Client(v) => client::play(v),
        }
    }
}

/// Reads a vector file.
pub fn load(path: &Path) -> Result<AnyVector, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let value: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
    match value.get("kind").map(|k| k.as_str()) {
        None => serde_json::from_value(value)
            .map(AnyVector::Server)
            .map_err(|e| format!("not a vector: {e}")),
        Some(Some("client")) => serde_json::from_value(value)
            .map(AnyVector::Client)
            .map_err(|e| format!("not a client vector: {e}")),
        Some(other) => Err(format!("unknown vector kind {other:?}")),
    }
}

/// The server settings a vector runs with: the server's defaults, a
/// loopback port, the conformance secret and no load shedding (a busy test
/// machine must not turn invites away), then the vector's `server` object.
pub fn config(overrides: &Map<String, Value>) -> Result<Config, String> {
    let mut base = json!({
        "listen": "127.0.0.1:0",
        "secret": SECRET,
        "shed_invites_after_ms": 0,
    });
    let obj = base.as_object_mut().expect("an object");
    for (k, v) in overrides {
        obj.insert(k.clone(), v.clone());
    }
    serde_json::from_value::<Config>(base).map_err(|e| format!("server settings: {e}"))
}

/// What a client's socket gave.
#[derive(Debug)]
enum Got {
    Text(String),
    /// The server closed (with this close code; 1005 when none).
    Closed(u16),
    /// The stream ended without a close frame.
    Eof,
}

struct Client {
    spec: ClientSpec,
    ws: Option<WebSocketStream<MaybeTlsStream<TcpStream>>>,
    /// The last messages received, for failure reports.
    seen: Vec<String>,
}

impl Client {
    async fn next(&mut self) -> Got {
        let Some(ws) = self.ws.as_mut() else {
            return Got::Eof;
        };
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let t = t.as_str().to_owned();
                    self.seen.push(t.clone());
                    if self.seen.len() > SHOWN {
                        self.seen.remove(0);
                    }
                    return Got::Text(t);
                }
                Some(Ok(Message::Close(f))) => {
                    self.ws = None;
                    return Got::Closed(f.map_or(1005, |f| u16::from(f.code)));
                }
                Some(Ok(Message::Binary(_))) => return Got::Text("<a binary frame>".into()),
                Some(Ok(_)) => continue, // ping / pong
                Some(Err(_)) | None => {
                    self.ws = None;
                    return Got::Eof;
                }
            }
        }
    }

    fn history(&self) -> String {
        if self.seen.is_empty() {
            "nothing received yet".into()
        } else {
            format!("last received: {}", self.seen.join("  |  "))
        }
    }
}

/// One step, as read from the file.
#[derive(Debug)]
enum Step {
    Connect {
        client: String,
        last_seq: Option<Value>,
        welcome: Option<Value>,
        sync: Option<Value>,
    },
    Open(String),
    Send {
        client: String,
        msg: Option<Value>,
        raw: Option<String>,
    },
    Expect {
        client: String,
        msg: Value,
        within: Duration,
        elapsed: Option<(Value, String)>,
    },
    ExpectClosed {
        client: String,
        code: Option<u16>,
        within: Duration,
    },
    Silent {
        client: String,
        ms: u64,
    },
    Wait(u64),
    Close(String),
    Mark(String),
    Shutdown,
    Repeat {
        times: u64,
        steps: Vec<Value>,
    },
}

const KINDS: &[&str] = &[
    "connect",
    "open",
    "send",
    "expect",
    "expect_closed",
    "silent",
    "wait_ms",
    "close",
    "mark",
    "repeat",
    "shutdown",
];

fn parse(step: &Value) -> Result<Step, String> {
    let Value::Object(o) = step else {
        return Err("a step is a JSON object".into());
    };
    let kinds: Vec<&str> = KINDS
        .iter()
        .copied()
        .filter(|k| o.contains_key(*k))
        .collect();
    let [kind] = kinds[..] else {
        return Err(format!(
            "a step has exactly one of {KINDS:?}, this one {kinds:?}"
        ));
    };
    let allowed: &[&str] = match kind {
        "connect" => &["last_seq", "welcome", "sync"],
        "send" => &["msg", "raw"],
        "expect" => &["msg", "within_ms", "elapsed_ms", "since"],
        "expect_closed" => &["code", "within_ms"],
        "silent" => &["ms"],
        "repeat" => &["steps"],
        _ => &[],
    };
    for key in o.keys() {
        if key != kind && key != "comment" && !allowed.contains(&key.as_str()) {
            return Err(format!("unknown key {key:?} in a {kind} step"));
        }
    }
    let str_of = |k: &str| {
        o.get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("{k} must be a string"))
    };
    let u64_of = |k: &str| {
        o.get(k)
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("{k} must be a whole number"))
    };
    let within = || -> Result<Duration, String> {
        Ok(Duration::from_millis(match o.get("within_ms") {
            Some(_) => u64_of("within_ms")?,
            None => DEFAULT_WITHIN_MS,
        }))
    };
    Ok(match kind {
        "connect" => Step::Connect {
            client: str_of("connect")?,
            last_seq: o.get("last_seq").cloned(),
            welcome: o.get("welcome").cloned(),
            sync: o.get("sync").cloned(),
        },
        "open" => Step::Open(str_of("open")?),
        "send" => {
            let msg = o.get("msg").cloned();
            let raw = o.get("raw").map(|_| str_of("raw")).transpose()?;
            if msg.is_some() == raw.is_some() {
                return Err("a send step has one of msg, raw".into());
            }
            Step::Send {
                client: str_of("send")?,
                msg,
                raw,
            }
        }
        "expect" => Step::Expect {
            client: str_of("expect")?,
            msg: o.get("msg").cloned().ok_or("an expect step needs msg")?,
            within: within()?,
            elapsed: match o.get("elapsed_ms") {
                Some(p) => Some((p.clone(), str_of("since")?)),
                None => None,
            },
        },
        "expect_closed" => Step::ExpectClosed {
            client: str_of("expect_closed")?,
            code: match o.get("code") {
                Some(_) => Some(u16::try_from(u64_of("code")?).map_err(|e| e.to_string())?),
                None => None,
            },
            within: within()?,
        },
        "silent" => Step::Silent {
            client: str_of("silent")?,
            ms: u64_of("ms")?,
        },
        "wait_ms" => Step::Wait(u64_of("wait_ms")?),
        "close" => Step::Close(str_of("close")?),
        "mark" => Step::Mark(str_of("mark")?),
        "shutdown" => Step::Shutdown,
        "repeat" => Step::Repeat {
            times: u64_of("repeat")?,
            steps: o
                .get("steps")
                .and_then(Value::as_array)
                .cloned()
                .ok_or("a repeat step needs steps")?,
        },
        _ => unreachable!("kinds are listed"),
    })
}

/// A vector being played.
struct Play {
    /// The server, until a `shutdown` step stops it.
    server: Option<RunningServer>,
    url: String,
    authority: Authority,
    audience: String,
    clients: BTreeMap<String, Client>,
    bindings: Bindings,
    marks: BTreeMap<String, Instant>,
}

/// Plays `vector` against a fresh server; `Err` says which step failed and why.
pub async fn play(vector: Vector) -> Result<(), String> {
    if vector.description.trim().is_empty() {
        return Err("the description must say what the vector proves".into());
    }
    let config = config(&vector.server)?;
    let audience = config.audience.clone();
    let server = Server::bind(config)
        .await
        .map_err(|e| format!("server: {e}"))?
        .spawn();
    let clients = vector
        .clients
        .into_iter()
        .map(|(k, spec)| {
            (
                k,
                Client {
                    spec,
                    ws: None,
                    seen: Vec::new(),
                },
            )
        })
        .collect();
    let url = server.url();
    let authority = server.authority.clone();
    let mut p = Play {
        server: Some(server),
        url,
        authority,
        audience,
        clients,
        bindings: Bindings::default(),
        marks: BTreeMap::new(),
    };
    let played = tokio::time::timeout(VECTOR_DEADLINE, p.steps(&vector.steps, "")).await;
    for client in p.clients.values_mut() {
        if let Some(mut ws) = client.ws.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
        }
    }
    if let Some(server) = p.server.take() {
        let _ = tokio::time::timeout(Duration::from_secs(10), server.stop()).await;
    }
    match played {
        Ok(r) => r,
        Err(_) => Err(format!("the vector took longer than {VECTOR_DEADLINE:?}")),
    }
}

impl Play {
    async fn steps(&mut self, steps: &[Value], prefix: &str) -> Result<(), String> {
        for (i, raw) in steps.iter().enumerate() {
            let at = format!("{prefix}{i}");
            let step = parse(raw).map_err(|e| format!("step {at} {raw}: {e}"))?;
            Box::pin(self.step(step, &at))
                .await
                .map_err(|e| format!("step {at} {raw}:\n    {e}"))?;
        }
        Ok(())
    }

    fn client(&mut self, name: &str) -> Result<&mut Client, String> {
        self.clients
            .get_mut(name)
            .ok_or_else(|| format!("no client {name:?} in clients"))
    }

    /// A token for client `name`, valid for `ttl` seconds (an hour by
    /// default), signed with the server's secret or another `secret`.
    fn token(&self, name: &str, secret: Option<&str>, ttl: Option<u64>) -> Result<String, String> {
        let spec = &self
            .clients
            .get(name)
            .ok_or_else(|| format!("no client {name:?} for $token"))?
            .spec;
        let display = spec.name.as_deref().unwrap_or(&spec.user);
        let authority = match secret {
            None => self.authority.clone(),
            Some(s) => Authority::new(s.as_bytes(), &self.audience, None),
        };
        Ok(authority.mint(
            &invitation_core::UserId::new(&spec.user).map_err(|e| e.to_string())?,
            display,
            Duration::from_secs(ttl.unwrap_or(3600)),
        ))
    }

    fn fill(&self, template: &Value) -> Result<Value, String> {
        let extra = |o: &Map<String, Value>| {
            let name = o.get("$token")?;
            Some((|| {
                let name = name.as_str().ok_or("$token names a client")?;
                for key in o.keys() {
                    if !["$token", "secret", "ttl_s"].contains(&key.as_str()) {
                        return Err(format!("unknown key {key:?} in $token"));
                    }
                }
                let secret = o
                    .get("secret")
                    .map(|s| s.as_str().ok_or("secret is a string"));
                let ttl = o
                    .get("ttl_s")
                    .map(|t| t.as_u64().ok_or("ttl_s is a whole number"));
                self.token(name, secret.transpose()?, ttl.transpose()?)
                    .map(Value::String)
            })())
        };
        fill(template, &self.bindings, &extra)
    }

    async fn open(&mut self, name: &str) -> Result<(), String> {
        let url = self.url.clone();
        let (ws, _) = tokio::time::timeout(
            Duration::from_millis(DEFAULT_WITHIN_MS),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .map_err(|_| "the WebSocket upgrade took too long".to_owned())?
        .map_err(|e| format!("WebSocket upgrade: {e}"))?;
        self.client(name)?.ws = Some(ws);
        Ok(())
    }

    async fn send_text(&mut self, name: &str, text: String) -> Result<(), String> {
        let client = self.client(name)?;
        let ws = client
            .ws
            .as_mut()
            .ok_or_else(|| format!("{name} is not connected"))?;
        ws.send(Message::text(text))
            .await
            .map_err(|e| format!("send: {e}"))
    }

    /// The next message to `name`, matched against `pattern`.
    async fn expect(
        &mut self,
        name: &str,
        pattern: &Value,
        within: Duration,
    ) -> Result<(), String> {
        let client = self.client(name)?;
        let got = tokio::time::timeout(within, client.next()).await;
        let text = match got {
            Err(_) => {
                return Err(format!(
                    "{name}: nothing arrived within {} ms; expected {pattern}; {}",
                    within.as_millis(),
                    client.history()
                ));
            }
            Ok(Got::Text(t)) => t,
            Ok(other) => {
                return Err(format!(
                    "{name}: the connection ended ({other:?}); expected {pattern}; {}",
                    client.history()
                ));
            }
        };
        // Whatever a vector says, the server speaks valid v1.
        match ServerMessage::decode(&text, &DecodeLimits::default()) {
            Ok(m)
                if !matches!(
                    m.body,
                    ServerBody::Unknown { .. } | ServerBody::UnknownEvent { .. }
                ) => {}
            other => {
                return Err(format!(
                    "{name}: not a v1 server message ({other:?}): {text}"
                ));
            }
        }
        let actual: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        check(pattern, &actual, &mut self.bindings)
            .map_err(|m| format!("{name}: expected {pattern}\n    got      {text}\n    {m}"))
    }

    async fn step(&mut self, step: Step, at: &str) -> Result<(), String> {
        match step {
            Step::Connect {
                client,
                last_seq,
                welcome,
                sync,
            } => {
                self.open(&client).await?;
                let device = self.client(&client)?.spec.device.clone();
                let mut hello = json!({
                    "v": 1, "id": "hello", "type": "hello", "device": device,
                    "token": {"$token": client},
                });
                if let Some(l) = &last_seq {
                    hello["last_seq"] = l.clone();
                }
                let hello = self.fill(&hello)?;
                self.send_text(&client, hello.to_string()).await?;
                let mut pattern = json!({"type": "welcome", "re": "hello"});
                if let Some(Value::Object(extra)) = welcome {
                    pattern.as_object_mut().expect("object").extend(extra);
                }
                let within = Duration::from_millis(DEFAULT_WITHIN_MS);
                self.expect(&client, &pattern, within).await?;
                if last_seq.is_none() {
                    let mut pattern = json!({"type": "sync", "re": "$absent"});
                    if let Some(Value::Object(extra)) = sync {
                        pattern.as_object_mut().expect("object").extend(extra);
                    }
                    self.expect(&client, &pattern, within).await?;
                }
            }
            Step::Open(client) => self.open(&client).await?,
            Step::Send { client, msg, raw } => {
                let text = match (msg, raw) {
                    (Some(m), _) => self.fill(&m)?.to_string(),
                    (None, Some(r)) => r,
                    (None, None) => unreachable!("parse checked"),
                };
                self.send_text(&client, text).await?;
            }
            Step::Expect {
                client,
                msg,
                within,
                elapsed,
            } => {
                self.expect(&client, &msg, within).await?;
                if let Some((pattern, since)) = elapsed {
                    let from = self
                        .marks
                        .get(&since)
                        .ok_or_else(|| format!("no mark {since:?}"))?;
                    let ms = from.elapsed().as_millis() as u64;
                    check(&pattern, &json!(ms), &mut self.bindings).map_err(|m| {
                        format!("{client}: arrived {ms} ms after mark {since:?}, expected {pattern}: {m}")
                    })?;
                }
            }
            Step::ExpectClosed {
                client,
                code,
                within,
            } => {
                let c = self.client(&client)?;
                match tokio::time::timeout(within, c.next()).await {
                    Err(_) => {
                        return Err(format!(
                            "{client}: still open after {} ms; {}",
                            within.as_millis(),
                            c.history()
                        ));
                    }
                    Ok(Got::Closed(got)) => {
                        if let Some(want) = code {
                            if got != want {
                                return Err(format!(
                                    "{client}: closed with {got}, expected {want}"
                                ));
                            }
                        }
                    }
                    Ok(Got::Eof) => {
                        if let Some(want) = code {
                            return Err(format!(
                                "{client}: the stream ended without a close frame, expected code {want}"
                            ));
                        }
                    }
                    Ok(Got::Text(t)) => {
                        return Err(format!(
                            "{client}: expected the connection to close, got {t}"
                        ));
                    }
                }
            }
            Step::Silent { client, ms } => {
                let c = self.client(&client)?;
                if let Ok(got) = tokio::time::timeout(Duration::from_millis(ms), c.next()).await {
                    return Err(format!(
                        "{client}: expected silence for {ms} ms, got {got:?}"
                    ));
                }
            }
            Step::Wait(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Step::Close(client) => {
                let c = self.client(&client)?;
                if let Some(mut ws) = c.ws.take() {
                    let _ = ws.close(None).await;
                    // Read until the server's close answer, so the server
                    // has seen the close before the next step.
                    let _ = tokio::time::timeout(Duration::from_millis(DEFAULT_WITHIN_MS), async {
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
                }
            }
            Step::Shutdown => {
                // A graceful stop runs while the clients read what it
                // sends them.
                let server = self.server.take().ok_or("the server is already stopped")?;
                tokio::spawn(server.stop());
            }
            Step::Mark(name) => {
                self.marks.insert(name, Instant::now());
            }
            Step::Repeat { times, steps } => {
                for n in 0..times {
                    // Bindings made inside one round are forgotten after it.
                    let outer = self.bindings.clone();
                    self.bindings.set("round", json!(n));
                    self.steps(&steps, &format!("{at}.{n}.")).await?;
                    self.bindings = outer;
                }
            }
        }
        Ok(())
    }
}
