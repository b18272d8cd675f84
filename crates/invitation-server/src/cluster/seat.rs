//! The switchboard's seat: every node campaigns for the lease; the one
//! that holds it rebuilds the state from JetStream, runs the hub on it and
//! serves the edges, until it dies or loses the lease.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use invitation_core::durable::Durable;
use invitation_core::protocol::{CloseReason, Command};
use invitation_core::{ConnId, SwitchboardConfig, SwitchboardInput};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::state::{self, LogSink};
use super::wire::{Answer, ApiRequest, Down, Leader, Record, Up, UpBody};
use super::{ClusterError, Lease, Nats};
use crate::hub::{Hub, HubMsg, Outbound};
use crate::limits::HubLimits;
use crate::metrics::Metrics;
use crate::outbox::Outbox;

/// How often the leader announces itself to the edges.
const LEADER_BEAT: Duration = Duration::from_millis(250);

/// Everything a node needs to lead.
pub(crate) struct Seat {
    pub nats: Nats,
    pub node: String,
    pub lease_ttl: Duration,
    /// The switchboard's settings.
    pub config: SwitchboardConfig,
    /// The server's (limits, shedding, queues, snapshots).
    pub server: crate::config::Config,
    pub metrics: Arc<Metrics>,
    /// Adds webhooks and push to a new hub (each term starts a hub).
    pub decorate: Box<dyn Fn(Hub) -> Hub + Send + Sync>,
    /// Tells this node's edge which hub to use directly while leading.
    pub local: Arc<super::LocalSeat>,
}

/// Connection ids the leader gives remote connections start here, far
/// above the ones its own edge draws (from 1), so the two never meet in
/// the hub.
const REMOTE_CONN_BASE: u64 = 1 << 48;

impl Seat {
    /// Campaigns, leads, and campaigns again, until `stop` turns true;
    /// then lets go of the lease (another node takes over at once).
    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut lease = loop {
            match Lease::open(&self.nats, &self.node, self.lease_ttl).await {
                Ok(lease) => break lease,
                Err(e) => {
                    tracing::error!(error = %e, "cannot open the lease; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(self.lease_ttl) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        };
        loop {
            if *stop.borrow() {
                break;
            }
            match lease.try_take().await {
                Ok(true) => {
                    self.lead(&mut lease, &mut stop).await;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "lease: cannot reach JetStream"),
            }
            tokio::select! {
                () = tokio::time::sleep(self.lease_ttl / 6) => {}
                _ = stop.changed() => {}
            }
        }
        if lease.held() {
            if let Err(e) = lease.release().await {
                tracing::warn!(error = %e, "could not hand the lease back (it expires by itself)");
            }
        }
    }

    /// Leads until the lease is lost, the log is fenced or `stop`.
    async fn lead(&self, lease: &mut Lease, stop: &mut watch::Receiver<bool>) {
        let started = std::time::Instant::now();
        let (hub, term) = match self.take_over().await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "took the lease but cannot rebuild the state; letting it go");
                let _ = lease.release().await;
                return;
            }
        };
        tracing::info!(node = %self.node, term,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "leading: the switchboard runs on this node");
        let (hub_tx, hub_rx) = mpsc::channel(4096);
        let local_hub = hub_tx.clone();
        let ingress = match Ingress::start(self, term, hub_tx).await {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(error = %e, "cannot subscribe as leader; letting the lease go");
                let _ = lease.release().await;
                return;
            }
        };
        let (stop_ingress, ingress_stopped) = oneshot::channel();
        let ingress = tokio::spawn(ingress.run(ingress_stopped));
        let beat = tokio::spawn(beat(
            self.nats.clone(),
            Leader {
                term,
                node: self.node.clone(),
            },
        ));
        let mut renew = tokio::time::interval(self.lease_ttl / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renewed = Instant::now();
        self.local.send_replace(Some((term, local_hub)));
        self.metrics.cluster_terms.fetch_add(1, Ordering::Relaxed);
        self.metrics.cluster_leading.store(term, Ordering::Relaxed);
        // Its own task: the hub goes on while a renewal waits for NATS.
        let mut hub = tokio::spawn(hub.run(hub_rx));
        loop {
            tokio::select! {
                _ = &mut hub => {
                    tracing::warn!(node = %self.node, term, "stepping down: the log refused an append");
                    break;
                }
                _ = renew.tick() => match self.renew(lease).await {
                    Ok(()) => renewed = Instant::now(),
                    Err(ClusterError::LeaseLost { .. }) => {
                        tracing::warn!(node = %self.node, term, "stepping down: the lease was taken");
                        break;
                    }
                    Err(e) if renewed.elapsed() > self.lease_ttl * 2 / 3 => {
                        tracing::warn!(node = %self.node, term, error = %e, "stepping down: cannot renew the lease");
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, "lease renewal failed; retrying"),
                },
                _ = stop.changed() => break,
            }
        }
        // Whatever the hub held for clients unwritten dies with it.
        hub.abort();
        self.metrics.cluster_leading.store(0, Ordering::Relaxed);
        self.local.send_replace(None);
        beat.abort();
        // Closes every remote connection's queue: their edges close them,
        // the clients reconnect and find the next leader.
        let _ = stop_ingress.send(());
        let _ = ingress.await;
    }

