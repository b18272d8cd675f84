//! The edge: on every node of a cluster, what the hub is on a single
//! node. Connection tasks hand it their inputs as they would to the hub; it
//! sends them to whichever node holds the switchboard, and hands that
//! node's answers back to the connections.
//!
//! A connection belongs to one leader term. When the edge hears of a newer
//! leader, or none for a lease's time to live, it closes every connection
//! with `closing: shutting_down`: the clients reconnect (to any node) and
//! resume from their last event, and retry unanswered commands under the
//! same request ids, which the switchboard answers once. That is the whole
//! failover protocol: the one a server restart already uses.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use invitation_core::protocol::{CloseReason, ReplyResult};
use invitation_core::{CommandError, SwitchboardInput};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::wire::{Answer, ApiRequest, Down, Leader, Up, UpBody};
use super::{ClusterError, Nats};
use crate::hub::{HubMsg, Outbound, Queued, Stamp};
use crate::metrics::Metrics;
use crate::outbox::{Outbox, PushError};

/// How often an edge tells the switchboard's node it is alive.
pub(crate) const ALIVE_EVERY: Duration = Duration::from_millis(500);

/// How long a forwarded HTTP API request may wait for the switchboard.
const API_TIMEOUT: Duration = Duration::from_secs(5);

/// An edge, subscribed and ready to run.
pub(crate) struct Edge {
    nats: Nats,
    node: String,
    /// The edge's live connections, by their id on this node.
    conns: HashMap<u64, Arc<Outbox>>,
    /// Those of them that talk to this node's own hub (it led when they
    /// opened).
    direct: HashSet<u64>,
    /// This node's hub while it leads.
    local: watch::Receiver<Option<(u64, mpsc::Sender<HubMsg>)>>,
    /// The leader the connections belong to, and when it was last heard.
    leader: Option<(Leader, Instant)>,
    /// Silence after which the leader is taken for gone.
    leader_silence: Duration,
    /// The call records stream, for reads.
    records: async_nats::jetstream::stream::Stream,
    metrics: Arc<Metrics>,
    up: String,
    down: async_nats::Subscriber,
    leaders: async_nats::Subscriber,
}

impl Edge {
    /// Subscribes this node's edge (named `node`) to its deployment.
    pub(crate) async fn start(
        nats: &Nats,
        node: &str,
        leader_silence: Duration,
        record_retention: Duration,
        metrics: Arc<Metrics>,
        local: watch::Receiver<Option<(u64, mpsc::Sender<HubMsg>)>>,
    ) -> Result<Self, ClusterError> {
        let client = nats.client();
        let down = client
            .subscribe(nats.subject(&format!("down.{node}")))
            .await
            .map_err(|e| ClusterError::js("subscribe down", e))?;
        let leaders = client
            .subscribe(nats.subject("leader"))
            .await
            .map_err(|e| ClusterError::js("subscribe leader", e))?;
        let records = super::records::open(nats, record_retention).await?;
        metrics.cluster_no_leader.store(true, Ordering::Relaxed);
        Ok(Self {
            nats: nats.clone(),
            node: node.to_owned(),
            conns: HashMap::new(),
            direct: HashSet::new(),
            local,
            leader: None,
            leader_silence,
            records,
            metrics,
            up: nats.subject("up"),
            down,
            leaders,
        })
    }

