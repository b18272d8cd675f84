//! The end-to-end flows, written once and run against each fixture: the
//! in-process memory hub (paused clock) and this server over WebSocket on
//! 127.0.0.1:0 (real clock). Each flow asserts what every device received
//! (which callbacks, for which call, in which order, with which data), not
//! merely that a callback fired.
//!
//! A fixture only says how to make a connected device, how long rings and
//! grace periods are, whether the clock is paused, and how to break a link.

#![allow(dead_code, unreachable_pub)]

pub mod acts;
pub mod cluster;

#[allow(unused_imports)]
pub use cluster::Cluster;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use invitation::prelude::*;
use invitation::testing::Recorder;
use invitation::transport::{
    BoxConnection, BoxTransport, Connection, Transport, TransportError, http::HttpTransport,
    ws::WsTransport,
};
use invitation::{ConnectionState, Invitation};
use invitation_core::protocol::{ClientMessage, InitialStatus, InviteRequest, ServerMessage};
use invitation_core::{DeviceId, SwitchboardConfig};
use invitation_server::RunningServer;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

/// One connected device: its client, and a recorder of its callbacks.
pub struct Dev {
    pub client: Client,
    pub rec: Recorder,
    pub user: UserId,
    pub device: DeviceId,
    /// Breaks this device's current link (where the fixture needs it).
    pub link: Option<LinkBreaker>,
}

/// What a flow needs from a fixture.
pub trait Fixture {
    /// A connected device of `user`; its handlers are a [`Recorder`] and,
    /// after it, `extra`.
    async fn device_with(
        &self,
        user: &str,
        device: &str,
        extra: Option<Arc<dyn InvitationEvents>>,
    ) -> Dev {
        self.device_configured(user, device, extra, Default::default())
            .await
    }

    /// A connected device of `user` whose only handler is a [`Recorder`].
    async fn device(&self, user: &str, device: &str) -> Dev {
        self.device_with(user, device, None).await
    }

    /// A connected device with this client-session config (for example a
    /// device that never acknowledges what it receives); its handlers are a
    /// [`Recorder`] and, after it, `extra`.
    async fn device_configured(
        &self,
        user: &str,
        device: &str,
        extra: Option<Arc<dyn InvitationEvents>>,
        config: invitation_core::SessionConfig,
    ) -> Dev;

    /// Ring timeout (seconds) of the flows that wait for a ring to time out.
    fn ring_s(&self) -> u32;

    /// Ring timeout (seconds) of the group call, whose third callee times out.
    fn group_ring_s(&self) -> u32;

    /// How long a vanished caller's invitations keep ringing.
    fn caller_gone_grace(&self) -> Duration;

    /// True when the clock is paused: durations are asserted exactly and a
    /// flow may let time pass.
    fn paused(&self) -> bool;

    /// How long any single wait of a flow may take.
    fn deadline(&self) -> Duration;

    /// Drops the device's current link as a failing network would; its
    /// client must notice and reconnect on its own.
    fn break_link(&self, dev: &Dev);
}

/// The in-process hub, with tokio's clock paused by the test.
pub struct Memory(pub MemoryHub);

impl Memory {
    pub fn new() -> Self {
        Self(MemoryHub::new())
    }
}

impl Fixture for Memory {
    async fn device_configured(
        &self,
        user: &str,
        device: &str,
        extra: Option<Arc<dyn InvitationEvents>>,
        config: invitation_core::SessionConfig,
    ) -> Dev {
        let u = User::named(user, &user.to_uppercase());
        let rec = Recorder::with_deadline(self.deadline());
        let transport = self.0.transport(u.clone());
        let client = handlers(Client::builder(), &rec, extra)
            .user(u)
            .device(device)
            .session_config(config)
            .transport(transport)
            .build()
            .unwrap();
        connected(client, rec, None).await
    }

    fn ring_s(&self) -> u32 {
        30
    }

    fn group_ring_s(&self) -> u32 {
        20
    }