    /// One renewal, given up after a third of the lease (a NATS that does
    /// not answer must not keep a leader that cannot renew in office).
    async fn renew(&self, lease: &mut Lease) -> Result<(), ClusterError> {
        tokio::time::timeout(self.lease_ttl / 3, lease.renew())
            .await
            .unwrap_or_else(|_| Err(ClusterError::js("lease renewal", "timed out")))
    }

    /// Rebuilds the state and writes this node's term into the log.
    async fn take_over(&self) -> Result<(Hub, u64), ClusterError> {
        let mut loaded = state::load(&self.nats).await?;
        let term_record = serde_json::to_vec(&Record::Term {
            node: self.node.clone(),
        })
        .expect("records serialize");
        // A deposed leader may still append until it sees our term: catch
        // up until ours lands right after what we read.
        let term = loop {
            match loaded.log.append(term_record.clone()).await {
                Ok(seq) => break seq,
                Err(ClusterError::Fenced { .. }) => state::catch_up(&mut loaded).await?,
                Err(e) => return Err(e),
            }
        };
        let replayed = loaded.entries.len();
        let mut config = self.config.clone();
        // Kept in JetStream, readable from every node.
        config.call_records = true;
        let (sb, recovered) = Durable::recover(
            config,
            crate::hub::RandomCallIds::new(),
            crate::hub::time_frame(),
            loaded.snapshot,
            loaded.entries,
            crate::hub::now(),
        )
        .map_err(|e| ClusterError::js("replay", e))?;
        tracing::info!(replayed, ?recovered, "state rebuilt from JetStream");
        // Records are published from here on: their stream first.
        super::records::open(&self.nats, self.server.record_retention()).await?;
        let sink = LogSink::new(
            self.nats.clone(),
            loaded.log,
            self.server.snapshot_after_mb << 20,
            self.metrics.clone(),
        );
        let hub = Hub::in_cluster(
            sb,
            HubLimits::from_config(&self.server),
            self.server.shed_after(),
            self.metrics.clone(),
            sink,
        );
        let mut hub = (self.decorate)(hub);
        // The recovery's own entries (settings, restart) before anything.
        hub.commit_to_log().await?;
        Ok((hub, term))
    }
}

/// Announces the leader to the edges.
async fn beat(nats: Nats, leader: Leader) {
    let subject = nats.subject("leader");
    let bytes = serde_json::to_vec(&leader).expect("wire messages serialize");
    let client = nats.client();
    let mut every = tokio::time::interval(LEADER_BEAT);
    loop {
        every.tick().await;
        let _ = client.publish(subject.clone(), bytes.clone().into()).await;
    }
}

/// A connection of an edge, as the leader's hub knows it.
struct Remote {
    id: ConnId,
    outbox: Arc<Outbox>,
}

/// An edge, as the leader sees it.
struct EdgeState {
    heard: Instant,
    conns: HashMap<u64, Remote>,
}

/// The leader's side of the edges: turns their messages into the hub's,
/// gives each remote connection a queue the hub writes to, and forwards
/// what the hub queues to the connection's edge.
struct Ingress {
    nats: Nats,
    term: u64,
    hub: mpsc::Sender<HubMsg>,
    edges: HashMap<String, EdgeState>,
    next_conn: u64,
    outbox_cap: usize,
    silence: Duration,
    /// New invitations are refused when the hub is behind (`shed_invites_after_ms` > 0).
    shedding: bool,
    metrics: Arc<Metrics>,
    up: async_nats::Subscriber,
    api: async_nats::Subscriber,
    gone_tx: mpsc::UnboundedSender<(String, u64, ConnId)>,
    gone: mpsc::UnboundedReceiver<(String, u64, ConnId)>,
}

