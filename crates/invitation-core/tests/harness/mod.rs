//! A test network: one switchboard, many client sessions, messages moved by
//! hand, time moved by hand. Each device records every app event and command
//! result it saw, so tests (and the property tests) can check what a handler
//! would have seen.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use std::sync::Arc;

use invitation_core::protocol::{Command, InviteRequest, ReplyResult, ServerMessage};
use invitation_core::switchboard::PushNotice;
use invitation_core::{
    AppEvent, AuthRefusal, Authenticator, CallId, CallRecord, CallType, ClientSession, CloseCause,
    CommandError, ConnId, ConnectionConfig, ConnectionOutput, DeviceConnection, DeviceId, Identity,
    Output, RequestId, SequentialCallIds, SessionConfig, Switchboard, SwitchboardConfig, User,
    UserId,
};

fn memory_link_config() -> ConnectionConfig {
    let mut config = ConnectionConfig::default();
    config.ping_every = None;
    config.max_in_flight = usize::MAX;
    config
}

/// The harness vouches for each device's user, as the memory hub does.
struct Vouch(User);

impl Authenticator for Vouch {
    fn authenticate(&self, _token: Option<&str>) -> Result<Identity, AuthRefusal> {
        Ok(Identity::new(self.0.clone(), None))
    }
}

pub type Key = (String, String);

pub fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