    fn caller_gone_grace(&self) -> Duration {
        SwitchboardConfig::default().caller_gone_grace
    }

    fn paused(&self) -> bool {
        true
    }

    fn deadline(&self) -> Duration {
        Recorder::DEFAULT_DEADLINE
    }

    /// The hub drops the connection (and notices at once).
    fn break_link(&self, dev: &Dev) {
        self.0.kick(&dev.user, &dev.device);
    }
}

/// An `invitation-server` on 127.0.0.1:0 with short timers; real clock;
/// in memory, or durable on a data directory of its own; plain or with its
/// own TLS (a certificate made for the test, which the clients trust); its
/// clients on WebSocket or on the HTTP transport.
pub struct Server(
    pub RunningServer,
    Option<crate::common::TempDir>,
    Option<crate::common::tls::TestPki>,
    Via,
);

/// Which transport the fixture's clients use.
#[derive(Clone, Copy)]
pub enum Via {
    WebSocket,
    Http,
}

impl Server {
    pub async fn start() -> Self {
        Self(
            crate::common::server(|c| c.caller_gone_grace_s = 1).await,
            None,
            None,
            Via::WebSocket,
        )
    }

    /// The same server; its clients use the HTTP transport.
    pub async fn start_http() -> Self {
        Self(
            crate::common::server(|c| c.caller_gone_grace_s = 1).await,
            None,
            None,
            Via::Http,
        )
    }

    /// The same server serving `wss://` itself; clients dial it with TLS.
    pub async fn start_tls() -> Self {
        let pki = crate::common::tls::TestPki::loopback();
        let server = crate::common::server(|c| {
            c.caller_gone_grace_s = 1;
            pki.serve(c);
        })
        .await;
        assert!(server.url().starts_with("wss://"), "{}", server.url());
        Self(server, None, Some(pki), Via::WebSocket)
    }

    /// The same server with its own TLS; clients use the HTTP transport
    /// over `https://`.
    pub async fn start_https() -> Self {
        let pki = crate::common::tls::TestPki::loopback();
        let server = crate::common::server(|c| {
            c.caller_gone_grace_s = 1;
            pki.serve(c);
        })
        .await;
        Self(server, None, Some(pki), Via::Http)
    }

    /// The same server, keeping its state in a fresh data directory
    /// (removed by [`Server::stop`]).
    pub async fn start_durable() -> Self {
        let dir = crate::common::TempDir::new("flows");
        let server = crate::common::server(|c| {
            c.caller_gone_grace_s = 1;
            c.data_dir = Some(dir.0.clone());
        })
        .await;
        Self(server, Some(dir), None, Via::WebSocket)
    }

    /// A connected device whose client uses `transport` (a path with a
    /// fault in it, say).
    pub async fn device_through(&self, user: &str, device: &str, transport: BoxTransport) -> Dev {
        let name = user.to_uppercase();
        let rec = Recorder::with_deadline(self.deadline());
        let client = handlers(Client::builder(), &rec, None)
            .user(User::named(user, &name))
            .device(device)
            .token(self.0.token(user, &name))
            .transport(transport)
            .backoff(Duration::from_millis(20), Duration::from_millis(200))
            .build()
            .unwrap();
        connected(client, rec, None).await
    }

    pub async fn stop(self) {
        self.0.stop().await;
        drop(self.1); // the data directory, after the server let go of it
        drop(self.2);
    }
}

