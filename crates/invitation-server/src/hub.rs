//! The one task that owns the `Switchboard`. Connection tasks send it
//! commands; it answers through each connection's bounded queue. A
//! connection whose queue is full is dropped (it does not read), so server
//! memory stays flat whatever a client does.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use invitation_core::protocol::{
    CloseReason, Command, ErrorBody, Event, ReplyResult, ServerBody, ServerMessage,
};
use invitation_core::{
    CallId, CallIdGenerator, CallNotice, CommandError, ConnId, Output, RequestId, Switchboard,
    SwitchboardConfig, SwitchboardInput, UserId,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::limits::HubLimits;
use crate::metrics::{Metrics, Refusal};
use crate::outbox::{Outbox, PushError};

/// What the write of a message is timed against, for the metrics.
#[derive(Debug, Clone, Copy)]
pub enum Stamp {
    /// Not timed.
    None,
    /// An `incoming_call`: when the invite that caused it was read.
    Ring(Instant),
    /// Caused by timers: the earliest deadline of the batch that fired.
    Timer(Instant),
}

/// A message for a connection, with what its write is timed against.
#[derive(Debug)]
pub struct Queued {
    /// The message.
    pub message: ServerMessage,
    /// For the ring-latency and timer-lateness histograms.
    pub stamp: Stamp,
}

/// What a connection task receives from the hub. 16 bytes: a queue's slots
/// are allocated 32 at a time when the queue is made, so every idle
/// connection pays for 32 of them.
#[derive(Debug)]
pub enum Outbound {
    /// Send this message.
    Message(Box<Queued>),
    /// Say why and close.
    Close(CloseReason),
}

/// What connection tasks send to the hub: their connection machine's
/// switchboard inputs.
#[derive(Debug)]
pub enum HubMsg {
    /// An authenticated device joins (`input` is the machine's `Connect`).
    Open {
        /// The connection.
        conn: ConnId,
        /// Where to send its messages.
        tx: Arc<Outbox>,
        /// The `Connect`.
        input: SwitchboardInput,
    },
    /// The server is stopping: end every live call (its state is not kept)
    /// and queue the news to every connection, then answer.
    Shutdown {
        /// Answered once the news is queued.
        done: tokio::sync::oneshot::Sender<()>,
    },
    /// Any other input (a command, a `sync`, the device leaving), with the
    /// time it was read.
    Input {
        /// The connection.
        conn: ConnId,
        /// What the machine hands over.
        input: SwitchboardInput,
        /// When it was read off the socket.
        at: Instant,
    },
}

/// Unguessable call ids (`c-` + 32 hex digits from the OS CSPRNG), drawn
/// from a refilled pool so most ids cost no system call.
pub(crate) struct RandomCallIds {
    pool: Vec<u8>,
    pos: usize,
}

impl RandomCallIds {
    /// An empty pool (filled on first use).
    pub(crate) fn new() -> Self {
        Self {
            pool: vec![0; 4096],
            pos: 4096,
        }
    }
}

impl Default for RandomCallIds {
    fn default() -> Self {
        Self::new()
    }
}

impl CallIdGenerator for RandomCallIds {
    fn next_call_id(&mut self) -> CallId {
        if self.pos + 16 > self.pool.len() {
            getrandom::fill(&mut self.pool).expect("the OS has randomness");
            self.pos = 0;
        }
        let bytes = &self.pool[self.pos..self.pos + 16];
        self.pos += 16;
        let mut s = String::with_capacity(34);
        s.push_str("c-");
        for b in bytes {
            s.push(char::from_digit(u32::from(b >> 4), 16).expect("hex"));
            s.push(char::from_digit(u32::from(b & 15), 16).expect("hex"));
        }
        CallId::new(s).expect("valid call id")
    }
}

struct Link {
    tx: Arc<Outbox>,
    user: UserId,
}

/// The hub task's state.
pub(crate) struct Hub {
    sb: Switchboard,
    links: HashMap<ConnId, Link>,
    limits: HubLimits,
    shed_after: Option<Duration>,
    metrics: Arc<Metrics>,
    /// Scratch for [`Hub::drain`] (kept to reuse its allocation).
    deferred: Vec<ServerMessage>,
}

/// Inbox messages handled per hub turn (one `select!` for all of them).
const HUB_BATCH: usize = 64;

/// How long a client is told to wait after a shed invitation.
const SHED_RETRY_AFTER_MS: u64 = 1000;

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

impl Hub {
    /// A hub with these switchboard settings, per-user and per-connection
    /// limits and load shedding threshold (new invites are refused while the
    /// scheduler lags, or an invite waited, longer than it).
    pub(crate) fn new(
        config: SwitchboardConfig,
        limits: HubLimits,
        shed_after: Option<Duration>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            sb: Switchboard::new(config, RandomCallIds::new()),
            links: HashMap::new(),
            limits,
            shed_after,
            metrics,
            deferred: Vec::new(),
        }
    }

    /// The `unavailable` answer to a new invitation the server will not
    /// take, counted. Also used by connection tasks when the hub's inbox is
    /// full.
    pub(crate) fn shed_reply(metrics: &Metrics, re: RequestId) -> ServerMessage {
        metrics.invites_shed.fetch_add(1, Ordering::Relaxed);
        let error = CommandError::Unavailable {
            retry_after_ms: SHED_RETRY_AFTER_MS,
        };
        ServerMessage::new(ServerBody::Error(ErrorBody::from_command(Some(re), &error)))
    }

    /// Load shedding, the SIP way (a 503 for new INVITEs, in-dialog requests
    /// go through): when a new invitation has waited in the inbox longer than
    /// the threshold, or ready tasks wait that long for their turn
    /// (scheduler lag), the server is behind, and taking more calls would
    /// make every call late. Accept, decline, cancel and hang-up are never
    /// shed: they finish calls and free capacity.
    fn shed(&self, command: &Command, read_at: Instant) -> bool {
        matches!(command, Command::Invite(_))
            && self.shed_after.is_some_and(|limit| {
                read_at.elapsed() > limit || self.metrics.scheduler_lag() > limit
            })
    }

    /// Runs until every sender is gone.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<HubMsg>) {
        // One timer, registered once and moved only when the switchboard's
        // next deadline changes (not re-created for every message).
        let timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        let mut batch = Vec::with_capacity(HUB_BATCH);
        loop {
            let deadline = self.sb.poll_timeout().map(Instant::from_std);
            if deadline != armed {
                if let Some(d) = deadline {
                    timer.as_mut().reset(d);
                }
                armed = deadline;
            }
            tokio::select! {
                n = rx.recv_many(&mut batch, HUB_BATCH) => {
                    if n == 0 {
                        break;
                    }
                    for msg in batch.drain(..) {
                        // Timers due first, at the same instant as the
                        // message, so their events are timed (the
                        // switchboard would otherwise fire them inside this
                        // message's call, unstamped).
                        let now = now();
                        self.fire_due_timers(now);
                        self.handle(msg, now);
                    }
                }
                () = &mut timer, if armed.is_some() => {
                    self.fire_due_timers(now());
                    armed = None; // re-armed from the next deadline
                }
            }
            let stats = self.sb.stats();
            self.metrics
                .set_switchboard(stats.invitations, &stats.outcomes);
        }
        tracing::info!("hub stopped");
    }

    fn fire_due_timers(&mut self, now: std::time::Instant) {
        if let Some(deadline) = self.sb.poll_timeout() {
            if deadline <= now {
                self.sb.handle_timeout(now);
                self.drain(Cause::Timer(Instant::from_std(deadline)), None);
            }
        }
    }

    fn handle(&mut self, msg: HubMsg, now: std::time::Instant) {
        match msg {
            HubMsg::Open { conn, tx, input } => {
                let SwitchboardInput::Connect { user, device, .. } = &input else {
                    return;
                };
                let user = user.id.clone();
                let online = self.sb.online_devices(&user);
                if !self
                    .limits
                    .device_allowed(online.len(), online.contains(device))
                {
                    // Refused before the switchboard sees it: the user's
                    // other devices are untouched.
                    let max = self.limits.max_devices();
                    tracing::info!(%user, %device, max, "too many devices online: refused");
                    self.metrics.refused(Refusal::Devices);
                    tx.close(Some(Outbound::Close(CloseReason::TooManyDevices)));
                    return;
                }
                self.links.insert(conn, Link { tx, user });
                self.sb.handle_input(now, conn, input);
                self.drain(Cause::Other, None);
            }
            HubMsg::Input {
                conn,
                input: SwitchboardInput::Command { id, command },
                at,
            } => {
                let Some(link) = self.links.get(&conn) else {
                    return;
                };
                if self.shed(&command, at) {
                    let reply = Self::shed_reply(&self.metrics, id);
                    self.push(conn, reply, Stamp::None);
                    return;
                }
                // Every command is paid for, per connection and per user
                // (invites once more); a refused one reaches nothing.
                {
                    let charged = self
                        .limits
                        .charge(&link.user, Some(&command), at.into_std());
                    if let Err(wait) = charged {
                        self.rate_limited(conn, id, wait);
                        return;
                    }
                }
                let cause = match command {
                    Command::Invite(_) => Cause::Invite(at),
                    _ => Cause::Other,
                };
                // What the `command` debug line needs, taken only when that
                // line is on: nothing is cloned on the hot path otherwise.
                let traced = tracing::enabled!(tracing::Level::DEBUG)
                    .then(|| (id.clone(), command.kind(), command.call_id().cloned()));
                let result = self.sb.handle_command(now, conn, id, command);
                if let Some((request, kind, call_id)) = traced {
                    self.log_command(conn, &request, kind, call_id, &result);
                }
                self.drain(cause, Some(conn));
            }
            HubMsg::Input {
                conn,
                input: SwitchboardInput::Disconnect,
                ..
            } => {
                if self.links.remove(&conn).is_some() {
                    self.sb.disconnect(now, conn);
                    self.drain(Cause::Other, None);
                }
            }
            HubMsg::Shutdown { done } => {
                let live = self.sb.calls().filter(|c| c.ended().is_none()).count();
                tracing::info!(calls = live, "ending live calls: the server is stopping");
                self.sb.shutdown(now);
                self.drain(Cause::Other, None);
                let _ = done.send(());
            }
            HubMsg::Input {
                conn,
                input: SwitchboardInput::Sync { id },
                at,
            } => {
                let Some(link) = self.links.get(&conn) else {
                    return;
                };
                // A snapshot costs the switchboard more than most commands.
                if let Err(wait) = self.limits.charge(&link.user, None, at.into_std()) {
                    self.rate_limited(conn, id, wait);
                    return;
                }
                self.sb.handle_sync(now, conn, id);
                self.drain(Cause::Other, Some(conn));
            }
            HubMsg::Input { conn, input, .. } => {
                if self.links.contains_key(&conn) {
                    self.sb.handle_input(now, conn, input);
                    self.drain(Cause::Other, Some(conn));
                }
            }
        }
    }

    /// Answers a request the user's budget cannot pay for.
    fn rate_limited(&mut self, conn: ConnId, id: RequestId, wait: Duration) {
        self.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        let error = CommandError::RateLimited {
            retry_after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1),
        };
        let body = ServerBody::Error(ErrorBody::from_command(Some(id), &error));
        self.push(conn, ServerMessage::new(body), Stamp::None);
    }

    fn push(&mut self, conn: ConnId, message: ServerMessage, stamp: Stamp) {
        let Some(link) = self.links.get(&conn) else {
            return;
        };
        let pushed = link
            .tx
            .push(Outbound::Message(Box::new(Queued { message, stamp })));
        if let Err(e) = pushed {
            if e == PushError::Full {
                // The client does not read. Drop it; its task sees the queue
                // close and shuts the socket.
                tracing::warn!(%conn, user = %link.user, "outbound queue full: dropping the connection");
                self.metrics.too_slow.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(link) = self.links.remove(&conn) {
                link.tx.close(None);
                self.sb.disconnect(now(), conn);
            }
        }
    }

    /// Hands the switchboard's outputs to the connections. The requester's
    /// own messages (its reply, then its events, in that order) go last:
    /// each push wakes a connection task, tasks run in wake order, so the
    /// callee's `incoming_call` is written one socket write sooner.
    fn drain(&mut self, cause: Cause, requester: Option<ConnId>) {
        self.log_notices();
        let mut deferred = std::mem::take(&mut self.deferred);
        while let Some(out) = self.sb.poll_output() {
            match out {
                Output::Send { conn, message } if Some(conn) == requester => {
                    deferred.push(message);
                }
                Output::Send { conn, message } => self.deliver(conn, message, cause),
                Output::Close { conn, reason } => {
                    if Some(conn) == requester {
                        for message in deferred.drain(..) {
                            self.deliver(conn, message, cause);
                        }
                    }
                    if let Some(link) = self.links.remove(&conn) {
                        link.tx.close(Some(Outbound::Close(reason)));
                    }
                }
            }
        }
        if let Some(conn) = requester {
            for message in deferred.drain(..) {
                self.deliver(conn, message, cause);
            }
        }
        self.deferred = deferred;
    }

    /// One line per call milestone at `info`, each with the call id and
    /// the users involved (the caller always; the callee or callees; the
    /// device that acted), so that one call's path can be picked out of
    /// the log by its id and still say who did what.
    fn log_notices(&mut self) {
        while let Some(notice) = self.sb.poll_notice() {
            log_notice(&notice);
        }
    }

    /// The `command` line at `debug`: who sent which command about which
    /// call, and how it was answered.
    fn log_command(
        &self,
        conn: ConnId,
        request: &RequestId,
        kind: &'static str,
        call_id: Option<CallId>,
        result: &Result<ReplyResult, CommandError>,
    ) {
        let call_id = call_id.or_else(|| match result {
            Ok(ReplyResult::Invited { call_id, .. } | ReplyResult::Joined { call_id, .. }) => {
                Some(call_id.clone())
            }
            _ => None,
        });
        let Some((user, device)) = self.sb.connection(conn) else {
            return;
        };
        let answer = match result {
            Ok(_) => "ok",
            Err(e) => e.code().as_str(),
        };
        match call_id {
            Some(call_id) => tracing::debug!(
                %call_id, %user, %device, %request, command = kind, answer, "command"
            ),
            None => tracing::debug!(%user, %device, %request, command = kind, answer, "command"),
        }
    }

    fn deliver(&mut self, conn: ConnId, message: ServerMessage, cause: Cause) {
        let stamp = match cause {
            Cause::Timer(deadline) => Stamp::Timer(deadline),
            Cause::Invite(at)
                if matches!(
                    message.body,
                    ServerBody::Event {
                        event: Event::IncomingCall { .. },
                        ..
                    }
                ) =>
            {
                Stamp::Ring(at)
            }
            _ => Stamp::None,
        };
        self.push(conn, message, stamp);
    }
}

