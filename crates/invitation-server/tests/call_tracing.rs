//! Per-call tracing: one call (invite, ring, accept, hang-up) through the
//! real server over WebSocket, with its log captured as JSON lines (the
//! format `--log-format json` writes). Every line about the call carries
//! its call id and the users involved, the milestones come in order, and
//! filtering by the call id gives the call's whole path.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::Raw;
use invitation_core::protocol::{Event, ReplyResult, ServerBody};
use serde_json::Value;

/// A log sink shared with the test.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn lines(&self) -> Vec<Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

/// A log line's level, message and some of its fields.
type Expected = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

fn field<'a>(line: &'a Value, name: &str) -> Option<&'a str> {
    line["fields"][name].as_str()
}

// The server's tasks run on this test's thread (a current-thread runtime),
// so the thread's default subscriber sees every line they log.
#[tokio::test]
async fn one_call_can_be_followed_through_the_log_by_its_id() {
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let srv = common::server(|_| {}).await;
    let (mut alice, _) = Raw::hello(&srv, "alice", "phone", None).await;
    let (mut bob, _) = Raw::hello(&srv, "bob", "laptop", None).await;
    alice
        .text(r#"{"v":1,"id":"r1","type":"invite","callees":["bob"],"call_type":"voice"}"#)
        .await;
    let answer = alice.until(|b| b.success().is_some()).await;
    let call = match answer.body.success() {
        Some((_, ReplyResult::Invited { call_id, .. })) => call_id,
        _ => panic!("{answer:?}"),
    };
    bob.until(|b| {
        matches!(
            b,
            ServerBody::Event {
                event: Event::IncomingCall { .. },
                ..
            }
        )
    })
    .await;
    bob.text(&format!(
        r#"{{"v":1,"id":"b1","type":"accept","call_id":"{call}"}}"#
    ))
    .await;
    bob.until(|b| b.success().is_some()).await;
    bob.text(&format!(
        r#"{{"v":1,"id":"b2","type":"hang_up","call_id":"{call}"}}"#
    ))
    .await;
    alice
        .until(|b| {
            matches!(
                b,
                ServerBody::Event {
                    event: Event::CallEnded { .. },
                    ..
                }
            )
        })
        .await;

    let lines = sink.lines();
    let id = call.as_str();
    // Every line that mentions the call carries it as its call_id field.
    for line in &lines {
        if line.to_string().contains(id) {
            assert_eq!(field(line, "call_id"), Some(id), "{line}");
        }
    }
    let path: Vec<&Value> = lines
        .iter()
        .filter(|l| field(l, "call_id") == Some(id))
        .collect();
    let shown = |l: &Value| l["fields"].to_string();
    let want: [Expected; 8] = [
        (
            "DEBUG",
            "command",
            &[
                ("command", "invite"),
                ("user", "alice"),
                ("device", "phone"),
                ("request", "r1"),
                ("answer", "ok"),
            ],
        ),
        (
            "INFO",
            "call started",
            &[("caller", "alice"), ("device", "phone"), ("callees", "bob")],
        ),
        (
            "INFO",
            "callee ringing",
            &[("caller", "alice"), ("callee", "bob")],
        ),
        (
            "DEBUG",
            "command",
            &[
                ("command", "accept"),
                ("user", "bob"),
                ("device", "laptop"),
                ("request", "b1"),
                ("answer", "ok"),
            ],
        ),
        (
            "INFO",
            "callee outcome",
            &[
                ("caller", "alice"),
                ("callee", "bob"),
                ("device", "laptop"),
                ("reason", "accepted"),
            ],
        ),
        (
            "DEBUG",
            "command",
            &[
                ("command", "hang_up"),
                ("user", "bob"),
                ("device", "laptop"),
                ("request", "b2"),
                ("answer", "ok"),
            ],
        ),
        (
            "INFO",
            "hung up",
            &[("caller", "alice"), ("user", "bob"), ("device", "laptop")],
        ),
        (
            "INFO",
            "call ended",
            &[
                ("caller", "alice"),
                ("callees", "bob"),
                ("reason", "hung_up"),
            ],
        ),
    ];
    assert_eq!(
        path.len(),
        want.len(),
        "the call's lines: {:#?}",
        path.iter().map(|l| shown(l)).collect::<Vec<_>>()
    );
    for (line, (level, message, fields)) in path.iter().zip(want) {
        assert_eq!(line["level"], level, "{}", shown(line));
        assert_eq!(field(line, "message"), Some(message), "{}", shown(line));
        for (name, value) in fields {
            assert_eq!(field(line, name), Some(*value), "{name} in {}", shown(line));
        }
    }
    // The sessions' own lines name the user and the device too.
    let opened: Vec<(&str, &str)> = lines
        .iter()
        .filter(|l| field(l, "message") == Some("session open"))
        .map(|l| (field(l, "user").unwrap(), field(l, "device").unwrap()))
        .collect();
    assert_eq!(opened, [("alice", "phone"), ("bob", "laptop")]);
    srv.stop().await;
}