impl Fixture for Server {
    async fn device_configured(
        &self,
        user: &str,
        device: &str,
        extra: Option<Arc<dyn InvitationEvents>>,
        config: invitation_core::SessionConfig,
    ) -> Dev {
        let name = user.to_uppercase();
        let rec = Recorder::with_deadline(self.deadline());
        let inner: BoxTransport = match (self.3, &self.2) {
            (Via::WebSocket, None) => Arc::new(WsTransport::new(self.0.url())),
            (Via::WebSocket, Some(pki)) => {
                Arc::new(WsTransport::new(self.0.url()).tls(pki.client_tls()))
            }
            (Via::Http, None) => Arc::new(HttpTransport::new(format!("http://{}/", self.0.addr))),
            (Via::Http, Some(pki)) => Arc::new(
                HttpTransport::new(format!("https://{}/", self.0.addr)).tls(pki.client_tls()),
            ),
        };
        let (transport, link) = Breakable::new(inner);
        let client = handlers(Client::builder(), &rec, extra)
            .user(User::named(user, &name))
            .device(device)
            .token(self.0.token(user, &name))
            .session_config(config)
            .transport(transport)
            .backoff(Duration::from_millis(20), Duration::from_millis(200))
            .build()
            .unwrap();
        connected(client, rec, Some(link)).await
    }

    fn ring_s(&self) -> u32 {
        1 // the shortest ring there is
    }

    fn group_ring_s(&self) -> u32 {
        2
    }

    fn caller_gone_grace(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn paused(&self) -> bool {
        false
    }

    fn deadline(&self) -> Duration {
        crate::common::SOON
    }

    /// The client's socket is closed under it; the server sees it go.
    fn break_link(&self, dev: &Dev) {
        dev.link.as_ref().expect("a breakable link").break_link();
    }
}

fn handlers<T>(
    builder: invitation::ClientBuilder<T>,
    rec: &Recorder,
    extra: Option<Arc<dyn InvitationEvents>>,
) -> invitation::ClientBuilder<T> {
    let builder = builder.handler(rec.clone());
    match extra {
        Some(h) => builder.handler(h),
        None => builder,
    }
}

async fn connected(client: Client, rec: Recorder, link: Option<LinkBreaker>) -> Dev {
    client.connect().await.unwrap();
    Dev {
        user: client.user().id.clone(),
        device: client.device().clone(),
        client,
        rec,
        link,
    }
}

/// Breaks the current link of the transport it came with.
#[derive(Clone)]
pub struct LinkBreaker(Arc<watch::Sender<u64>>);

impl LinkBreaker {
    /// Closes the device's current connection, as a failing network would;
    /// the client is expected to notice and reconnect.
    pub fn break_link(&self) {
        self.0.send_modify(|n| *n += 1);
    }
}

/// A transport whose current connection a test can break.
struct Breakable {
    inner: BoxTransport,
    breaks: Arc<watch::Sender<u64>>,
}

impl Breakable {
    fn new(inner: BoxTransport) -> (Self, LinkBreaker) {
        let breaks = Arc::new(watch::Sender::new(0));
        let breaker = LinkBreaker(breaks.clone());
        (Self { inner, breaks }, breaker)
    }
}

#[async_trait]
impl Transport for Breakable {
    async fn connect(&self) -> Result<BoxConnection, TransportError> {
        let inner = self.inner.connect().await?;
        Ok(Box::new(BreakableConn {
            inner,
            breaks: self.breaks.subscribe(),
            broken: false,
        }))
    }
}

struct BreakableConn {
    inner: BoxConnection,
    breaks: watch::Receiver<u64>,
    broken: bool,
}

impl BreakableConn {
    async fn break_now(&mut self) -> TransportError {
        if !self.broken {
            self.broken = true;
            self.inner.close().await;
        }
        TransportError::closed("link broken by the test")
    }
}

#[async_trait]
impl Connection for BreakableConn {
    async fn send(&mut self, message: ClientMessage) -> Result<(), TransportError> {
        if self.broken || self.breaks.has_changed().unwrap_or(true) {
            return Err(self.break_now().await);
        }
        self.inner.send(message).await
    }

    async fn recv(&mut self) -> Result<ServerMessage, TransportError> {
        if self.broken {
            return Err(self.break_now().await);
        }
        tokio::select! {
            biased;
            _ = self.breaks.changed() => Err(self.break_now().await),
            m = self.inner.recv() => m,
        }
    }

