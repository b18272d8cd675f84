//! Two (or more) separate SDK clients talking through a real
//! `invitation-server` on 127.0.0.1:0: each of the ten callbacks,
//! multi-device, busy, offline, caller gone, reconnects.

mod common;

use common::*;
use invitation::prelude::*;
use invitation_core::protocol::InviteRequest;

async fn invite(d: &Dev, callees: &[&str], timeout_s: u32) -> CallId {
    d.client
        .invite_with(InviteRequest {
            callees: callees.iter().map(|c| UserId::new(c).unwrap()).collect(),
            call_type: CallType::Video,
            custom_data: Some(CustomData::new("{\"room\":\"r\"}").unwrap()),
            timeout_s: Some(timeout_s),
        })
        .await
        .unwrap()
        .call_id
}

#[tokio::test]
async fn ws_accept_flow_received_accept_pressed_outgoing_accepted() {
    let srv = server(|_| {}).await;
    let alice = dev(&srv, "alice", "phone").await;
    let bob = dev(&srv, "bob", "phone").await;
    let call = invite(&alice, &["bob"], 60).await;
    let r = wait(&bob.rec, "on_incoming_call_received", 1).await;
    assert!(
        matches!(r.event, AppEvent::IncomingCallReceived { ref caller, .. } if caller.id.as_str() == "alice" && &*caller.name == "ALICE")
    );
    bob.client.accept(&call).await.unwrap();
    wait(&bob.rec, "on_incoming_call_accept_button_pressed", 1).await;
    wait(&alice.rec, "on_outgoing_call_accepted", 1).await;
    alice.client.hang_up(&call).await.unwrap();
    srv.stop().await;
}

#[tokio::test]
async fn ws_decline_flow() {
    let srv = server(|_| {}).await;
    let alice = dev(&srv, "alice", "phone").await;
    let bob = dev(&srv, "bob", "phone").await;
    let call = invite(&alice, &["bob"], 60).await;
    wait(&bob.rec, "on_incoming_call_received", 1).await;
    bob.client.decline(&call).await.unwrap();
    wait(&bob.rec, "on_incoming_call_decline_button_pressed", 1).await;
    wait(&alice.rec, "on_outgoing_call_declined", 1).await;
}

#[tokio::test]
async fn ws_busy_flow_server_decides() {
    let srv = server(|_| {}).await;
    let alice = dev(&srv, "alice", "phone").await;
    let bob = dev(&srv, "bob", "phone").await;
    let carol = dev(&srv, "carol", "phone").await;
    let call = invite(&carol, &["bob"], 60).await;
    wait(&bob.rec, "on_incoming_call_received", 1).await;
    bob.client.accept(&call).await.unwrap();
    invite(&alice, &["bob"], 60).await;
    wait(&alice.rec, "on_outgoing_call_rejected_cause_busy", 1).await;
    assert_eq!(bob.rec.count("on_incoming_call_received"), 1);
}

#[tokio::test]
async fn ws_timeout_flow_both_sides() {
    let srv = server(|_| {}).await;
    let alice = dev(&srv, "alice", "phone").await;
    let bob = dev(&srv, "bob", "phone").await;
    invite(&alice, &["bob"], 1).await; // the shortest ring there is
    wait(&bob.rec, "on_incoming_call_received", 1).await;
    wait(&bob.rec, "on_incoming_call_timeout", 1).await;
    wait(&alice.rec, "on_outgoing_call_timeout", 1).await;
}

#[tokio::test]
async fn ws_cancel_flow() {
    let srv = server(|_| {}).await;
    let alice = dev(&srv, "alice", "phone").await;
    let bob = dev(&srv, "bob", "phone").await;
    let call = invite(&alice, &["bob"], 60).await;
    wait(&bob.rec, "on_incoming_call_received", 1).await;
    alice.client.cancel(&call).await.unwrap();
    wait(&alice.rec, "on_outgoing_call_cancel_button_pressed", 1).await;
    let r = wait(&bob.rec, "on_incoming_call_canceled", 1).await;
    assert!(matches!(
        r.event,
        AppEvent::IncomingCallCanceled {
            reason: Reason::Canceled,
            ..
        }
    ));
}

#[tokio::test]
async fn ws_multi_device_answered_elsewhere() {
    let srv = server(|_| {}).await;
    let alice = dev(&srv, "alice", "phone").await;
    let phone = dev(&srv, "bob", "phone").await;
    let laptop = dev(&srv, "bob", "laptop").await;
    let call = invite(&alice, &["bob"], 60).await;
    wait(&phone.rec, "on_incoming_call_received", 1).await;
    wait(&laptop.rec, "on_incoming_call_received", 1).await;
    phone.client.accept(&call).await.unwrap();
    let r = wait(&laptop.rec, "on_incoming_call_canceled", 1).await;
    assert!(matches!(
        r.event,
        AppEvent::IncomingCallCanceled {
            reason: Reason::AnsweredElsewhere,
            ..
        }
    ));
    let late = laptop.client.accept(&call).await;
    assert!(matches!(
        late,
        Err(ClientError::Command(CommandError::Ended {
            reason: Reason::AnsweredElsewhere
        }))
    ));
    wait(&alice.rec, "on_outgoing_call_accepted", 1).await;
    assert_eq!(alice.rec.count("on_outgoing_call_accepted"), 1);
}

