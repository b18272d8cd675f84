//! A scriptable server for unit-testing handlers: no hub, no sockets.
//!
//! The test holds the [`MockServer`] and plays the server's part: it pushes
//! events (an incoming call, a callee's outcome, a timeout ...) and inspects
//! the commands the client sent. By default the mock also answers commands
//! the way a lenient server would (see [`MockServer::set_auto_reply`]), so a
//! test only scripts what it is about.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use invitation_core::protocol::{ClientBody, ClientMessage, Control, ServerBody};
//! use invitation_core::{DeviceId, RequestId};
//! use invitation_transport::{Transport, mock};
//!
//! let (transport, mut server) = mock::pair();
//! let mut conn = transport.connect().await.unwrap();
//! let hello = Control::Hello { device: DeviceId::new("phone").unwrap(), token: None, last_seq: None };
//! conn.send(ClientMessage::new(RequestId::new("h1").unwrap(), hello)).await.unwrap();
//! assert!(matches!(conn.recv().await.unwrap().body, ServerBody::Welcome { .. }));
//! assert!(matches!(server.next_command().await.body, ClientBody::Control(Control::Hello { .. })));
//! # }
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use invitation_core::protocol::{
    CalleeStatus, ClientBody, ClientMessage, CloseReason, Command, Control, ErrorBody, Event,
    InitialStatus, ReplyResult, ServerBody, ServerMessage, SyncBody,
};
use invitation_core::{
    CallId, CallType, CommandError, CustomData, DeviceId, Reason, RequestId, User, UserId,
};
use tokio::sync::mpsc;

use crate::{BoxConnection, Connection, Transport, TransportError};

/// A mock transport and the server side that scripts it.
pub fn pair() -> (MockTransport, MockServer) {
    pair_as(User::named("me", "Me"))
}

/// The same, for a given user (the identity the mock's `welcome` reports).
pub fn pair_as(user: User) -> (MockTransport, MockServer) {
    let (commands_tx, commands_rx) = mpsc::unbounded_channel();
    let state = Arc::new(Mutex::new(State {
        user,
        to_client: None,
        commands_tx,
        log: Vec::new(),
        seq: 0,
        auto_reply: true,
        next_call: 1,
        connections: 0,
    }));
    (
        MockTransport {
            state: state.clone(),
        },
        MockServer {
            state,
            commands: commands_rx,
        },
    )
}

struct State {
    user: User,
    to_client: Option<mpsc::UnboundedSender<ServerMessage>>,
    commands_tx: mpsc::UnboundedSender<ClientMessage>,
    log: Vec<ClientMessage>,
    seq: u64,
    auto_reply: bool,
    next_call: u64,
    connections: usize,
}

impl State {
    fn push(&mut self, body: ServerBody) {
        if let Some(tx) = &self.to_client {
            let _ = tx.send(ServerMessage::new(body));
        }
    }

    fn event(&mut self, event: Event) -> u64 {
        self.seq += 1;
        let seq = self.seq;
        self.push(ServerBody::event(seq, event));
        seq
    }

    /// What a lenient server answers to connection-level messages.
    fn auto_control(&mut self, re: RequestId, control: &Control) {
        let seq = self.seq;
        match control {
            Control::Hello { device, .. } => {
                let user = self.user.clone();
                self.push(ServerBody::Welcome {
                    re: Some(re),
                    user,
                    device: device.clone(),
                    seq,
                    resumed: false,
                });
                self.push(ServerBody::Sync(SyncBody::new(
                    None,
                    seq,
                    Vec::new(),
                    Vec::new(),
                )));
            }
            Control::Ping => self.push(ServerBody::Pong {
                re: Some(re),
                seq: Some(seq),
            }),
            Control::Sync => self.push(ServerBody::Sync(SyncBody::new(
                Some(re),
                seq,
                Vec::new(),
                Vec::new(),
            ))),
            Control::Renew { .. } => self.push(ServerBody::Reply {
                re,
                result: ReplyResult::Done,
            }),
            _ => {}
        }
    }

    /// What a lenient server answers.
    fn auto(&mut self, message: &ClientMessage) {
        let re = message.id.clone();
        let command = match &message.body {
            // A device receipt is never answered.
            ClientBody::Command(Command::Received { .. }) => return,
            ClientBody::Command(c) => c,
            ClientBody::Control(control) => return self.auto_control(re, control),
        };
        let result = match command {
            Command::Invite(req) => {
                let call_id =
                    CallId::new(format!("mock-call-{}", self.next_call)).expect("valid call id");
                self.next_call += 1;
                ReplyResult::Invited {
                    call_id,
                    ring_remaining_ms: u64::from(req.timeout_s.unwrap_or(60)) * 1000,
                    callees: req
                        .callees
                        .iter()
                        .map(|u| CalleeStatus::new(u.clone(), InitialStatus::Ringing))
                        .collect(),
                }
            }
            _ => ReplyResult::Done,
        };
        self.push(ServerBody::Reply { re, result });
    }
}

/// The client half: hand it to the client builder.
#[derive(Clone)]
pub struct MockTransport {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for MockTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockTransport").finish_non_exhaustive()
    }
}

#[async_trait]
impl Transport for MockTransport {
    async fn connect(&self) -> Result<BoxConnection, TransportError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = self.state.lock().expect("mock state");
        state.to_client = Some(tx);
        state.connections += 1;
        Ok(Box::new(MockConnection {
            state: self.state.clone(),
            rx,
            closed: false,
        }))
    }
}