    async fn close(&mut self) {
        self.inner.close().await;
    }
}

/// Waits (within the fixture's deadline) for the first event matching `f`
/// on `rx`; panics naming `what` and listing what did come.
pub async fn next_event(
    f: &impl Fixture,
    rx: &mut broadcast::Receiver<AppEvent>,
    what: &str,
    pred: impl Fn(&AppEvent) -> bool,
) -> AppEvent {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(f.deadline(), async {
        loop {
            let e = rx.recv().await.expect("event stream open");
            if pred(&e) {
                return e;
            }
            seen.push(e);
        }
    })
    .await;
    match found {
        Ok(e) => e,
        Err(_) => panic!(
            "no {what} within {:?}; the stream had: {seen:?}",
            f.deadline()
        ),
    }
}

/// The callbacks `dev` got, in order, each with its call: exactly `want`.
#[track_caller]
pub fn assert_callbacks(dev: &Dev, want: &[(Callback, &CallId)]) {
    let got: Vec<(Callback, CallId)> = dev
        .rec
        .records()
        .into_iter()
        .map(|r| {
            assert_eq!(
                Callback::of(&r.event),
                Some(r.callback),
                "the callback matches its event"
            );
            assert_eq!(r.event.call_id(), Some(&r.call_id));
            (r.callback, r.call_id)
        })
        .collect();
    let want: Vec<(Callback, CallId)> = want.iter().map(|(c, id)| (*c, (*id).clone())).collect();
    assert_eq!(got, want, "callbacks of {}/{}", dev.user, dev.device);
}

fn room() -> CustomData {
    CustomData::new("{\"room\":\"r1\"}").unwrap()
}

pub async fn invite(d: &Dev, callees: &[&str], timeout_s: u32) -> Invitation {
    d.client
        .invite_with(
            InviteRequest::new(
                callees.iter().map(|c| UserId::new(c).unwrap()).collect(),
                CallType::Video,
            )
            .with_custom_data(Some(room()))
            .with_timeout_s(Some(timeout_s)),
        )
        .await
        .unwrap()
}

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

// ---------------------------------------------------------------- flows

use Callback::*;

/// alice calls bob; bob accepts; alice hangs up.
pub async fn accept(f: &impl Fixture) {
    let alice = f.device("alice", "phone").await;
    let bob = f.device("bob", "phone").await;
    let mut bob_events = bob.client.events();
    let call = invite(&alice, &["bob"], 60).await.call_id;
    let r = bob.rec.wait_for(IncomingCallReceived, 1).await;
    assert_eq!(r.call_id, call);
    match r.event {
        AppEvent::IncomingCallReceived {
            caller,
            call_type,
            custom_data,
            callees,
            ..
        } => {
            assert_eq!(caller.id.as_str(), "alice");
            assert_eq!(&*caller.name, "ALICE");
            assert_eq!(call_type, CallType::Video);
            assert_eq!(custom_data, Some(room()));
            let ids: Vec<&str> = callees.iter().map(|u| u.id.as_str()).collect();
            assert_eq!(ids, ["bob"]);
        }
        other => panic!("{other:?}"),
    }
    bob.client.accept(&call).await.unwrap();
    bob.rec.wait_for(IncomingCallAcceptButtonPressed, 1).await;
    let r = alice.rec.wait_for(OutgoingCallAccepted, 1).await;
    assert!(
        matches!(r.event, AppEvent::OutgoingCallAccepted { ref callee, .. } if callee.as_str() == "bob")
    );
    assert_eq!(r.call_id, call);
    alice.client.hang_up(&call).await.unwrap();
    let ended = next_event(f, &mut bob_events, "call ended", |e| {
        matches!(e, AppEvent::CallEnded { .. })
    })
    .await;
    assert!(matches!(
        ended,
        AppEvent::CallEnded { ref call_id, reason: Reason::HungUp, .. } if *call_id == call
    ));
    assert_callbacks(
        &bob,
        &[
            (IncomingCallReceived, &call),
            (IncomingCallAcceptButtonPressed, &call),
        ],
    );
    assert_callbacks(&alice, &[(OutgoingCallAccepted, &call)]);
}

/// alice calls bob and cancels: bob is told why.
pub async fn cancel(f: &impl Fixture) {
    let alice = f.device("alice", "phone").await;
    let bob = f.device("bob", "phone").await;
    let call = invite(&alice, &["bob"], 60).await.call_id;
    bob.rec.wait_for(IncomingCallReceived, 1).await;
    let why = CustomData::new("{\"why\":\"wrong number\"}").unwrap();
    alice
        .client
        .cancel_with(&call, Some(why.clone()))
        .await
        .unwrap();
    alice.rec.wait_for(OutgoingCallCancelButtonPressed, 1).await;
    let r = bob.rec.wait_for(IncomingCallCanceled, 1).await;
    match r.event {
        AppEvent::IncomingCallCanceled {
            reason,
            caller,
            custom_data,
            ..
        } => {
            assert_eq!(reason, Reason::Canceled);
            assert_eq!(caller.id.as_str(), "alice");
            assert_eq!(
                custom_data,
                Some(why),
                "the cancel's data, not the invite's"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_callbacks(
        &bob,
        &[(IncomingCallReceived, &call), (IncomingCallCanceled, &call)],
    );
    assert_callbacks(&alice, &[(OutgoingCallCancelButtonPressed, &call)]);
}

/// Nobody answers: both sides time out, once, at the ring deadline.
pub async fn timeout(f: &impl Fixture) {
    let alice = f.device("alice", "phone").await;
    let bob = f.device("bob", "phone").await;
    let ring = Duration::from_secs(f.ring_s().into());
    let started = Instant::now();
    let call = invite(&alice, &["bob"], f.ring_s()).await.call_id;
    bob.rec.wait_for(IncomingCallReceived, 1).await;
    bob.rec.wait_for(IncomingCallTimeout, 1).await;
    let r = alice.rec.wait_for(OutgoingCallTimeout, 1).await;
    let took = started.elapsed();
    assert!(took >= ring, "{took:?}");
    if f.paused() {
        assert!(took < ring + Duration::from_secs(1), "{took:?}");
    }
    assert!(
        matches!(r.event, AppEvent::OutgoingCallTimeout { ref callee, .. } if callee.as_str() == "bob")
    );
    assert_eq!(bob.rec.count(IncomingCallTimeout), 1);
    assert_callbacks(
        &bob,
        &[(IncomingCallReceived, &call), (IncomingCallTimeout, &call)],
    );
    assert_callbacks(&alice, &[(OutgoingCallTimeout, &call)]);
}

/// bob declines.
pub async fn decline(f: &impl Fixture) {
    let alice = f.device("alice", "phone").await;
    let bob = f.device("bob", "phone").await;
    let call = invite(&alice, &["bob"], 60).await.call_id;
    bob.rec.wait_for(IncomingCallReceived, 1).await;
    bob.client.decline(&call).await.unwrap();
    let r = bob.rec.wait_for(IncomingCallDeclineButtonPressed, 1).await;
    assert!(matches!(
        r.event,
        AppEvent::IncomingCallDeclineButtonPressed { busy: false, .. }
    ));
    let r = alice.rec.wait_for(OutgoingCallDeclined, 1).await;
    assert!(
        matches!(r.event, AppEvent::OutgoingCallDeclined { ref callee, .. } if callee.as_str() == "bob")
    );
    assert_callbacks(
        &bob,
        &[
            (IncomingCallReceived, &call),
            (IncomingCallDeclineButtonPressed, &call),
        ],
    );
    assert_callbacks(&alice, &[(OutgoingCallDeclined, &call)]);
}

/// Busy twice: bob declares it, then the server decides it (bob is in a
/// call with carol) and bob never rings.
pub async fn busy(f: &impl Fixture) {
    let alice = f.device("alice", "phone").await;
    let bob = f.device("bob", "phone").await;
    let carol = f.device("carol", "phone").await;
    // bob declares busy
    let first = invite(&alice, &["bob"], 60).await.call_id;
    bob.rec.wait_for(IncomingCallReceived, 1).await;
    let later = CustomData::new("{\"call_back_in_s\":300}").unwrap();
    bob.client
        .decline_busy_with(&first, Some(later.clone()))
        .await
        .unwrap();
    let r = alice.rec.wait_for(OutgoingCallRejectedCauseBusy, 1).await;
    match r.event {
        AppEvent::OutgoingCallRejectedCauseBusy {
            callee,
            custom_data,
            ..
        } => {
            assert_eq!(callee.as_str(), "bob");
            assert_eq!(
                custom_data,
                Some(later),
                "the callee's data, not the invite's"
            );
        }
        other => panic!("{other:?}"),
    }
    // the server decides: bob is in a call with carol
    let with_carol = invite(&carol, &["bob"], 60).await.call_id;
    bob.rec.wait_for(IncomingCallReceived, 2).await;
    bob.client.accept(&with_carol).await.unwrap();
    bob.rec.wait_for(IncomingCallAcceptButtonPressed, 1).await;
    let busy = alice
        .client
        .invite(["bob"], CallType::Voice, None)
        .await
        .unwrap();
    assert_eq!(busy.callees[0].status, InitialStatus::Busy);
    let r = alice.rec.wait_for(OutgoingCallRejectedCauseBusy, 2).await;
    assert!(
        matches!(
            r.event,
            AppEvent::OutgoingCallRejectedCauseBusy {
                custom_data: None,
                ..
            }
        ),
        "a busy the server decided carries no data: {:?}",
        r.event
    );
    assert_eq!(
        bob.rec.count(IncomingCallReceived),
        2,
        "bob never rang for the busy call"
    );
    assert_callbacks(
        &alice,
        &[
            (OutgoingCallRejectedCauseBusy, &first),
            (OutgoingCallRejectedCauseBusy, &busy.call_id),
        ],
    );
    assert_callbacks(
        &bob,
        &[
            (IncomingCallReceived, &first),
            (IncomingCallDeclineButtonPressed, &first),
            (IncomingCallReceived, &with_carol),
            (IncomingCallAcceptButtonPressed, &with_carol),
        ],
    );
}

/// bob's phone answers: his laptop stops ringing, is told which device
/// answered, and cannot accept any more.
pub async fn answered_elsewhere(f: &impl Fixture) {
    let alice = f.device("alice", "phone").await;
    let phone = f.device("bob", "phone").await;
    let laptop = f.device("bob", "laptop").await;
    let mut laptop_events = laptop.client.events();
    let call = invite(&alice, &["bob"], 60).await.call_id;
    phone.rec.wait_for(IncomingCallReceived, 1).await;
    laptop.rec.wait_for(IncomingCallReceived, 1).await;
    phone.client.accept(&call).await.unwrap();
    let r = laptop.rec.wait_for(IncomingCallCanceled, 1).await;
    assert!(matches!(
        r.event,
        AppEvent::IncomingCallCanceled {
            reason: Reason::AnsweredElsewhere,
            ..
        }
    ));
    let elsewhere = next_event(f, &mut laptop_events, "answered elsewhere", |e| {
        matches!(e, AppEvent::AnsweredElsewhere { .. })
    })
    .await;
    assert!(matches!(
        elsewhere,
        AppEvent::AnsweredElsewhere { device: Some(ref d), .. } if *d == DeviceId::new("phone").unwrap()
    ));
    let late = laptop.client.accept(&call).await;
    assert!(matches!(
        late,
        Err(ClientError::Command(CommandError::Ended {
            reason: Reason::AnsweredElsewhere
        }))
    ));
    alice.rec.wait_for(OutgoingCallAccepted, 1).await;
    assert_eq!(alice.rec.count(OutgoingCallAccepted), 1);
    assert_callbacks(&alice, &[(OutgoingCallAccepted, &call)]);
    assert_callbacks(
        &phone,
        &[
            (IncomingCallReceived, &call),
            (IncomingCallAcceptButtonPressed, &call),
        ],
    );
    assert_callbacks(
        &laptop,
        &[(IncomingCallReceived, &call), (IncomingCallCanceled, &call)],
    );
}

/// bob is offline when invited; he rings when he connects, with the ring
/// time the server has left.
pub async fn offline_callee(f: &impl Fixture) {
    let alice = f.device("alice", "phone").await;
    let inv = invite(&alice, &["bob"], 60).await;
    assert_eq!(inv.callees[0].status, InitialStatus::Offline);
    if f.paused() {
        tokio::time::sleep(Duration::from_secs(10)).await; // bob is offline for 10 s
    }
    let bob = f.device("bob", "phone").await;
    let r = bob.rec.wait_for(IncomingCallReceived, 1).await;
    match r.event {
        AppEvent::IncomingCallReceived { ring_remaining, .. } => {
            if f.paused() {
                assert_eq!(
                    ring_remaining,
                    Duration::from_secs(50),
                    "server-relative time left"
                );
            } else {
                assert!(
                    ring_remaining > Duration::from_secs(50)
                        && ring_remaining <= Duration::from_secs(60),
                    "{ring_remaining:?}"
                );
            }
        }
        other => panic!("{other:?}"),
    }
    bob.client.accept(&inv.call_id).await.unwrap();
    alice.rec.wait_for(OutgoingCallAccepted, 1).await;
    assert_callbacks(
        &bob,
        &[
            (IncomingCallReceived, &inv.call_id),
            (IncomingCallAcceptButtonPressed, &inv.call_id),
        ],
    );
    assert_callbacks(&alice, &[(OutgoingCallAccepted, &inv.call_id)]);
}

/// One invitation, three callees, three outcomes, in the order they came.
pub async fn group_call(f: &impl Fixture) {
    let alice = f.device("alice", "phone").await;
    let bob = f.device("bob", "phone").await;
    let carol = f.device("carol", "phone").await;
    let dave = f.device("dave", "phone").await;
    let call = invite(&alice, &["bob", "carol", "dave"], f.group_ring_s())
        .await
        .call_id;
    for d in [&bob, &carol, &dave] {
        d.rec.wait_for(IncomingCallReceived, 1).await;
    }
    bob.client.accept(&call).await.unwrap();
    carol.client.decline(&call).await.unwrap();
    dave.rec.wait_for(IncomingCallTimeout, 1).await;
    alice.rec.wait_for(OutgoingCallTimeout, 1).await;
    let outcomes: Vec<(String, &str)> = alice
        .rec
        .records()
        .into_iter()
        .filter_map(|r| match r.event {
            AppEvent::OutgoingCallAccepted { callee, .. } => Some((callee.to_string(), "accepted")),
            AppEvent::OutgoingCallDeclined { callee, .. } => Some((callee.to_string(), "declined")),
            AppEvent::OutgoingCallTimeout { callee, .. } => Some((callee.to_string(), "timeout")),
            _ => None,
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("bob".into(), "accepted"),
            ("carol".into(), "declined"),
            ("dave".into(), "timeout")
        ]
    );
    assert_callbacks(
        &alice,
        &[
            (OutgoingCallAccepted, &call),
            (OutgoingCallDeclined, &call),
            (OutgoingCallTimeout, &call),
        ],
    );
    assert_callbacks(
        &dave,
        &[(IncomingCallReceived, &call), (IncomingCallTimeout, &call)],
    );
    assert_callbacks(
        &carol,
        &[
            (IncomingCallReceived, &call),
            (IncomingCallDeclineButtonPressed, &call),
        ],
    );
}

/// alice's app dies while bob rings: bob's ring ends as "caller gone", not
/// before the grace period.
pub async fn caller_gone(f: &impl Fixture) {
    let alice = f.device("alice", "phone").await;
    let bob = f.device("bob", "phone").await;
    let call = invite(&alice, &["bob"], 60).await.call_id;
    bob.rec.wait_for(IncomingCallReceived, 1).await;
    let started = Instant::now();
    alice.client.close().await; // alice's app dies
    let r = bob.rec.wait_for(IncomingCallCanceled, 1).await;
    assert!(matches!(
        r.event,
        AppEvent::IncomingCallCanceled {
            reason: Reason::CallerGone,
            ..
        }
    ));
    assert!(started.elapsed() >= f.caller_gone_grace());
    assert_callbacks(
        &bob,
        &[(IncomingCallReceived, &call), (IncomingCallCanceled, &call)],
    );
}

/// bob's link breaks while he rings: his client reconnects and resumes;
/// nothing is lost or doubled, and he can still accept.
pub async fn reconnect_while_ringing(f: &impl Fixture) {
    let alice = f.device("alice", "phone").await;
    let bob = f.device("bob", "phone").await;
    let call = invite(&alice, &["bob"], 60).await.call_id;
    bob.rec.wait_for(IncomingCallReceived, 1).await;
    let mut bob_events = bob.client.events();
    f.break_link(&bob);
    let back = next_event(f, &mut bob_events, "a reconnect", |e| {
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
    bob.client.accept(&call).await.unwrap();
    alice.rec.wait_for(OutgoingCallAccepted, 1).await;
    assert_eq!(bob.rec.count(IncomingCallReceived), 1, "no duplicate ring");
    assert_callbacks(
        &bob,
        &[
            (IncomingCallReceived, &call),
            (IncomingCallAcceptButtonPressed, &call),
        ],
    );
    assert_callbacks(&alice, &[(OutgoingCallAccepted, &call)]);
}

/// Accepts from inside the callback.
struct AutoAccept;

#[async_trait]
impl InvitationEvents for AutoAccept {
    async fn on_incoming_call_received(
        &self,
        ctx: &CallContext,
        _: &CallId,
        _: &User,
        _: CallType,
        _: &[User],
        _: Option<&CustomData>,
    ) {
        ctx.accept().await.expect("acting from a callback works");
    }
}

/// A handler that accepts from inside its callback does not deadlock.
pub async fn act_from_a_callback(f: &impl Fixture) {
    let alice = f.device("alice", "phone").await;
    let bob = f
        .device_with("bob", "phone", Some(Arc::new(AutoAccept)))
        .await;
    let call = invite(&alice, &["bob"], 60).await.call_id;
    alice.rec.wait_for(OutgoingCallAccepted, 1).await;
    bob.rec.wait_for(IncomingCallAcceptButtonPressed, 1).await;
    assert_callbacks(
        &bob,
        &[
            (IncomingCallReceived, &call),
            (IncomingCallAcceptButtonPressed, &call),
        ],
    );
}

/// Commands answer with typed errors.
pub async fn typed_command_results(f: &impl Fixture) {
    let alice = f.device("alice", "phone").await;
    let unknown = CallId::new("nope").unwrap();
    assert!(matches!(
        alice.client.accept(&unknown).await,
        Err(ClientError::Command(CommandError::NotFound))
    ));
    assert!(matches!(
        alice.client.invite(["bad id"], CallType::Voice, None).await,
        Err(ClientError::Invalid(_))
    ));
    assert!(matches!(
        alice.client.invite(["alice"], CallType::Voice, None).await,
        Err(ClientError::Command(CommandError::Rejected { .. }))
    ));
    alice.client.close().await;
    assert!(matches!(
        alice.client.cancel(&unknown).await,
        Err(ClientError::Closed)
    ));
    assert_callbacks(&alice, &[]);
}
