//! The conformance suite every backend's tests run against a live
//! switchboard behind it: `conformance::run_all(&fixture).await`.
//!
//! Each check panics with a message naming the broken rule.

use std::time::Duration;

use async_trait::async_trait;
use invitation_core::protocol::{
    ClientMessage, CloseReason, Command, Control, Event, InviteRequest, ReplyResult, ServerBody,
    ServerMessage,
};
use invitation_core::{CallType, DeviceId, RequestId, User, UserId};

use crate::{BoxConnection, BoxTransport, TransportErrorKind};

/// How a backend's test hands transports to the suite.
#[async_trait]
pub trait Fixture: Send + Sync {
    /// A transport whose connections act as `user`, on the same switchboard
    /// for every call.
    async fn transport(&self, user: &User) -> BoxTransport;

    /// The token to put in `hello` for `user` (none for the memory hub).
    fn token(&self, user: &User) -> Option<String> {
        let _ = user;
        None
    }
}

/// Runs every check; each uses its own users so they do not interfere.
pub async fn run_all(fixture: &impl Fixture) {
    hello_gets_welcome_then_sync(fixture).await;
    replies_carry_the_request_id(fixture).await;
    events_reach_the_other_connection(fixture).await;
    recv_is_cancel_safe(fixture).await;
    replaced_connection_observes_close(fixture).await;
    send_after_close_fails(fixture).await;
    retry_with_same_request_id_is_idempotent(fixture).await;
}

const WAIT: Duration = Duration::from_secs(5);

fn rid(s: &str) -> RequestId {
    RequestId::new(s).expect("valid request id")
}

async fn open(fixture: &impl Fixture, user: &str, device: &str) -> BoxConnection {
    let user = User::named(user, user);
    let transport = fixture.transport(&user).await;
    let mut conn = transport.connect().await.expect("connect");
    let hello = Control::Hello {
        device: DeviceId::new(device).expect("valid device"),
        token: fixture.token(&user),
        last_seq: None,
    };
    conn.send(ClientMessage::new(rid(&format!("hello-{device}")), hello))
        .await
        .expect("send hello");
    conn
}

async fn next(conn: &mut BoxConnection) -> ServerMessage {
    tokio::time::timeout(WAIT, conn.recv())
        .await
        .expect("a message within 5 s")
        .expect("connection open")
}

/// Reads until a message matches, skipping others.
async fn until(
    conn: &mut BoxConnection,
    what: &str,
    f: impl Fn(&ServerBody) -> bool,
) -> ServerMessage {
    for _ in 0..64 {
        let m = next(conn).await;
        if f(&m.body) {
            return m;
        }
    }
    panic!("no {what} within 64 messages");
}

fn invite(callee: &str) -> Command {
    Command::Invite(
        InviteRequest::new(
            vec![UserId::new(callee).expect("valid user")],
            CallType::Voice,
        )
        .with_timeout_s(Some(30)),
    )
}

/// `hello` is answered by `welcome` naming the user, then `sync` (fresh start).
pub async fn hello_gets_welcome_then_sync(fixture: &impl Fixture) {
    let mut conn = open(fixture, "conf-a", "d1").await;
    match next(&mut conn).await.body {
        ServerBody::Welcome { user, resumed, .. } => {
            assert_eq!(user.id.as_str(), "conf-a", "welcome names the user");
            assert!(!resumed, "a fresh start is not a resume");
        }
        other => panic!("first answer must be welcome, got {other:?}"),
    }
    assert!(
        matches!(next(&mut conn).await.body, ServerBody::Sync(_)),
        "a fresh start gets a sync"
    );
}

/// Replies carry the request id of their command.
pub async fn replies_carry_the_request_id(fixture: &impl Fixture) {
    let mut conn = open(fixture, "conf-b", "d1").await;
    conn.send(ClientMessage::new(rid("inv-1"), invite("conf-b-offline")))
        .await
        .expect("send");
    let reply = until(&mut conn, "answer", |b| b.success().is_some()).await;
    match reply.body.success() {
        Some((re, result)) => {
            assert_eq!(*re, rid("inv-1"));
            assert!(matches!(result, ReplyResult::Invited { .. }), "{result:?}");
        }
        None => unreachable!(),
    }
    conn.send(ClientMessage::new(rid("ping-1"), Control::Ping))
        .await
        .expect("send");
    until(&mut conn, "pong", |b| matches!(b, ServerBody::Pong { .. })).await;
}