/// The log line of one call milestone (see [`Hub::log_notices`]).
fn log_notice(notice: &CallNotice) {
    let names = |users: &[invitation_core::User]| {
        users
            .iter()
            .map(|u| u.id.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    match notice {
        CallNotice::Started {
            call_id,
            caller,
            callees,
            device,
        } => tracing::info!(
            %call_id, %caller, %device, callees = %names(callees), "call started"
        ),
        CallNotice::Ringing {
            call_id,
            caller,
            callee,
        } => tracing::info!(%call_id, %caller, %callee, "callee ringing"),
        CallNotice::Outcome {
            call_id,
            callee,
            reason,
            caller,
            device: Some(device),
        } => tracing::info!(%call_id, %caller, %callee, %device, %reason, "callee outcome"),
        CallNotice::Outcome {
            call_id,
            callee,
            reason,
            caller,
            device: None,
        } => tracing::info!(%call_id, %caller, %callee, %reason, "callee outcome"),
        CallNotice::HungUp {
            call_id,
            caller,
            user,
            device,
        } => tracing::info!(%call_id, %caller, %user, %device, "hung up"),
        CallNotice::Ended {
            call_id,
            reason,
            caller,
            callees,
        } => tracing::info!(
            %call_id, %caller, callees = %names(callees), %reason, "call ended"
        ),
        _ => {}
    }
}

/// What made the switchboard produce the outputs being drained.
#[derive(Clone, Copy)]
enum Cause {
    /// An invite read at this instant.
    Invite(Instant),
    /// Timers due at (or after) this deadline.
    Timer(Instant),
    /// Anything else.
    Other,
}

#[cfg(test)]
#[path = "hub_limit_tests.rs"]
mod limit_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use invitation_core::protocol::{InviteRequest, ReplyResult};
    use invitation_core::{CallType, DeviceId, ErrorCode, User};

    fn invite(id: &str, callee: &str) -> SwitchboardInput {
        SwitchboardInput::Command {
            id: RequestId::new(id).unwrap(),
            command: Command::Invite(InviteRequest::new(
                vec![UserId::new(callee).unwrap()],
                CallType::Voice,
            )),
        }
    }

    fn open(conn: u64, user: &str, tx: Arc<Outbox>) -> HubMsg {
        HubMsg::Open {
            conn: ConnId::new(conn),
            tx,
            input: SwitchboardInput::Connect {
                user: User::named(user, user),
                device: DeviceId::new("d").unwrap(),
                last_seq: None,
                hello: RequestId::new("h").unwrap(),
            },
        }
    }

    fn next_body(rx: &Outbox) -> ServerBody {
        loop {
            match rx.try_pop().expect("a message is queued") {
                Outbound::Message(queued) => {
                    let message = queued.message;
                    if !matches!(
                        message.body,
                        ServerBody::Welcome { .. } | ServerBody::Sync { .. }
                    ) {
                        return message.body;
                    }
                }
                Outbound::Close(r) => panic!("closed: {r:?}"),
            }
        }
    }

    /// A hub (shedding after `shed_after`) with alice connected as link 1;
    /// her queue and the metrics.
    fn hub_with_alice(shed_after: Option<Duration>) -> (Hub, Arc<Outbox>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let mut hub = Hub::new(
            SwitchboardConfig::default(),
            HubLimits::unlimited(),
            shed_after,
            metrics.clone(),
        );
        let queue = Outbox::new(64);
        hub.handle(open(1, "alice", queue.clone()), now());
        (hub, queue, metrics)
    }

    /// Alice's command `message`, read off her socket at `at`.
    fn alice_sends(hub: &mut Hub, input: SwitchboardInput, at: Instant) {
        hub.handle(
            HubMsg::Input {
                conn: ConnId::new(1),
                input,
                at,
            },
            now(),
        );
    }

    /// Load shedding: an invite that waited past the threshold is refused
    /// with `unavailable` + retry_after_ms and creates nothing; a fresh one
    /// goes through; other commands are never shed, however late.
    #[tokio::test(start_paused = true)]
    async fn late_invites_are_shed_other_commands_are_not() {
        let (mut hub, rx, metrics) = hub_with_alice(Some(Duration::from_millis(50)));

        let read_at = Instant::now();
        tokio::time::advance(Duration::from_millis(51)).await;
        alice_sends(&mut hub, invite("i1", "bob"), read_at);
        match next_body(&rx) {
            ServerBody::Error(e) => {
                assert_eq!(e.code, ErrorCode::Unavailable);
                assert_eq!(e.retry_after_ms, Some(SHED_RETRY_AFTER_MS));
                assert_eq!(e.re, Some(RequestId::new("i1").unwrap()));
                assert_eq!(
                    e.to_command_error(),
                    Some(CommandError::Unavailable {
                        retry_after_ms: SHED_RETRY_AFTER_MS
                    })
                );
            }
            other => panic!("expected unavailable, got {other:?}"),
        }
        assert_eq!(metrics.invites_shed.load(Ordering::Relaxed), 1);
        assert_eq!(
            hub.sb.stats().invitations,
            0,
            "a shed invite creates nothing"
        );

        // The same request id, sent again in time, is a new invitation.
        alice_sends(&mut hub, invite("i1", "bob"), Instant::now());
        let call_id = match next_body(&rx).success() {
            Some((re, ReplyResult::Invited { call_id, .. })) if re.as_str() == "i1" => call_id,
            other => panic!("expected invited, got {other:?}"),
        };

        // A cancel that waited a long time still goes through.
        while rx.try_pop().is_some() {}
        let read_at = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        alice_sends(
            &mut hub,
            SwitchboardInput::Command {
                id: RequestId::new("c1").unwrap(),
                command: Command::Cancel {
                    call_id,
                    custom_data: None,
                },
            },
            read_at,
        );
        match next_body(&rx).success() {
            Some((re, _)) => assert_eq!(re.as_str(), "c1"),
            other => panic!("expected the cancel's answer, got {other:?}"),
        }
        assert_eq!(metrics.invites_shed.load(Ordering::Relaxed), 1);
    }

    /// The callee's `incoming_call` is queued (and its task woken) before
    /// the caller's reply, so it is written first.
    #[tokio::test]
    async fn the_callee_is_woken_before_the_requester() {
        let (mut hub, alice, _) = hub_with_alice(None);
        let bob = Outbox::new(64);
        hub.handle(open(2, "bob", bob.clone()), now());
        while alice.try_pop().is_some() {}
        while bob.try_pop().is_some() {}
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for (name, queue) in [("alice", alice.clone()), ("bob", bob.clone())] {
            let order = order.clone();
            waiters.push(tokio::spawn(async move {
                let first = queue.recv().await;
                order.lock().unwrap().push(name);
                first
            }));
        }
        tokio::task::yield_now().await; // both wait now
        alice_sends(&mut hub, invite("i1", "bob"), Instant::now());
        let mut firsts = Vec::new();
        for w in waiters {
            firsts.push(w.await.unwrap());
        }
        assert_eq!(*order.lock().unwrap(), ["bob", "alice"]);
        // Alice's own order is kept: the event answering her invite first.
        match &firsts[0] {
            Some(Outbound::Message(q)) => assert!(
                matches!(q.message.body.success(), Some((re, ReplyResult::Invited { .. })) if re.as_str() == "i1"),
                "{:?}",
                q.message.body
            ),
            other => panic!("expected alice's answer first, got {other:?}"),
        }
    }

    /// A lagging scheduler sheds fresh invites too (the backlog is in the
    /// sockets and the run queue, not in the hub's inbox).
    #[tokio::test(start_paused = true)]
    async fn scheduler_lag_sheds_fresh_invites() {
        let (mut hub, rx, metrics) = hub_with_alice(Some(Duration::from_millis(50)));
        metrics.scheduler_lag_us.store(60_000, Ordering::Relaxed);
        alice_sends(&mut hub, invite("i1", "bob"), Instant::now());
        match next_body(&rx) {
            ServerBody::Error(e) => assert_eq!(e.code, ErrorCode::Unavailable),
            other => panic!("expected unavailable, got {other:?}"),
        }
        metrics.scheduler_lag_us.store(1_000, Ordering::Relaxed);
        alice_sends(&mut hub, invite("i2", "bob"), Instant::now());
        assert!(matches!(
            next_body(&rx).success(),
            Some((_, ReplyResult::Invited { .. }))
        ));
    }

    /// Timer-caused messages carry the deadline, so the connection task can
    /// measure how late the timeout reached the wire.
    #[tokio::test(start_paused = true)]
    async fn timeout_events_are_stamped_with_their_deadline() {
        let (mut hub, rx, _) = hub_with_alice(None);
        alice_sends(&mut hub, invite("i1", "bob"), Instant::now());
        while rx.try_pop().is_some() {}
        let deadline = Instant::from_std(hub.sb.poll_timeout().expect("ring timer"));
        tokio::time::advance(Duration::from_secs(61)).await;
        // Any message finds the due timers fired first, stamped.
        hub.fire_due_timers(now());
        let mut stamped = 0;
        while let Some(Outbound::Message(queued)) = rx.try_pop() {
            match queued.stamp {
                Stamp::Timer(at) => {
                    assert_eq!(at, deadline);
                    stamped += 1;
                }
                other => panic!("unstamped timeout event: {other:?}"),
            }
        }
        assert!(stamped >= 1, "the caller hears of the timeout");
    }
}
