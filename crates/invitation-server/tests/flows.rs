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
    let r = wait(&bob.rec, Callback::IncomingCallReceived, 1).await;
    assert!(
        matches!(r.event, AppEvent::IncomingCallReceived { ref caller, .. } if caller.id.as_str() == "alice" && &*caller.name == "ALICE")
    );
    bob.client.accept(&call).await.unwrap();
    wait(&bob.rec, Callback::IncomingCallAcceptButtonPressed, 1).await;
    wait(&alice.rec, Callback::OutgoingCallAccepted, 1).await;
    alice.client.hang_up(&call).await.unwrap();
    srv.stop().await;
}

#[tokio::test]
async fn ws_decline_flow() {
    let srv = server(|_| {}).await;
    let alice = dev(&srv, "alice", "phone").await;
    let bob = dev(&srv, "bob", "phone").await;
    let call = invite(&alice, &["bob"], 60).await;
    wait(&bob.rec, Callback::IncomingCallReceived, 1).await;
    bob.client.decline(&call).await.unwrap();
    wait(&bob.rec, Callback::IncomingCallDeclineButtonPressed, 1).await;
    wait(&alice.rec, Callback::OutgoingCallDeclined, 1).await;
}

#[tokio::test]
async fn ws_busy_flow_server_decides() {
    let srv = server(|_| {}).await;
    let alice = dev(&srv, "alice", "phone").await;
    let bob = dev(&srv, "bob", "phone").await;
    let carol = dev(&srv, "carol", "phone").await;
    let call = invite(&carol, &["bob"], 60).await;
    wait(&bob.rec, Callback::IncomingCallReceived, 1).await;
    bob.client.accept(&call).await.unwrap();
    invite(&alice, &["bob"], 60).await;
    wait(&alice.rec, Callback::OutgoingCallRejectedCauseBusy, 1).await;
    assert_eq!(bob.rec.count(Callback::IncomingCallReceived), 1);
}

#[tokio::test]
async fn ws_timeout_flow_both_sides() {
    let srv = server(|_| {}).await;
    let alice = dev(&srv, "alice", "phone").await;
    let bob = dev(&srv, "bob", "phone").await;
    invite(&alice, &["bob"], 1).await; // the shortest ring there is
    wait(&bob.rec, Callback::IncomingCallReceived, 1).await;
    wait(&bob.rec, Callback::IncomingCallTimeout, 1).await;
    wait(&alice.rec, Callback::OutgoingCallTimeout, 1).await;
}

#[tokio::test]
async fn ws_cancel_flow() {
    let srv = server(|_| {}).await;
    let alice = dev(&srv, "alice", "phone").await;
    let bob = dev(&srv, "bob", "phone").await;
    let call = invite(&alice, &["bob"], 60).await;
    wait(&bob.rec, Callback::IncomingCallReceived, 1).await;
    alice.client.cancel(&call).await.unwrap();
    wait(&alice.rec, Callback::OutgoingCallCancelButtonPressed, 1).await;
    let r = wait(&bob.rec, Callback::IncomingCallCanceled, 1).await;
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
    wait(&phone.rec, Callback::IncomingCallReceived, 1).await;
    wait(&laptop.rec, Callback::IncomingCallReceived, 1).await;
    phone.client.accept(&call).await.unwrap();
    let r = wait(&laptop.rec, Callback::IncomingCallCanceled, 1).await;
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
    wait(&alice.rec, Callback::OutgoingCallAccepted, 1).await;
    assert_eq!(alice.rec.count(Callback::OutgoingCallAccepted), 1);
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
    wait(&bob.rec, Callback::IncomingCallReceived, 1).await;
    bob.client.accept(&inv.call_id).await.unwrap();
    wait(&alice.rec, Callback::OutgoingCallAccepted, 1).await;
}

#[tokio::test]
async fn ws_caller_gone_cancels_after_grace() {
    let srv = server(|c| c.caller_gone_grace_s = 1).await;
    let alice = dev(&srv, "alice", "phone").await;
    let bob = dev(&srv, "bob", "phone").await;
    invite(&alice, &["bob"], 60).await;
    wait(&bob.rec, Callback::IncomingCallReceived, 1).await;
    alice.client.close().await;
    let r = wait(&bob.rec, Callback::IncomingCallCanceled, 1).await;
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
        wait(&d.rec, Callback::IncomingCallReceived, 1).await;
    }
    bob.client.accept(&call).await.unwrap();
    carol.client.decline(&call).await.unwrap();
    wait(&alice.rec, Callback::OutgoingCallAccepted, 1).await;
    wait(&alice.rec, Callback::OutgoingCallDeclined, 1).await;
    wait(&alice.rec, Callback::OutgoingCallTimeout, 1).await;
    wait(&dave.rec, Callback::IncomingCallTimeout, 1).await;
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
    wait(&bob.rec, Callback::IncomingCallReceived, 1).await;
}

#[tokio::test]
async fn ws_client_reconnects_after_server_drops_it_without_loss_or_duplicates() {
    // The server drops connections that stay silent; the client reconnects,
    // resumes, and nothing is lost or doubled.
    let srv = server(|_| {}).await;
    let alice = dev(&srv, "alice", "phone").await;
    let bob = dev(&srv, "bob", "phone").await;
    let mut events = bob.client.events();
    // A second connection of the same device replaces bob's (C3); his
    // client sees the close and reconnects, replacing it back.
    let (mut intruder, _) = Raw::hello(&srv, "bob", "phone", None).await;
    assert!(
        reconnected(&mut events).await,
        "resumed from the last sequence number"
    );
    let (_, before) = intruder.until_closed().await;
    assert!(before.iter().any(|m| matches!(
        m.body,
        invitation_core::protocol::ServerBody::Closing { .. }
    )));
    let call = invite(&alice, &["bob"], 60).await;
    wait(&bob.rec, Callback::IncomingCallReceived, 1).await;
    bob.client.accept(&call).await.unwrap();
    wait(&alice.rec, Callback::OutgoingCallAccepted, 1).await;
    assert_eq!(bob.rec.count(Callback::IncomingCallReceived), 1);
}