/// An invite on one connection reaches the callee's connection as an event.
pub async fn events_reach_the_other_connection(fixture: &impl Fixture) {
    let mut bob = open(fixture, "conf-c-bob", "d1").await;
    until(&mut bob, "sync", |b| matches!(b, ServerBody::Sync(_))).await;
    let mut alice = open(fixture, "conf-c-alice", "d1").await;
    alice
        .send(ClientMessage::new(rid("inv-c"), invite("conf-c-bob")))
        .await
        .expect("send");
    let m = until(&mut bob, "incoming_call", |b| {
        matches!(
            b,
            ServerBody::Event {
                event: Event::IncomingCall { .. },
                ..
            }
        )
    })
    .await;
    let ServerBody::Event { seq, .. } = m.body else {
        unreachable!()
    };
    assert!(seq >= 1, "events are sequenced from 1");
}

/// Dropping a pending `recv` loses nothing.
pub async fn recv_is_cancel_safe(fixture: &impl Fixture) {
    let mut bob = open(fixture, "conf-d-bob", "d1").await;
    until(&mut bob, "sync", |b| matches!(b, ServerBody::Sync(_))).await;
    // Cancel a pending recv many times while nothing arrives.
    for _ in 0..20 {
        let r = tokio::time::timeout(Duration::from_millis(1), bob.recv()).await;
        assert!(r.is_err(), "nothing was sent yet");
    }
    let mut alice = open(fixture, "conf-d-alice", "d1").await;
    alice
        .send(ClientMessage::new(rid("inv-d"), invite("conf-d-bob")))
        .await
        .expect("send");
    // Interleave cancelled polls with the arrival.
    let mut got = None;
    for _ in 0..5000 {
        match tokio::time::timeout(Duration::from_millis(1), bob.recv()).await {
            Ok(m) => {
                got = Some(m.expect("open"));
                break;
            }
            Err(_) => continue,
        }
    }
    let m = got.expect("the event arrived despite cancelled polls");
    assert!(
        matches!(
            m.body,
            ServerBody::Event {
                event: Event::IncomingCall { .. },
                ..
            }
        ),
        "the first message after the cancelled polls is the event: {m:?}"
    );
}

/// A second connection of the same device replaces the first, which is
/// told (`closing: replaced`) and then observes the close.
pub async fn replaced_connection_observes_close(fixture: &impl Fixture) {
    let mut first = open(fixture, "conf-e", "d1").await;
    until(&mut first, "sync", |b| matches!(b, ServerBody::Sync(_))).await;
    let mut second = open(fixture, "conf-e", "d1").await;
    until(&mut second, "welcome", |b| {
        matches!(b, ServerBody::Welcome { .. })
    })
    .await;
    let m = next(&mut first).await;
    assert!(
        matches!(
            m.body,
            ServerBody::Closing {
                reason: CloseReason::Replaced
            }
        ),
        "the replaced connection is told why: {m:?}"
    );
    let end = tokio::time::timeout(WAIT, first.recv())
        .await
        .expect("closed in time");
    assert_eq!(
        end.expect_err("closed").kind(),
        TransportErrorKind::Closed,
        "close is observed as Closed"
    );
}

/// After `close`, sending fails with `Closed`.
pub async fn send_after_close_fails(fixture: &impl Fixture) {
    let mut conn = open(fixture, "conf-f", "d1").await;
    conn.close().await;
    let err = conn
        .send(ClientMessage::new(rid("late"), Control::Ping))
        .await
        .expect_err("closed");
    assert_eq!(err.kind(), TransportErrorKind::Closed);
    assert!(err.is_retryable(), "a closed link may be reopened");
}

/// The same request id twice gets the same answer and one call.
pub async fn retry_with_same_request_id_is_idempotent(fixture: &impl Fixture) {
    let mut conn = open(fixture, "conf-g", "d1").await;
    let msg = ClientMessage::new(rid("inv-g"), invite("conf-g-offline"));
    conn.send(msg.clone()).await.expect("send");
    conn.send(msg).await.expect("send");
    // The first answer rides on the event the invite caused; the retry,
    // which causes nothing, gets a plain reply with the same result.
    let is_answer = |b: &ServerBody| b.success().is_some();
    let a = until(&mut conn, "answer", is_answer).await;
    let b = until(&mut conn, "answer", is_answer).await;
    assert!(matches!(a.body, ServerBody::Event { .. }), "{a:?}");
    assert!(matches!(b.body, ServerBody::Reply { .. }), "{b:?}");
    assert_eq!(
        a.body.success(),
        b.body.success(),
        "a retry gets the stored answer"
    );
}
