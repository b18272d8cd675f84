//! Builder behaviour an app relies on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use invitation::prelude::*;
use invitation::testing::Recorder;

/// Notes its name when a call arrives.
struct Named(&'static str, Arc<Mutex<Vec<&'static str>>>);

#[async_trait]
impl InvitationEvents for Named {
    async fn on_incoming_call_received(
        &self,
        _: &CallContext,
        _: &CallId,
        _: &User,
        _: CallType,
        _: &[User],
        _: Option<&CustomData>,
    ) {
        self.1.lock().unwrap().push(self.0);
    }
}

#[tokio::test(start_paused = true)]
async fn handler_called_twice_adds_a_second_handler_run_in_order() {
    let hub = MemoryHub::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let done = Recorder::new();
    let bob = User::named("bob", "Bob");
    let callee = Client::builder()
        .user(bob.clone())
        .transport(hub.transport(bob))
        .handler(Named("first", seen.clone()))
        .handler(Named("second", seen.clone()))
        .handler(done.clone())
        .build()
        .unwrap();
    callee.connect().await.unwrap();
    let alice = User::named("alice", "Alice");
    let caller = Client::builder()
        .user(alice.clone())
        .transport(hub.transport(alice))
        .build()
        .unwrap();
    caller.connect().await.unwrap();
    caller.invite(["bob"], CallType::Voice, None).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        done.wait_for(invitation::Callback::IncomingCallReceived, 1),
    )
    .await
    .expect("the call arrived");
    assert_eq!(*seen.lock().unwrap(), ["first", "second"]);
}

/// A server URL whose scheme picks no transport fails `build` with a typed
/// error naming the scheme; the memory hub has no URL (it is given with
/// `.transport(...)`), so `memory://` is refused the same way.
#[test]
fn a_server_url_with_an_unsupported_scheme_fails_build() {
    use invitation::BuildError;
    use invitation::transport::endpoint::EndpointError;
    for (url, scheme) in [("ftp://example.org/", "ftp"), ("memory://hub", "memory")] {
        let built = Client::builder()
            .user(User::named("alice", "Alice"))
            .server(url)
            .build();
        match built {
            Err(BuildError::Endpoint(e @ EndpointError::UnsupportedScheme { .. })) => {
                assert_eq!(
                    e.to_string(),
                    format!(
                        "unsupported scheme {scheme:?} in {url:?}: expected ws://, wss://, http:// or https://"
                    )
                );
            }
            other => panic!("{url}: expected UnsupportedScheme, got {other:?}"),
        }
    }
    match Client::builder()
        .user(User::named("alice", "Alice"))
        .server("127.0.0.1:7600")
        .build()
    {
        Err(BuildError::Endpoint(EndpointError::InvalidUrl { reason, .. })) => {
            assert_eq!(reason, "no scheme (expected scheme://host/)")
        }
        other => panic!("expected InvalidUrl, got {other:?}"),
    }
}
