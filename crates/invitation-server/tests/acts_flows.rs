//! The flows about custom data on every action and device receipts
//! (tests/suite/acts.rs), each run against both fixtures: the in-process
//! memory hub with the clock paused (`memory::*`) and this server over
//! WebSocket on 127.0.0.1:0 (`websocket::*`).

mod common;
mod suite;

macro_rules! flows {
    ($($flow:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(start_paused = true)]
                async fn $flow() {
                    crate::suite::acts::$flow(&crate::suite::Memory::new()).await;
                }
            )*
        }
        mod websocket {
            $(
                #[tokio::test]
                async fn $flow() {
                    let fixture = crate::suite::Server::start().await;
                    crate::suite::acts::$flow(&fixture).await;
                    fixture.stop().await;
                }
            )*
        }
    };
}

flows!(action_data, delivery_receipts);
