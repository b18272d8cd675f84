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
