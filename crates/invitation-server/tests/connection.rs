//! Connection-level behaviour of the real server on 127.0.0.1:0, as the
//! connection machine and its socket shell define it: one answer per
//! message, clients that stop reading, messages that never finish, and what
//! a graceful stop promises.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use invitation_core::protocol::{
    ClientMessage, CloseReason, Command, Event, InviteRequest, ReplyResult, ServerBody,
    ServerMessage, SyncBody,
};
use invitation_core::{CallType, Reason, RequestId, UserId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

fn rid(s: &str) -> RequestId {
    RequestId::new(s).unwrap()
}

fn invite(id: &str, callee: &str) -> ClientMessage {
    ClientMessage::new(
        rid(id),
        Command::Invite(
            InviteRequest::new(vec![UserId::new(callee).unwrap()], CallType::Voice)
                .with_timeout_s(Some(60)),
        ),
    )
}

fn sessions(srv: &invitation_server::RunningServer) -> i64 {
    srv.metrics
        .sessions
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Waits (polling, with a deadline) until the server has `n` sessions open.
async fn sessions_become(srv: &invitation_server::RunningServer, n: i64, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while sessions(srv) != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sessions still {} after {within:?}, expected {n}",
            sessions(srv)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every `sync` is answered by a `sync` carrying its request id, so the
/// server's count of unanswered messages goes back to zero each time. It
/// used to stop reading a connection for good after 64 syncs.
#[tokio::test]
async fn a_thousand_syncs_then_a_whole_call_on_the_same_connection() {
    let srv = server(|_| {}).await;
    let (alice, _) = Raw::hello(&srv, "alice", "phone", None).await;
    let (mut bob, _) = Raw::hello(&srv, "bob", "phone", None).await;
    // Pipelined: sent without waiting for answers, while a reader takes
    // them (a client that also stopped reading would be dropped by the write
    // deadline: see below).
    let (mut sink, mut stream) = alice.ws.split();
    let send = async {
        for i in 0..1000 {
            let sync = format!(r#"{{"v":1,"id":"s{i}","type":"sync"}}"#);
            sink.send(Message::text(sync)).await.unwrap();
        }
    };
    let read = async {
        let mut answered = 0;
        while answered < 1000 {
            let frame = tokio::time::timeout(SOON, stream.next()).await;
            let Ok(Some(Ok(Message::Text(text)))) = frame else {
                panic!("after {answered} answers: {frame:?}");
            };
            let m = ServerMessage::decode(text.as_str(), &Default::default()).unwrap();
            // (The snapshot after a fresh hello is not an answer: no `re`.)
            if let ServerBody::Sync(s @ SyncBody { re: Some(_), .. }) = m.body {
                assert_eq!(s.re, Some(rid(&format!("s{answered}"))), "in order");
                answered += 1;
            }
        }
    };
    tokio::join!(send, read);
    let mut alice = Raw {
        ws: sink.reunite(stream).unwrap(),
    };
    alice.send(&invite("i1", "bob")).await;
    let reply = alice.until(|b| b.success().is_some()).await;
    let Some((re, ReplyResult::Invited { call_id, .. })) = reply.body.success() else {
        panic!("{reply:?}")
    };
    assert_eq!(*re, rid("i1"));
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
    bob.send(&ClientMessage::new(
        rid("a1"),
        Command::Accept {
            call_id: call_id.clone(),
            custom_data: None,
        },
    ))
    .await;
    alice
        .until(|b| {
            matches!(
                b,
                ServerBody::Event {
                    event: Event::CalleeOutcome {
                        reason: Reason::Accepted,
                        ..
                    },
                    ..
                }
            )
        })
        .await;
    alice
        .send(&ClientMessage::new(
            rid("h1"),
            Command::HangUp {
                call_id: call_id.clone(),
                custom_data: None,
            },
        ))
        .await;
    let done = alice.until(|b| b.answers() == Some(&rid("h1"))).await;
    // The hang-up is answered by the event it caused, not a separate reply.
    assert!(
        matches!(
            &done.body,
            ServerBody::Event {
                result: None,
                event: Event::CallEnded {
                    reason: Reason::HungUp,
                    ..
                },
                ..
            }
        ),
        "{done:?}"
    );
    bob.until(|b| {
        matches!(
            b,
            ServerBody::Event {
                event: Event::CallEnded {
                    reason: Reason::HungUp,
                    ..
                },
                ..
            }
        )
    })
    .await;
}

/// `ping` and the hello are answered with their ids too.
#[tokio::test]
async fn hello_and_ping_answers_carry_the_request_id() {
    let srv = server(|_| {}).await;
    let (mut alice, welcome) = Raw::hello(&srv, "alice", "phone", None).await;
    let ServerBody::Welcome { re, .. } = welcome.body else {
        unreachable!()
    };
    assert_eq!(re, Some(rid("hello")));
    alice.text(r#"{"v":1,"id":"p7","type":"ping"}"#).await;
    let pong = alice.until(|b| matches!(b, ServerBody::Pong { .. })).await;
    assert!(matches!(pong.body, ServerBody::Pong { re: Some(r), .. } if r == rid("p7")));
}

/// A client that stops reading cannot hold its connection task, nor much
/// kernel memory: the write that cannot finish hits its deadline, the
/// connection is dropped and its socket shut, and the bytes that reached the
/// client are bounded by the socket buffers. Before, the task blocked in
/// the write forever (heartbeat, expiry and shutdown never ran) and the
/// kernel held megabytes per connection.
#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_its_socket_shut() {
    let srv = server(|c| c.write_timeout_s = 1).await;
    // A small receive buffer on the client side, so the server's writes
    // block soon.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(srv.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(srv.url(), stream)
        .await
        .unwrap();
    let token = srv.token("sleepy", "Sleepy");
    ws.send(Message::text(format!(
        r#"{{"v":1,"id":"h","type":"hello","device":"d","token":"{token}"}}"#
    )))
    .await
    .unwrap();
    sessions_become(&srv, 1, SOON).await;
    // Pings are answered without the client reading anything back. Each
    // pong is ~40 bytes; send until the server stops taking them.
    let ping = r#"{"v":1,"id":"p","type":"ping"}"#;
    let flood = async {
        for _ in 0..2_000_000 {
            if ws.send(Message::text(ping)).await.is_err() {
                break;
            }
        }
    };
    // The server must give up on this client well within the deadline of
    // this test (write deadline 1 s).
    let _ = tokio::time::timeout(Duration::from_secs(20), flood).await;
    sessions_become(&srv, 0, SOON).await;
    assert!(
        srv.metrics
            .too_slow
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    // Now read what made it: bounded by the socket buffers, then the end.
    let mut received = 0usize;
    let ended = tokio::time::timeout(SOON, async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(m) => received += m.len(),
                Err(_) => break,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the server shut the socket");
    assert!(
        received < 2 * 1024 * 1024,
        "{received} bytes were held for a client that did not read"
    );
}

/// A client that starts a large message and never finishes it is cut after
/// the message timeout, long before the heartbeat would notice.
#[tokio::test]
async fn an_unfinished_message_is_cut_after_the_message_timeout() {
    let srv = server(|c| {
        c.message_timeout_s = 1;
        c.ping_every_s = 25;
        c.dead_after_s = 60;
    })
    .await;
    let (raw, _) = Raw::hello(&srv, "alice", "phone", None).await;
    // Take the raw socket back and write half of a masked 10 KiB text frame.
    let mut tcp: TcpStream = match raw.ws.into_inner() {
        tokio_tungstenite::MaybeTlsStream::Plain(s) => s,
        _ => unreachable!(),
    };
    let len: u16 = 10 * 1024;
    let mut frame = vec![0x81, 0xFE];
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]); // mask
    frame.extend(std::iter::repeat_n(b'x', 5 * 1024));
    tcp.write_all(&frame).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(SOON, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server never cut the stalled message");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "cut after {took:?}: the heartbeat did it, not the message timeout"
    );
    sessions_become(&srv, 0, SOON).await;
}

/// A graceful stop ends every live call with a reason both sides see before
/// their connections close.
#[tokio::test]
async fn a_graceful_stop_ends_ringing_calls_for_both_sides() {
    let srv = server(|_| {}).await;
    let (mut alice, _) = Raw::hello(&srv, "alice", "phone", None).await;
    let (mut bob, _) = Raw::hello(&srv, "bob", "phone", None).await;
    alice.send(&invite("i1", "bob")).await;
    alice.until(|b| b.success().is_some()).await;
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
    let stop = tokio::spawn(srv.stop());
    for (who, raw) in [("alice", &mut alice), ("bob", &mut bob)] {
        let (_, seen) = raw.until_closed().await;
        let ended = seen.iter().position(|m| {
            matches!(
                m.body,
                ServerBody::Event {
                    event: Event::CallEnded {
                        reason: Reason::ServerShutdown,
                        ..
                    } | Event::IncomingEnded {
                        reason: Reason::ServerShutdown,
                        ..
                    },
                    ..
                }
            )
        });
        let closing = seen.iter().position(|m| {
            matches!(
                m.body,
                ServerBody::Closing {
                    reason: CloseReason::ShuttingDown
                }
            )
        });
        assert!(
            matches!((ended, closing), (Some(e), Some(c)) if e < c),
            "{who} saw {seen:?}"
        );
    }
    stop.await.unwrap();
}

/// What each party of a 1:1 call receives, message by message: every
/// command is answered by the event it caused (carrying the command's `re`),
/// never by a separate `reply`, so the caller gets four messages and the
/// callee three, and nothing else.
#[tokio::test]
async fn a_one_to_one_call_is_seven_messages_with_answers_folded_into_events() {
    /// (event type with its reason, `re`, whether a result rides along)
    fn shape(m: &ServerMessage) -> (String, Option<String>, bool) {
        let ServerBody::Event {
            re, result, event, ..
        } = &m.body
        else {
            panic!("only events expected, got {m:?}")
        };
        let json = serde_json::to_value(event).unwrap();
        let mut ty = json["type"].as_str().unwrap().to_owned();
        if let Some(reason) = json["reason"].as_str() {
            ty = format!("{ty}:{reason}");
        }
        (
            ty,
            re.as_ref().map(|r| r.as_str().to_owned()),
            result.is_some(),
        )
    }
    let srv = server(|_| {}).await;
    // Fresh users resuming from 0: no unasked `sync` after the welcome.
    let (mut alice, _) = Raw::hello(&srv, "alice", "phone", Some(0)).await;
    let (mut bob, _) = Raw::hello(&srv, "bob", "phone", Some(0)).await;
    let mut seen_by_alice = Vec::new();
    let mut seen_by_bob = Vec::new();

    alice.send(&invite("i1", "bob")).await;
    let answer = alice.recv().await;
    let Some((_, ReplyResult::Invited { call_id, .. })) = answer.body.success() else {
        panic!("{answer:?}")
    };
    seen_by_alice.push(shape(&answer));
    seen_by_alice.push(shape(&alice.recv().await));
    seen_by_bob.push(shape(&bob.recv().await));

    bob.send(&ClientMessage::new(
        rid("a1"),
        Command::accept(call_id.clone()),
    ))
    .await;
    seen_by_bob.push(shape(&bob.recv().await));
    seen_by_alice.push(shape(&alice.recv().await));

    alice
        .send(&ClientMessage::new(rid("h1"), Command::hang_up(call_id)))
        .await;
    seen_by_alice.push(shape(&alice.recv().await));
    seen_by_bob.push(shape(&bob.recv().await));
    // Nothing else is on its way to either of them.
    assert_eq!(alice.ping_collect().await, vec![]);
    assert_eq!(bob.ping_collect().await, vec![]);

    let s =
        |ty: &str, re: Option<&str>, result: bool| (ty.to_owned(), re.map(str::to_owned), result);
    assert_eq!(
        seen_by_alice,
        [
            s("outgoing_call", Some("i1"), true),
            s("callee_ringing", None, false),
            s("callee_outcome:accepted", None, false),
            s("call_ended:hung_up", Some("h1"), false),
        ]
    );
    assert_eq!(
        seen_by_bob,
        [
            s("incoming_call", None, false),
            s("incoming_ended:accepted", Some("a1"), false),
            s("call_ended:hung_up", None, false),
        ]
    );
}