    /// Runs until every sender of `rx` is gone.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<HubMsg>) {
        let mut tick = tokio::time::interval(ALIVE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => self.local(msg).await,
                    None => break,
                },
                Some(message) = self.down.next() => self.on_down(&message.payload),
                Some(message) = self.leaders.next() => {
                    if let Ok(leader) = serde_json::from_slice::<Leader>(&message.payload) {
                        self.heard(leader);
                    }
                }
                _ = tick.tick() => self.tick().await,
            }
        }
        self.close_all();
        tracing::info!(node = %self.node, "edge stopped");
    }

    fn term(&self) -> Option<u64> {
        self.leader.as_ref().map(|(l, _)| l.term)
    }

    /// A leader's heartbeat: a newer term closes every connection of the
    /// older one; an older term (a deposed leader still beating) is ignored.
    fn heard(&mut self, leader: Leader) {
        match self.term() {
            Some(term) if leader.term < term => {}
            Some(term) if leader.term == term => {
                if let Some((_, at)) = &mut self.leader {
                    *at = Instant::now();
                }
            }
            previous => {
                if previous.is_some() {
                    tracing::info!(node = %self.node, term = leader.term, leader = %leader.node,
                        "new leader: closing this node's connections (clients resume on any node)");
                    self.close_all();
                } else {
                    tracing::info!(node = %self.node, term = leader.term, leader = %leader.node, "leader found");
                }
                self.metrics
                    .cluster_term
                    .store(leader.term, Ordering::Relaxed);
                self.leader = Some((leader, Instant::now()));
                self.metrics
                    .cluster_no_leader
                    .store(false, Ordering::Relaxed);
            }
        }
    }

    async fn tick(&mut self) {
        if let Some((leader, at)) = &self.leader {
            if at.elapsed() > self.leader_silence {
                tracing::warn!(node = %self.node, term = leader.term, leader = %leader.node,
                    "leader silent: closing this node's connections until a new one leads");
                self.leader = None;
                self.metrics.cluster_term.store(0, Ordering::Relaxed);
                self.metrics
                    .cluster_no_leader
                    .store(true, Ordering::Relaxed);
                self.close_all();
                return;
            }
            self.publish(UpBody::Alive).await;
        }
    }

    /// Closes every connection; clients reconnect and resume.
    fn close_all(&mut self) {
        self.direct.clear();
        for (_, tx) in self.conns.drain() {
            tx.close(Some(Outbound::Close(CloseReason::ShuttingDown)));
        }
    }

    async fn publish(&self, body: UpBody) {
        let Some(term) = self.term() else { return };
        let up = Up {
            term,
            node: self.node.clone(),
            body,
        };
        let bytes = serde_json::to_vec(&up).expect("wire messages serialize");
        if let Err(e) = self
            .nats
            .client()
            .publish(self.up.clone(), bytes.into())
            .await
        {
            tracing::warn!(error = %e, "cannot publish to NATS");
        }
    }

    /// What the switchboard's node says to one of this edge's connections.
    fn on_down(&mut self, payload: &[u8]) {
        let down: Down = match serde_json::from_slice(payload) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable message from the switchboard's node");
                return;
            }
        };
        match down {
            Down::Send { conn, message } => {
                let Some(tx) = self.conns.get(&conn) else {
                    return;
                };
                let queued = Queued {
                    message,
                    stamp: Stamp::None,
                };
                if tx.push(Outbound::Message(Box::new(queued))) == Err(PushError::Full) {
                    // The client does not read: drop it (its task tells the
                    // switchboard it left).
                    self.metrics.too_slow.fetch_add(1, Ordering::Relaxed);
                    tx.close(None);
                }
            }
            Down::Close { conn, reason } => {
                if let Some(tx) = self.conns.remove(&conn) {
                    tx.close(reason.map(Outbound::Close));
                }
            }
        }
    }

    /// This node's hub, when this node leads the term the edge follows.
    fn own_hub(&self) -> Option<mpsc::Sender<HubMsg>> {
        let term = self.term()?;
        match &*self.local.borrow() {
            Some((led, hub)) if *led == term => Some(hub.clone()),
            _ => None,
        }
    }

    /// Hands `msg` straight to this node's hub while it leads (a client of
    /// the leader costs no NATS hop); gives it back when it must go over
    /// NATS. A connection keeps the path it opened on until it closes.
    async fn try_direct(&mut self, msg: HubMsg) -> Option<HubMsg> {
        match msg {
            HubMsg::Open { conn, tx, input } => {
                let Some(hub) = self.own_hub() else {
                    return Some(HubMsg::Open { conn, tx, input });
                };
                self.conns.insert(conn.get(), tx.clone());
                self.direct.insert(conn.get());
                if hub.send(HubMsg::Open { conn, tx, input }).await.is_err() {
                    // Stepped down meanwhile: the client starts again.
                    if let Some(tx) = self.conns.remove(&conn.get()) {
                        tx.close(Some(Outbound::Close(CloseReason::ShuttingDown)));
                    }
                    self.direct.remove(&conn.get());
                }
                None
            }
            HubMsg::Input { conn, .. } if self.direct.contains(&conn.get()) => {
                if let HubMsg::Input {
                    input: SwitchboardInput::Disconnect,
                    ..
                } = &msg
                {
                    self.direct.remove(&conn.get());
                    self.conns.remove(&conn.get());
                }
                // No hub any more: this node stepped down, and the edge
                // closes the connection once it hears who leads now.
                if let Some(hub) = self.own_hub() {
                    let _ = hub.send(msg).await;
                }
                None
            }
            HubMsg::Input { .. } | HubMsg::Shutdown { .. } | HubMsg::Records { .. } => Some(msg),
            api => match self.own_hub() {
                Some(hub) => hub.send(api).await.err().map(|e| e.0),
                None => Some(api),
            },
        }
    }

    /// A message a connection task (or the HTTP API) gave the hub.
    async fn local(&mut self, msg: HubMsg) {
        let Some(msg) = self.try_direct(msg).await else {
            return;
        };
        match msg {
            HubMsg::Open { conn, tx, input } => {
                if self.term().is_none() {
                    // No leader known: the client retries shortly.
                    tx.close(Some(Outbound::Close(CloseReason::ShuttingDown)));
                    return;
                }
                self.conns.insert(conn.get(), tx);
                self.send_input(conn.get(), input, Instant::now()).await;
            }
            HubMsg::Input { conn, input, at } => {
                let conn = conn.get();
                if !self.conns.contains_key(&conn) {
                    return;
                }
                if matches!(input, SwitchboardInput::Disconnect) {
                    self.conns.remove(&conn);
                }
                self.send_input(conn, input, at).await;
            }
            HubMsg::Shutdown { done } => {
                // This node stops: its devices leave (the calls live on in
                // the switchboard; clients reconnect to another node).
                let conns: Vec<u64> = self.conns.keys().copied().collect();
                let own = self.own_hub();
                for conn in conns {
                    match &own {
                        Some(hub) if self.direct.contains(&conn) => {
                            let _ = hub
                                .send(HubMsg::Input {
                                    conn: invitation_core::ConnId::new(conn),
                                    input: SwitchboardInput::Disconnect,
                                    at: Instant::now(),
                                })
                                .await;
                        }
                        _ => {
                            self.send_input(conn, SwitchboardInput::Disconnect, Instant::now())
                                .await;
                        }
                    }
                }
                self.close_all();
                let _ = done.send(());
            }
            HubMsg::Backend {
                user,
                request,
                command,
                reply,
            } => self.command(
                ApiRequest::Backend {
                    user,
                    request,
                    command,
                },
                reply,
            ),
            HubMsg::Push {
                user,
                device,
                registration,
                reply,
            } => self.command(
                ApiRequest::Push {
                    user,
                    device,
                    registration,
                },
                reply,
            ),
            HubMsg::PushDevices { user, reply } => {
                self.ask(ApiRequest::PushDevices { user }, reply)
            }
            HubMsg::Presence { user, reply } => self.ask(ApiRequest::Presence { user }, reply),
            HubMsg::Call { call_id, reply } => self.ask(ApiRequest::Call { call_id }, reply),
            HubMsg::Records { query, reply } => {
                // Read from JetStream here, without the leader.
                let (nats, records) = (self.nats.clone(), self.records.clone());
                tokio::spawn(async move {
                    let _ = reply.send(super::records::list(&nats, &records, &query).await);
                });
            }
        }
    }

    async fn send_input(&self, conn: u64, input: SwitchboardInput, at: Instant) {
        let read_ns = super::unix_ns_of(at);
        self.publish(UpBody::Input {
            conn,
            read_ns,
            input,
        })
        .await;
    }

    /// Forwards an HTTP API read to the switchboard's node. Without an
    /// answer the reply is dropped: the API says `unavailable` rather than
    /// guess (an empty presence would read as "offline").
    fn ask<T>(&self, request: ApiRequest, reply: oneshot::Sender<T>)
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let (client, subject) = (self.nats.client(), self.nats.subject("api"));
        tokio::spawn(async move {
            if let Some(answer) = forward(&client, subject, &request).await {
                let _ = reply.send(answer);
            }
        });
    }

    /// Forwards a command of the HTTP API; `unavailable` without an answer.
    fn command(
        &self,
        request: ApiRequest,
        reply: oneshot::Sender<Result<ReplyResult, CommandError>>,
    ) {
        let (client, subject) = (self.nats.client(), self.nats.subject("api"));
        tokio::spawn(async move {
            let answer = forward::<Answer>(&client, subject, &request).await.map_or(
                Err(CommandError::Unavailable {
                    retry_after_ms: 1000,
                }),
                Answer::into_result,
            );
            let _ = reply.send(answer);
        });
    }
}

/// A request/reply to the switchboard's node, its answer decoded; `None`
/// when NATS or the node does not answer in time (or answers nonsense).
async fn forward<T: serde::de::DeserializeOwned>(
    client: &async_nats::Client,
    subject: String,
    request: &ApiRequest,
) -> Option<T> {
    let bytes = serde_json::to_vec(request).expect("wire messages serialize");
    let asked = tokio::time::timeout(API_TIMEOUT, client.request(subject, bytes.into()));
    let message = asked.await.ok()?.ok()?;
    serde_json::from_slice(&message.payload).ok()
}