impl Ingress {
    async fn start(
        seat: &Seat,
        term: u64,
        hub: mpsc::Sender<HubMsg>,
    ) -> Result<Self, ClusterError> {
        let client = seat.nats.client();
        let up = client
            .subscribe(seat.nats.subject("up"))
            .await
            .map_err(|e| ClusterError::js("subscribe up", e))?;
        let api = client
            .subscribe(seat.nats.subject("api"))
            .await
            .map_err(|e| ClusterError::js("subscribe api", e))?;
        let (gone_tx, gone) = mpsc::unbounded_channel();
        Ok(Self {
            nats: seat.nats.clone(),
            term,
            hub,
            edges: HashMap::new(),
            next_conn: REMOTE_CONN_BASE,
            outbox_cap: seat.server.outbound_queue,
            shedding: seat.server.shed_after().is_some(),
            metrics: seat.metrics.clone(),
            silence: seat.lease_ttl,
            up,
            api,
            gone_tx,
            gone,
        })
    }

    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut check = tokio::time::interval(self.silence / 3);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                Some(message) = self.up.next() => {
                    match serde_json::from_slice::<Up>(&message.payload) {
                        Ok(up) => self.on_up(up).await,
                        Err(e) => tracing::warn!(error = %e, "unreadable message from an edge"),
                    }
                }
                Some(message) = self.api.next() => self.api(message),
                Some((node, conn, id)) = self.gone.recv() => {
                    if let Some(edge) = self.edges.get_mut(&node) {
                        if edge.conns.get(&conn).is_some_and(|r| r.id == id) {
                            edge.conns.remove(&conn);
                        }
                    }
                }
                _ = check.tick() => self.drop_silent_edges().await,
            }
        }
        for (_, edge) in self.edges.drain() {
            for (_, remote) in edge.conns {
                remote
                    .outbox
                    .close(Some(Outbound::Close(CloseReason::ShuttingDown)));
            }
        }
    }

    async fn on_up(&mut self, up: Up) {
        if up.term != self.term {
            // Its connections belong to another leader; the edge closes
            // them once it hears of this one.
            return;
        }
        let edge = self
            .edges
            .entry(up.node.clone())
            .or_insert_with(|| EdgeState {
                heard: Instant::now(),
                conns: HashMap::new(),
            });
        edge.heard = Instant::now();
        let UpBody::Input {
            conn,
            read_ns,
            input,
        } = up.body
        else {
            return;
        };
        let at = super::instant_of(read_ns);
        match input {
            SwitchboardInput::Connect { .. } => {
                if edge.conns.contains_key(&conn) {
                    return;
                }
                let id = ConnId::new(self.next_conn);
                self.next_conn += 1;
                let outbox = Outbox::new(self.outbox_cap);
                edge.conns.insert(
                    conn,
                    Remote {
                        id,
                        outbox: outbox.clone(),
                    },
                );
                tokio::spawn(forward(
                    self.nats.clone(),
                    up.node.clone(),
                    conn,
                    id,
                    outbox.clone(),
                    self.gone_tx.clone(),
                ));
                let _ = self
                    .hub
                    .send(HubMsg::Open {
                        conn: id,
                        tx: outbox,
                        input,
                    })
                    .await;
            }
            input => {
                let Some(remote) = edge.conns.get(&conn) else {
                    if !matches!(input, SwitchboardInput::Disconnect) {
                        // The switchboard does not know this connection (its
                        // opening was lost): the client must start again.
                        let down = Down::Close {
                            conn,
                            reason: Some(CloseReason::ShuttingDown),
                        };
                        publish_down(&self.nats, &up.node, &down).await;
                    }
                    return;
                };
                let id = remote.id;
                let leaving = matches!(input, SwitchboardInput::Disconnect);
                let msg = HubMsg::Input {
                    conn: id,
                    input,
                    at,
                };
                // As on one node: with the hub's inbox full, a new
                // invitation is refused at once (the NATS subscription must
                // keep flowing, or it drops messages); the rest wait.
                match self.hub.try_send(msg) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(HubMsg::Input {
                        input:
                            SwitchboardInput::Command {
                                id: request,
                                command: Command::Invite(_),
                            },
                        ..
                    })) if self.shedding => {
                        let message = Hub::shed_reply(&self.metrics, request);
                        publish_down(&self.nats, &up.node, &Down::Send { conn, message }).await;
                    }
                    Err(mpsc::error::TrySendError::Full(msg)) => {
                        let _ = self.hub.send(msg).await;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
                if leaving {
                    if let Some(remote) = edge.conns.remove(&conn) {
                        remote.outbox.close(None);
                    }
                }
            }
        }
    }

    /// An edge that went silent for a lease's time died (or lost NATS):
    /// its devices left.
    async fn drop_silent_edges(&mut self) {
        let silent: Vec<String> = self
            .edges
            .iter()
            .filter(|(_, e)| e.heard.elapsed() > self.silence)
            .map(|(n, _)| n.clone())
            .collect();
        for node in silent {
            let Some(edge) = self.edges.remove(&node) else {
                continue;
            };
            tracing::warn!(%node, connections = edge.conns.len(), "edge silent: its devices left");
            for (_, remote) in edge.conns {
                let _ = self
                    .hub
                    .send(HubMsg::Input {
                        conn: remote.id,
                        input: SwitchboardInput::Disconnect,
                        at: Instant::now(),
                    })
                    .await;
                remote.outbox.close(None);
            }
        }
    }

    /// An HTTP API request an edge forwarded: asked of the hub, answered
    /// on the request's reply subject.
    fn api(&self, message: async_nats::Message) {
        let Some(reply_to) = message.reply.clone() else {
            return;
        };
        let Ok(request) = serde_json::from_slice::<ApiRequest>(&message.payload) else {
            return;
        };
        let hub = self.hub.clone();
        let client = self.nats.client();
        tokio::spawn(async move {
            let answer = match request {
                ApiRequest::Backend {
                    user,
                    request,
                    command,
                } => ask(&hub, |reply| HubMsg::Backend {
                    user,
                    request,
                    command,
                    reply,
                })
                .await
                .map(|r| serde_json::to_vec(&Answer::of(r))),
                ApiRequest::Push {
                    user,
                    device,
                    registration,
                } => ask(&hub, |reply| HubMsg::Push {
                    user,
                    device,
                    registration,
                    reply,
                })
                .await
                .map(|r| serde_json::to_vec(&Answer::of(r))),
                ApiRequest::PushDevices { user } => {
                    ask(&hub, |reply| HubMsg::PushDevices { user, reply })
                        .await
                        .map(|r| serde_json::to_vec(&r))
                }
                ApiRequest::Presence { user } => {
                    ask(&hub, |reply| HubMsg::Presence { user, reply })
                        .await
                        .map(|r| serde_json::to_vec(&r))
                }
                ApiRequest::Call { call_id } => ask(&hub, |reply| HubMsg::Call { call_id, reply })
                    .await
                    .map(|r| serde_json::to_vec(&r)),
            };
            // No answer (the hub stopped): the edge's request times out and
            // its caller hears `unavailable`.
            if let Some(Ok(bytes)) = answer {
                let _ = client.publish(reply_to, bytes.into()).await;
            }
        });
    }
}

