//! The end-to-end flows (tests/suite), each run against both fixtures: the
//! in-process memory hub with the clock paused (`memory::*`) and this server
//! over WebSocket on 127.0.0.1:0 (`websocket::*`). Then the tests that only
//! make sense on the server: in-band token renewal, and a connection replaced
//! by a second one of the same device.

mod common;
mod suite;

use common::Raw;
use invitation::ConnectionState;
use invitation::prelude::*;
use suite::Fixture;

/// One test per flow and fixture.
macro_rules! flows {
    ($($flow:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(start_paused = true)]
                async fn $flow() {
                    crate::suite::$flow(&crate::suite::Memory::new()).await;
                }
            )*
        }
        mod websocket {
            $(
                #[tokio::test]
                async fn $flow() {
                    let fixture = crate::suite::Server::start().await;
                    crate::suite::$flow(&fixture).await;
                    fixture.stop().await;
                }
            )*
        }
    };
}

flows!(
    accept,
    cancel,
    timeout,
    decline,
    busy,
    answered_elsewhere,
    offline_callee,
    group_call,
    caller_gone,
    reconnect_while_ringing,
    act_from_a_callback,
    typed_command_results,
);

#[tokio::test]
async fn ws_client_renews_its_token_in_band() {
    let f = suite::Server::start().await;
    let alice = f.device("alice", "phone").await;
    alice
        .client
        .renew_token(f.0.token("alice", "ALICE"))
        .await
        .unwrap();
    let wrong = alice.client.renew_token(f.0.token("mallory", "M")).await;
    assert!(matches!(
        wrong,
        Err(ClientError::Command(CommandError::Rejected {
            code: invitation_core::ErrorCode::Unauthorized,
            ..
        }))
    ));
    // Still connected and working.
    let bob = f.device("bob", "phone").await;
    let call = suite::invite(&alice, &["bob"], 60).await.call_id;
    let r = bob.rec.wait_for(Callback::IncomingCallReceived, 1).await;
    assert_eq!(r.call_id, call);
    f.stop().await;
}

#[tokio::test]
async fn ws_client_reconnects_after_server_drops_it_without_loss_or_duplicates() {
    // The server drops connections that stay silent; the client reconnects,
    // resumes, and nothing is lost or doubled.
    let f = suite::Server::start().await;
    let alice = f.device("alice", "phone").await;
    let bob = f.device("bob", "phone").await;
    let mut events = bob.client.events();
    // A second connection of the same device replaces bob's (C3); his
    // client sees the close and reconnects, replacing it back.
    let (mut intruder, _) = Raw::hello(&f.0, "bob", "phone", None).await;
    let back = suite::next_event(&f, &mut events, "a reconnect", |e| {
        matches!(e, AppEvent::Connection(ConnectionState::Connected { .. }))
    })
    .await;
    assert!(
        matches!(
            back,
            AppEvent::Connection(ConnectionState::Connected { resumed: true, .. })
        ),
        "resumed from the last sequence number: {back:?}"
    );
    let (_, before) = intruder.until_closed().await;
    assert!(before.iter().any(|m| matches!(
        m.body,
        invitation_core::protocol::ServerBody::Closing { .. }
    )));
    let call = suite::invite(&alice, &["bob"], 60).await.call_id;
    bob.rec.wait_for(Callback::IncomingCallReceived, 1).await;
    bob.client.accept(&call).await.unwrap();
    alice.rec.wait_for(Callback::OutgoingCallAccepted, 1).await;
    assert_eq!(bob.rec.count(Callback::IncomingCallReceived), 1);
    suite::assert_callbacks(
        &bob,
        &[
            (Callback::IncomingCallReceived, &call),
            (Callback::IncomingCallAcceptButtonPressed, &call),
        ],
    );
    f.stop().await;
}
