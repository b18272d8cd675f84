//! The end-to-end flows (tests/suite), each run against both fixtures: the
//! in-process memory hub with the clock paused (`memory::*`) and this server
//! over WebSocket on 127.0.0.1:0 (`websocket::*`) and over the HTTP
//! transport (`http::*`: requests and long polls), the same server keeping
//! its state in a data directory (`durable::*`: every turn journaled before
//! its messages leave). Then what only makes
//! sense on the server: in-band token renewal. (A connection replaced by a
//! second one of the same device stays down: tests/client_auth.rs.)

mod common;
mod suite;

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
        mod http {
            $(
                #[tokio::test]
                async fn $flow() {
                    let fixture = crate::suite::Server::start_http().await;
                    crate::suite::$flow(&fixture).await;
                    fixture.stop().await;
                }
            )*
        }
        mod durable {
            $(
                #[tokio::test]
                async fn $flow() {
                    let fixture = crate::suite::Server::start_durable().await;
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
