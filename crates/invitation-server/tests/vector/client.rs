//! Client vectors (`"kind": "client"`): server messages fed to one client
//! (filled like a `send`, so `"$hello"` is the id its hello carried),
//! and what the client must make of them — its stream position (the
//! `last_seq` its next `hello` carries) and what it sends. Played here
//! against the Rust client session ([`ClientSession`]), with virtual time.
//! docs/protocol.md, "Conformance vectors", documents the keywords.

use std::time::{Duration, Instant};

use invitation_core::protocol::ServerMessage;
use invitation_core::{ClientSession, DecodeLimits, DeviceId, SessionConfig, UserId};
use serde::Deserialize;
use serde_json::Value;

use super::pattern::{Bindings, check, fill};

/// A client vector file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientVector {
    pub name: String,
    pub description: String,
    /// Always `"client"`.
    pub kind: String,
    pub user: String,
    pub device: String,
    pub steps: Vec<Value>,
}

/// Plays a client vector; `Err` names the step and what differed.
pub fn play(vector: ClientVector) -> Result<(), String> {
    if vector.kind != "client" || vector.description.trim().is_empty() {
        return Err("a client vector has kind \"client\" and a description".into());
    }
    let user = UserId::new(&vector.user).map_err(|e| e.to_string())?;
    let device = DeviceId::new(&vector.device).map_err(|e| e.to_string())?;
    let mut now = Instant::now();
    let mut session = ClientSession::new(user, device, "v", SessionConfig::default());
    session.handle_connected(now, None);
    let mut bindings = Bindings::default();
    for (i, step) in vector.steps.iter().enumerate() {
        let fail = |e: String| format!("step {i} {step}:\n    {e}");
        let Value::Object(o) = step else {
            return Err(fail("a step is a JSON object".into()));
        };
        let keys: Vec<&str> = o
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "comment")
            .collect();
        match keys[..] {
            ["receive"] | ["receive", "refused"] | ["refused", "receive"] => {
                let text = fill(&o["receive"], &bindings, &|_| None)
                    .map_err(fail)?
                    .to_string();
                let refused = o.get("refused").and_then(Value::as_bool).unwrap_or(false);
                match (
                    ServerMessage::decode(&text, &DecodeLimits::default()),
                    refused,
                ) {
                    (Ok(m), false) => session.handle_message(now, m),
                    (Err(_), true) => {}
                    (Ok(m), true) => return Err(fail(format!("the client accepted {m:?}"))),
                    (Err(e), false) => return Err(fail(format!("the client refused it: {e}"))),
                }
            }
            ["position"] => {
                let want = o["position"].as_u64();
                let got = session.last_seq();
                if got != want {
                    return Err(fail(format!("the client is at {got:?}, expected {want:?}")));
                }
            }
            ["sent"] => {
                let Some(patterns) = o["sent"].as_array() else {
                    return Err(fail("sent is a list of patterns".into()));
                };
                let sent: Vec<Value> = std::iter::from_fn(|| session.poll_transmit())
                    .map(|m| serde_json::from_str(&m.encode()).expect("valid JSON"))
                    .collect();
                let shown = || {
                    sent.iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("  |  ")
                };
                if sent.len() != patterns.len() {
                    return Err(fail(format!(
                        "the client sent {} messages, expected {}: {}",
                        sent.len(),
                        patterns.len(),
                        shown()
                    )));
                }
                for (p, m) in patterns.iter().zip(&sent) {
                    check(p, m, &mut bindings).map_err(|e| fail(format!("sent {m}: {e}")))?;
                }
            }
            ["reconnect"] => {
                session.handle_disconnected(now);
                session.handle_connected(now, None);
            }
            ["wait_ms"] => {
                let ms = o["wait_ms"]
                    .as_u64()
                    .ok_or_else(|| fail("wait_ms is a whole number".into()))?;
                now += Duration::from_millis(ms);
                session.handle_timeout(now);
            }
            _ => {
                return Err(fail(
                    "a client step is one of receive (+ refused), position, sent, reconnect, wait_ms"
                        .into(),
                ));
            }
        }
    }
    Ok(())
}