#[tokio::test]
async fn ws_offline_callee_connecting_in_time() {
    let srv = server(|_| {}).await;
    let alice = dev(&srv, "alice", "phone").await;
    let inv = alice
        .client
        .invite(["bob"], CallType::Voice, None)
        .await
        .unwrap();
    assert_eq!(
        inv.callees[0].status,
        invitation_core::protocol::InitialStatus::Offline
    );
    let bob = dev(&srv, "bob", "phone").await;
    wait(&bob.rec, "on_incoming_call_received", 1).await;
    bob.client.accept(&inv.call_id).await.unwrap();
    wait(&alice.rec, "on_outgoing_call_accepted", 1).await;
}

#[tokio::test]
async fn ws_caller_gone_cancels_after_grace() {
    let srv = server(|c| c.caller_gone_grace_s = 1).await;
    let alice = dev(&srv, "alice", "phone").await;
    let bob = dev(&srv, "bob", "phone").await;
    invite(&alice, &["bob"], 60).await;
    wait(&bob.rec, "on_incoming_call_received", 1).await;
    alice.client.close().await;
    let r = wait(&bob.rec, "on_incoming_call_canceled", 1).await;
    assert!(matches!(
        r.event,
        AppEvent::IncomingCallCanceled {
            reason: Reason::CallerGone,
            ..
        }
    ));
}

#[tokio::test]
async fn ws_group_call_outcomes() {
    let srv = server(|_| {}).await;
    let alice = dev(&srv, "alice", "phone").await;
    let bob = dev(&srv, "bob", "phone").await;
    let carol = dev(&srv, "carol", "phone").await;
    let dave = dev(&srv, "dave", "phone").await;
    let call = invite(&alice, &["bob", "carol", "dave"], 2).await;
    for d in [&bob, &carol, &dave] {
        wait(&d.rec, "on_incoming_call_received", 1).await;
    }
    bob.client.accept(&call).await.unwrap();
    carol.client.decline(&call).await.unwrap();
    wait(&alice.rec, "on_outgoing_call_accepted", 1).await;
    wait(&alice.rec, "on_outgoing_call_declined", 1).await;
    wait(&alice.rec, "on_outgoing_call_timeout", 1).await;
    wait(&dave.rec, "on_incoming_call_timeout", 1).await;
}

#[tokio::test]
async fn ws_client_renews_its_token_in_band() {
    let srv = server(|_| {}).await;
    let alice = dev(&srv, "alice", "phone").await;
    alice
        .client
        .renew_token(srv.token("alice", "ALICE"))
        .await
        .unwrap();
    let wrong = alice.client.renew_token(srv.token("mallory", "M")).await;
    assert!(matches!(
        wrong,
        Err(ClientError::Command(CommandError::Rejected {
            code: invitation_core::ErrorCode::Unauthorized,
            ..
        }))
    ));
    // Still connected and working.
    let bob = dev(&srv, "bob", "phone").await;
    invite(&alice, &["bob"], 60).await;
    wait(&bob.rec, "on_incoming_call_received", 1).await;
}

/// A TCP relay in front of the server whose links can be cut at once, as a
/// network failure or a dropped server connection would.
struct Relay {
    url: String,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let held = links.clone();
        tokio::spawn(async move {
            while let Ok((mut near, _)) = listener.accept().await {
                let link = tokio::spawn(async move {
                    if let Ok(mut far) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut near, &mut far).await;
                    }
                });
                held.lock().unwrap().push(link);
            }
        });
        Relay { url, links }
    }

    /// Drops every live link (both sockets close).
    fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

#[tokio::test]
async fn ws_client_reconnects_after_server_drops_it_without_loss_or_duplicates() {
    // The link to the server breaks; the client reconnects, resumes, and
    // nothing is lost or doubled. (A connection *replaced* by another one of
    // the same device does not reconnect: see tests/client_auth.rs.)
    let srv = server(|_| {}).await;
    let relay = Relay::start(srv.addr).await;
    let alice = dev(&srv, "alice", "phone").await;
    let bob_rec = invitation::Recorder::new();
    let bob = Client::builder()
        .user(User::named("bob", "BOB"))
        .device("phone")
        .token(srv.token("bob", "BOB"))
        .transport(invitation::transport::ws::WsTransport::new(
            relay.url.clone(),
        ))
        .handler(bob_rec.clone())
        .backoff(
            std::time::Duration::from_millis(20),
            std::time::Duration::from_millis(200),
        )
        .build()
        .unwrap();
    bob.connect().await.unwrap();
    let mut events = bob.events();
    relay.cut();
    assert!(
        reconnected(&mut events).await,
        "resumed from the last sequence number"
    );
    let call = invite(&alice, &["bob"], 60).await;
    wait(&bob_rec, "on_incoming_call_received", 1).await;
    bob.accept(&call).await.unwrap();
    wait(&alice.rec, "on_outgoing_call_accepted", 1).await;
    assert_eq!(bob_rec.count("on_incoming_call_received"), 1);
}