struct MockConnection {
    state: Arc<Mutex<State>>,
    rx: mpsc::UnboundedReceiver<ServerMessage>,
    closed: bool,
}

#[async_trait]
impl Connection for MockConnection {
    async fn send(&mut self, message: ClientMessage) -> Result<(), TransportError> {
        if self.closed || self.rx.is_closed() {
            return Err(TransportError::closed("mock connection closed"));
        }
        let mut state = self.state.lock().expect("mock state");
        state.log.push(message.clone());
        if state.auto_reply {
            state.auto(&message);
        }
        let _ = state.commands_tx.send(message);
        Ok(())
    }

    async fn recv(&mut self) -> Result<ServerMessage, TransportError> {
        self.rx
            .recv()
            .await
            .ok_or_else(|| TransportError::closed("mock server closed the connection"))
    }

    async fn close(&mut self) {
        self.closed = true;
        self.rx.close();
    }
}

/// The server half, held by the test.
pub struct MockServer {
    state: Arc<Mutex<State>>,
    commands: mpsc::UnboundedReceiver<ClientMessage>,
}

impl std::fmt::Debug for MockServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockServer").finish_non_exhaustive()
    }
}

impl MockServer {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().expect("mock state"))
    }

    /// Answer commands automatically (default: on): `hello` gets `welcome`
    /// and an empty `sync`, `invite` gets `invited` with a fresh call id
    /// (`mock-call-1`, ...) and every callee ringing, other commands `done`.
    /// Off: the test answers with [`MockServer::reply`] and friends.
    pub fn set_auto_reply(&self, on: bool) {
        self.with(|s| s.auto_reply = on);
    }

    /// The next command the client sent (including `hello`, `ping` ...).
    pub async fn next_command(&mut self) -> ClientMessage {
        self.commands
            .recv()
            .await
            .expect("the mock server outlives its transport")
    }

    /// The next call command (`invite`, `accept`, `decline`, `cancel`,
    /// `hang_up`), skipping connection housekeeping and the `received`
    /// receipts the client sends by itself for every invitation that rings.
    pub async fn next_call_command(&mut self) -> ClientMessage {
        loop {
            let m = self.next_command().await;
            if matches!(m.body, ClientBody::Command(ref c) if !matches!(c, Command::Received { .. }))
            {
                return m;
            }
        }
    }

    /// Every command sent so far, in order.
    pub fn commands(&self) -> Vec<ClientMessage> {
        self.with(|s| s.log.clone())
    }

    /// How many connections the client opened.
    pub fn connections(&self) -> usize {
        self.with(|s| s.connections)
    }

    /// Sends any server message.
    pub fn push(&self, body: ServerBody) {
        self.with(|s| s.push(body));
    }

    /// Sends an event with the next sequence number; returns that number.
    pub fn event(&self, event: Event) -> u64 {
        self.with(|s| s.event(event))
    }

    /// Answers a command with success.
    pub fn reply(&self, re: &RequestId, result: ReplyResult) {
        self.push(ServerBody::Reply {
            re: re.clone(),
            result,
        });
    }

    /// Answers a command with a refusal.
    pub fn reply_error(&self, re: &RequestId, error: &CommandError) {
        self.push(ServerBody::Error(ErrorBody::from_command(
            Some(re.clone()),
            error,
        )));
    }

    /// An invitation arrives for this user.
    pub fn incoming_call(
        &self,
        call_id: &CallId,
        caller: &User,
        call_type: CallType,
        custom_data: Option<&str>,
        ring: Duration,
    ) -> u64 {
        let me = self.with(|s| s.user.clone());
        let ms = u64::try_from(ring.as_millis()).unwrap_or(u64::MAX);
        self.event(Event::IncomingCall {
            call_id: call_id.clone(),
            caller: caller.clone(),
            call_type,
            callees: vec![me].into(),
            custom_data: custom_data.map(|d| CustomData::new(d).expect("custom data within 8 KiB")),
            ring_remaining_ms: ms,
            ring_timeout_ms: ms,
        })
    }

    /// Ringing stops for this user (canceled, timeout, answered on `device` ...).
    pub fn incoming_ended(
        &self,
        call_id: &CallId,
        reason: Reason,
        device: Option<&DeviceId>,
    ) -> u64 {
        self.event(Event::IncomingEnded {
            call_id: call_id.clone(),
            reason,
            device: device.cloned(),
            custom_data: None,
        })
    }

    /// A callee of this user's outgoing call reached an outcome.
    pub fn callee_outcome(&self, call_id: &CallId, callee: &UserId, reason: Reason) -> u64 {
        self.event(Event::CalleeOutcome {
            call_id: call_id.clone(),
            callee: callee.clone(),
            reason,
            custom_data: None,
        })
    }

    /// The call is over for this user.
    pub fn call_ended(&self, call_id: &CallId, reason: Reason) -> u64 {
        self.event(Event::CallEnded {
            call_id: call_id.clone(),
            reason,
            custom_data: None,
        })
    }

    /// Closes the current connection from the server side (the client will
    /// reconnect).
    pub fn disconnect(&self) {
        self.with(|s| {
            s.push(ServerBody::Closing {
                reason: CloseReason::ShuttingDown,
            });
            s.to_client = None;
        });
    }
}