/// Asks the hub and waits for its answer.
async fn ask<T>(
    hub: &mpsc::Sender<HubMsg>,
    make: impl FnOnce(oneshot::Sender<T>) -> HubMsg,
) -> Option<T> {
    let (reply, answer) = oneshot::channel();
    hub.send(make(reply)).await.ok()?;
    answer.await.ok()
}

async fn publish_down(nats: &Nats, node: &str, down: &Down) {
    let bytes = serde_json::to_vec(down).expect("wire messages serialize");
    let subject = nats.subject(&format!("down.{node}"));
    if let Err(e) = nats.client().publish(subject, bytes.into()).await {
        tracing::warn!(error = %e, "cannot publish to NATS");
    }
}

/// Carries what the hub queues for one remote connection to its edge.
async fn forward(
    nats: Nats,
    node: String,
    conn: u64,
    id: ConnId,
    outbox: Arc<Outbox>,
    gone: mpsc::UnboundedSender<(String, u64, ConnId)>,
) {
    let subject = nats.subject(&format!("down.{node}"));
    let client = nats.client();
    let mut reason = None;
    while let Some(out) = outbox.recv().await {
        match out {
            Outbound::Message(queued) => {
                let down = Down::Send {
                    conn,
                    message: queued.message,
                };
                let bytes = serde_json::to_vec(&down).expect("wire messages serialize");
                let _ = client.publish(subject.clone(), bytes.into()).await;
            }
            Outbound::Close(r) => {
                reason = Some(r);
                break;
            }
        }
    }
    let down = Down::Close { conn, reason };
    let bytes = serde_json::to_vec(&down).expect("wire messages serialize");
    let _ = client.publish(subject, bytes.into()).await;
    let _ = gone.send((node, conn, id));
}