pub fn did(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

#[derive(Debug)]
pub struct Dev {
    pub session: ClientSession,
    pub conn: Option<ConnId>,
    /// The server side of the device's connection, while it has one.
    pub machine: Option<DeviceConnection>,
    pub events: Vec<(Instant, AppEvent)>,
    pub results: BTreeMap<RequestId, Result<ReplyResult, CommandError>>,
    /// Every server message received, in order.
    pub received: Vec<ServerMessage>,
    /// Drop server messages to this device while true (a dead link the
    /// switchboard has not noticed yet).
    pub deaf: bool,
}

impl Dev {
    pub fn app_events(&self) -> impl Iterator<Item = &AppEvent> {
        self.events.iter().map(|(_, e)| e)
    }
}

pub struct Net {
    pub sb: Switchboard,
    pub t0: Instant,
    pub now: Instant,
    pub devs: BTreeMap<Key, Dev>,
    pub session_config: SessionConfig,
    /// Duplicate every client command this many extra times.
    pub dup_commands: usize,
    /// Lose this many of the next client commands (a lossy uplink).
    pub lose_commands: usize,
    /// Lose this many of the next server messages to a device.
    pub lose_messages: BTreeMap<Key, usize>,
    /// Every call record (records are on in the harness), taken as
    /// messages are delivered.
    pub records: Vec<CallRecord>,
    /// Every push the switchboard asked for, with the time it did (taken
    /// after every input: they are cleared at the next).
    pub pushes: Vec<(Instant, PushNotice)>,
    direct_counter: u64,
    next_conn: u64,
    conn_config: Arc<ConnectionConfig>,
}

impl Net {
    pub fn new() -> Self {
        Self::with_config(SwitchboardConfig::default())
    }

    pub fn with_config(mut config: SwitchboardConfig) -> Self {
        config.call_records = true;
        #[allow(clippy::disallowed_methods)] // the origin of test time
        let t0 = Instant::now();
        Self {
            sb: Switchboard::new(config, SequentialCallIds::default()),
            t0,
            now: t0,
            devs: BTreeMap::new(),
            session_config: SessionConfig::default(),
            dup_commands: 0,
            lose_commands: 0,
            lose_messages: BTreeMap::new(),
            records: Vec::new(),
            pushes: Vec::new(),
            direct_counter: 0,
            next_conn: 1,
            // In-process links cannot die silently: no heartbeats.
            conn_config: Arc::new(memory_link_config()),
        }
    }

    fn key(user: &str, device: &str) -> Key {
        (user.to_owned(), device.to_owned())
    }

    pub fn dev(&self, user: &str, device: &str) -> &Dev {
        &self.devs[&Self::key(user, device)]
    }

    pub fn dev_mut(&mut self, user: &str, device: &str) -> &mut Dev {
        self.devs.get_mut(&Self::key(user, device)).unwrap()
    }

    /// Connects (or reconnects, resuming) a device, then delivers everything.
    pub fn connect(&mut self, user: &str, device: &str) {
        let key = Self::key(user, device);
        let now = self.now;
        let cfg = self.session_config.clone();
        let dev = self.devs.entry(key.clone()).or_insert_with(|| Dev {
            session: ClientSession::new(uid(user), did(device), &format!("{user}{device}"), cfg),
            conn: None,
            machine: None,
            events: Vec::new(),
            results: BTreeMap::new(),
            received: Vec::new(),
            deaf: false,
        });
        if let Some(mut old) = dev.machine.take() {
            dev.session.handle_disconnected(now);
            old.handle_transport_closed();
            let conn = dev.conn.take().expect("a machine has a conn");
            self.run_machine(conn, &mut old);
        }
        let dev = self.devs.get_mut(&key).unwrap();
        dev.deaf = false;
        dev.session.handle_connected(now, None);
        let hello = dev.session.poll_transmit().expect("hello first");
        let conn = ConnId::new(self.next_conn);
        self.next_conn += 1;
        let mut machine = DeviceConnection::new(now, self.conn_config.clone());
        let vouch = Vouch(User::named(user, &user.to_uppercase()));
        machine.handle_text(now, &hello.encode(), &vouch);
        let dev = self.devs.get_mut(&key).unwrap();
        dev.conn = Some(conn);
        dev.machine = Some(machine);
        self.pump();
    }

    /// The link of a device goes down (the switchboard notices at once).
    pub fn disconnect(&mut self, user: &str, device: &str) {
        let now = self.now;
        let dev = self.dev_mut(user, device);
        if let Some(mut machine) = dev.machine.take() {
            dev.session.handle_disconnected(now);
            let conn = dev.conn.take().expect("a machine has a conn");
            machine.handle_transport_closed();
            self.run_machine(conn, &mut machine);
        }
        self.pump();
    }

    /// Drains a machine that is no longer attached to its device (closing).
    fn run_machine(&mut self, conn: ConnId, machine: &mut DeviceConnection) {
        while let Some(out) = machine.poll_output() {
            if let ConnectionOutput::Switchboard(input) = out {
                self.sb.handle_input(self.now, conn, input);
                self.take_pushes();
            }
        }
    }

    /// Issues a command from a device; delivers everything; returns its id.
    pub fn command(&mut self, user: &str, device: &str, command: Command) -> RequestId {
        let now = self.now;
        let id = self.dev_mut(user, device).session.command(now, command);
        self.pump();
        id
    }

    /// Sends a command straight to the switchboard (bypassing the client
    /// session) and returns the switchboard's typed answer.
    pub fn direct(
        &mut self,
        user: &str,
        device: &str,
        command: Command,
    ) -> Result<ReplyResult, CommandError> {
        let conn = self.dev(user, device).conn.expect("connected");
        let now = self.now;
        self.direct_counter += 1;
        let id = RequestId::new(format!("direct{}", self.direct_counter)).unwrap();
        let r = self.sb.handle_command(now, conn, id, command);
        self.take_pushes();
        self.pump();
        r
    }

    pub fn direct_invite(
        &mut self,
        user: &str,
        device: &str,
        callees: &[&str],
        timeout_s: Option<u32>,
    ) -> Result<ReplyResult, CommandError> {
        self.direct(
            user,
            device,
            Command::Invite(
                InviteRequest::new(callees.iter().map(|c| uid(c)).collect(), CallType::Voice)
                    .with_timeout_s(timeout_s),
            ),
        )
    }

    pub fn result(
        &self,
        user: &str,
        device: &str,
        id: &RequestId,
    ) -> Result<ReplyResult, CommandError> {
        self.dev(user, device)
            .results
            .get(id)
            .cloned()
            .unwrap_or_else(|| panic!("no result for {id} on {user}/{device}"))
    }

    pub fn invite(
        &mut self,
        user: &str,
        device: &str,
        callees: &[&str],
        timeout_s: Option<u32>,
    ) -> Result<CallId, CommandError> {
        let id = self.command(
            user,
            device,
            Command::Invite(
                InviteRequest::new(callees.iter().map(|c| uid(c)).collect(), CallType::Voice)
                    .with_custom_data(Some(
                        invitation_core::CustomData::new("{\"room\":1}").unwrap(),
                    ))
                    .with_timeout_s(timeout_s),
            ),
        );
        match self.result(user, device, &id)? {
            ReplyResult::Invited { call_id, .. } | ReplyResult::Joined { call_id, .. } => {
                Ok(call_id)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Sends `command` from `user`'s `device` and returns its answer.
    pub fn act(
        &mut self,
        user: &str,
        device: &str,
        command: Command,
    ) -> Result<ReplyResult, CommandError> {
        let id = self.command(user, device, command);
        self.result(user, device, &id)
    }

    pub fn accept(
        &mut self,
        user: &str,
        device: &str,
        call: &CallId,
    ) -> Result<ReplyResult, CommandError> {
        self.act(user, device, Command::accept(call.clone()))
    }

    pub fn decline(
        &mut self,
        user: &str,
        device: &str,
        call: &CallId,
        busy: bool,
    ) -> Result<ReplyResult, CommandError> {
        self.act(user, device, Command::decline(call.clone(), busy))
    }

    pub fn cancel(
        &mut self,
        user: &str,
        device: &str,
        call: &CallId,
    ) -> Result<ReplyResult, CommandError> {
        self.act(user, device, Command::cancel(call.clone()))
    }

    pub fn hang_up(
        &mut self,
        user: &str,
        device: &str,
        call: &CallId,
    ) -> Result<ReplyResult, CommandError> {
        self.act(user, device, Command::hang_up(call.clone()))
    }

    /// `add`: rings more users into a running call.
    pub fn add(
        &mut self,
        user: &str,
        device: &str,
        call: &CallId,
        callees: &[&str],
    ) -> Result<ReplyResult, CommandError> {
        let callees = callees.iter().map(|c| uid(c)).collect();
        self.act(
            user,
            device,
            Command::Add {
                call_id: call.clone(),
                callees,
            },
        )
    }

    /// `join`: enters a running call late.
    pub fn join(
        &mut self,
        user: &str,
        device: &str,
        call: &CallId,
    ) -> Result<ReplyResult, CommandError> {
        let call_id = call.clone();
        self.act(user, device, Command::Join { call_id })
    }

    /// `end`: ends a call for everyone.
    pub fn end(
        &mut self,
        user: &str,
        device: &str,
        call: &CallId,
    ) -> Result<ReplyResult, CommandError> {
        let call_id = call.clone();
        self.act(user, device, Command::End { call_id })
    }

    pub fn wire_events(&self, user: &str, device: &str, from: usize) -> Vec<serde_json::Value> {
        self.dev(user, device).received[from..]
            .iter()
            .filter_map(|m| match &m.body {
                invitation_core::protocol::ServerBody::Event { event, .. } => {
                    Some(serde_json::to_value(event).unwrap())
                }
                _ => None,
            })
            .collect()
    }

    /// How many messages a device received so far (a mark for
    /// [`Net::wire_events`]).
    pub fn mark(&self, user: &str, device: &str) -> usize {
        self.dev(user, device).received.len()
    }

    /// Moves time forward by `d`, firing every server and client timer in
    /// deadline order on the way.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next = std::iter::once(self.sb.poll_timeout())
                .chain(self.devs.values().map(|d| d.session.poll_timeout()))
                .flatten()
                .filter(|t| *t <= end)
                .min();
            let Some(t) = next else { break };
            self.now = self.now.max(t);
            let now = self.now;
            self.sb.handle_timeout(now);
            self.take_pushes();
            for dev in self.devs.values_mut() {
                dev.session.handle_timeout(now);
            }
            self.pump();
        }
        self.now = end;
        self.sb.handle_timeout(end);
        self.take_pushes();
        for dev in self.devs.values_mut() {
            dev.session.handle_timeout(end);
        }
        self.pump();
    }

    /// Keeps the pushes of the input just handled.
    pub fn take_pushes(&mut self) {
        while let Some(p) = self.sb.poll_push() {
            self.pushes.push((self.now, p));
        }
    }

    /// Delivers messages both ways until nothing moves.
    pub fn pump(&mut self) {
        loop {
            let mut moved = false;
            let now = self.now;
            // client -> connection machine -> switchboard
            let keys: Vec<Key> = self.devs.keys().cloned().collect();
            for key in &keys {
                let dev = self.devs.get_mut(key).unwrap();
                let (Some(conn), Some(mut machine)) = (dev.conn, dev.machine.take()) else {
                    continue;
                };
                let vouch = Vouch(User::named(&key.0, &key.0.to_uppercase()));
                while let Some(msg) = dev.session.poll_transmit() {
                    moved = true;
                    if self.lose_commands > 0 {
                        self.lose_commands -= 1;
                        continue;
                    }
                    // Through JSON text: the wire is part of the system.
                    let wire = msg.encode();
                    for _ in 0..=self.dup_commands {
                        machine.handle_text(now, &wire, &vouch);
                    }
                }
                let mut closed = false;
                while let Some(out) = machine.poll_output() {
                    moved = true;
                    match out {
                        ConnectionOutput::Send(message) => {
                            machine.handle_sent(&message);
                            self.deliver(key, message);
                        }
                        ConnectionOutput::Switchboard(input) => {
                            self.sb.handle_input(now, conn, input);
                            self.take_pushes();
                        }
                        ConnectionOutput::Close(_) => closed = true,
                        _ => {}
                    }
                }
                let dev = self.devs.get_mut(key).unwrap();
                if closed {
                    dev.conn = None;
                    dev.session.handle_disconnected(now);
                } else {
                    dev.machine = Some(machine);
                }
            }
            // switchboard -> connection machines -> clients
            while let Some(out) = self.sb.poll_output() {
                moved = true;
                let (conn, message, close) = match out {
                    Output::Send { conn, message } => (conn, Some(message), None),
                    Output::Close { conn, reason } => (conn, None, Some(reason)),
                };
                let Some(key) = self
                    .devs
                    .iter()
                    .find(|(_, d)| d.conn == Some(conn))
                    .map(|(k, _)| k.clone())
                else {
                    continue;
                };
                if let Some(message) = message {
                    if let Some(m) = self.devs.get_mut(&key).unwrap().machine.as_mut() {
                        m.handle_sent(&message);
                    }
                    self.deliver(&key, message);
                }
                if let Some(reason) = close {
                    let dev = self.devs.get_mut(&key).unwrap();
                    if let Some(m) = dev.machine.as_mut() {
                        m.close(CloseCause::from_reason(reason));
                    }
                }
            }
            // session outputs
            for dev in self.devs.values_mut() {
                while let Some(e) = dev.session.poll_event() {
                    dev.events.push((now, e));
                }
                while let Some((id, r)) = dev.session.poll_completion() {
                    dev.results.insert(id, r);
                }
            }
            while let Some(r) = self.sb.poll_record() {
                self.records.push(r);
            }
            if !moved {
                break;
            }
        }
    }

    /// A server message reaches a device (unless its link is deaf or lossy),
    /// through JSON text.
    fn deliver(&mut self, key: &Key, message: ServerMessage) {
        let now = self.now;
        let wire = ServerMessage::decode(&message.encode(), &Default::default()).unwrap();
        let Some(dev) = self.devs.get_mut(key) else {
            return;
        };
        if dev.deaf {
            return;
        }
        if let Some(n) = self.lose_messages.get_mut(key).filter(|n| **n > 0) {
            *n -= 1;
            return;
        }
        dev.received.push(wire.clone());
        dev.session.handle_message(now, wire);
    }

    /// Names of the app events a device saw (callbacks and extras), in order.
    pub fn names(&self, user: &str, device: &str) -> Vec<&'static str> {
        self.dev(user, device)
            .app_events()
            .map(event_name)
            .filter(|n| *n != "connection" && *n != "resynced")
            .collect()
    }
}

pub use invitation_core::testing::oracle::event_name;
