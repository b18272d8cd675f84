//! Accepting connections, per-IP limits, and graceful shutdown.
//!
//! Every accepted connection holds a slot ([`crate::slots`]) for as long as
//! its task runs, released by a guard even if the task panics. Once every
//! regular slot is taken, a small reserve still answers `/healthz` and
//! `/metrics` (and refuses anything else with 503). If the hub task ends
//! (it never should: a panic), the server stops and [`Server::run`] returns
//! [`ServerError::HubStopped`], so the process exits non-zero instead of
//! answering health checks while every session is dead.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::auth::{Authority, random_secret};
use crate::config::{Config, ConfigError};
use crate::http::{self, Route};
use crate::hub::{Hub, HubMsg, RecordQuery};
use crate::limits::HubLimits;
use crate::metrics::{Metrics, Refusal};
use crate::push::{PushSettings, Pushes};
use crate::rate::KeyedLimiter;
use crate::records::{Page, RecordError};
use crate::slots::{Admission, Slots};
use crate::webhook::{Delivery, Webhooks};

/// State shared by all connection tasks.
pub struct Shared {
    /// The settings.
    pub config: Config,
    /// Token verification.
    pub authority: Authority,
    /// Every connection machine's settings.
    pub conn_config: Arc<invitation_core::ConnectionConfig>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The hub's inbox.
    pub hub: mpsc::Sender<HubMsg>,
    /// Flips to `true` on shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// The server's own TLS (`tls_cert` / `tls_key`), when set: both ports
    /// then take TLS connections only.
    pub tls: Option<crate::tls::ServerTls>,
    /// The development demo's users (empty unless `dev_demo` is on).
    pub(crate) demo: crate::demo::DemoUsers,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS certificate or key cannot be used, or the roots for
    /// outbound `https://` cannot be loaded. The message names the file.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsSetupError),
    /// The data directory cannot be used (locked by another server,
    /// damaged, unreadable).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The call records cannot be opened.
    #[error(transparent)]
    Records(#[from] crate::records::RecordError),
    /// The data directory's content does not rebuild a state.
    #[error("cannot recover the state kept in {dir}: {detail}")]
    Recover {
        /// The data directory.
        dir: std::path::PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// NATS (the cluster's) cannot be reached or used.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// The hub task (the switchboard's owner) ended while serving: a bug.
    /// The server stopped rather than keep answering health checks with
    /// every session dead.
    #[error("the hub task stopped: {detail}")]
    HubStopped {
        /// How it ended (the panic message, if it panicked).
        detail: String,
    },
}

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    /// The HTTP API's listener, when API keys are configured.
    api: Option<TcpListener>,
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    hub: JoinHandle<()>,
    generated_secret: Option<String>,
    /// Tells a cluster node's seat to stop leading and hand the lease back.
    seat_stop: Option<watch::Sender<bool>>,
}

impl Server {
    /// Validates the settings, binds the address and starts the hub.
    pub async fn bind(mut config: Config) -> Result<Self, ServerError> {
        let sb = config.validate()?;
        crate::tls::install_crypto_provider();
        // Before anything binds or starts: a bad certificate, key or CA
        // file stops the start with the file's name.
        let tls = crate::tls::ServerTls::from_settings(
            config.tls_cert.as_deref(),
            config.tls_key.as_deref(),
        )?;
        let delivery = if config.webhook_urls.is_empty() {
            None
        } else {
            Some(Delivery::from_config(&config)?)
        };
        let generated_secret = if config.secret.is_none() {
            let s = random_secret();
            config.secret = Some(s.clone());
            Some(s)
        } else {
            None
        };
        let secret = config.secret.clone().expect("set above");
        let authority = Authority::new(
            secret.as_bytes(),
            &config.audience,
            config.issuer.as_deref(),
        );
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let api = if config.api_keys.is_empty() {
            tracing::info!("HTTP API off: no api_keys configured");
            None
        } else {
            let api = TcpListener::bind(config.api_listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.api_listen,
                    source,
                })?;
            if let Ok(addr) = api.local_addr() {
                crate::api::describe(addr, config.api_keys.len());
            }
            Some(api)
        };
        crate::demo::announce(&config);
        let metrics = Arc::new(Metrics::default());
        let (hub_tx, hub_rx) = mpsc::channel(4096);
        let (hub, seat_stop) = if config.nats_url.is_some() {
            let (hub, stop) = start_cluster(&config, sb, delivery, metrics.clone(), hub_rx).await?;
            (hub, Some(stop))
        } else {
            let hub = single_hub(&config, sb, delivery, metrics.clone())?;
            (tokio::spawn(hub.run(hub_rx)), None)
        };
        let (shutdown_tx, shutdown) = watch::channel(false);
        Ok(Self {
            listener,
            api,
            shared: Arc::new(Shared {
                conn_config: Arc::new(config.connection_config()),
                config,
                authority,
                metrics,
                hub: hub_tx,
                shutdown,
                tls,
                demo: Default::default(),
            }),
            shutdown_tx,
            hub,
            generated_secret,
            seat_stop,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    /// Whether both ports serve TLS (`tls_cert` and `tls_key` are set).
    pub fn serves_tls(&self) -> bool {
        self.shared.tls.is_some()
    }

    /// The HTTP API's address, when it is on (`api_keys` configured).
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Mints and verifies tokens for this server.
    pub fn authority(&self) -> &Authority {
        &self.shared.authority
    }

    /// The secret generated at start, when none was configured.
    pub fn generated_secret(&self) -> Option<&str> {
        self.generated_secret.as_deref()
    }

    /// The metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting, tells every
    /// client (`closing: shutting_down`) and waits for them, at most the
    /// configured grace period.
    ///
    /// Returns [`ServerError::HubStopped`] (after the same shutdown) if the
    /// hub task ended while serving.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let Server {
            listener,
            api,
            shared,
            shutdown_tx,
            mut hub,
            seat_stop,
            ..
        } = self;
        // The HTTP API: its own listener and task, stopped first on the way
        // out (a request under way finishes while the hub still answers).
        let (api_stop, api_stopped) = tokio::sync::oneshot::channel::<()>();
        let api_task = api.map(|listener| {
            let router = crate::api::router(
                crate::api::ApiSettings {
                    keys: shared.config.api_keys.clone(),
                    rate: shared.config.api_rate_per_key,
                    burst: shared.config.api_burst_per_key,
                    max_body: shared.config.api_max_body_bytes,
                },
                shared.authority.clone(),
                shared.hub.clone(),
            );
            tokio::spawn(crate::api::serve(
                listener,
                shared
                    .tls
                    .clone()
                    .map(|tls| (tls, shared.config.handshake_timeout())),
                router,
                async move {
                    let _ = api_stopped.await;
                },
            ))
        });
        let slots = Slots::new(
            shared.config.max_connections,
            shared.config.max_connections_per_ip,
        );
        // HTTP transport sessions hold slots like connections do. Connection
        // ids (drawn from `sessions`) are never reused: a late message about
        // a closed connection cannot reach a new one.
        // New connections and new HTTP sessions share one per-address rate.
        let per_ip = Arc::new(Mutex::new(KeyedLimiter::<IpAddr>::new(
            shared.config.conn_rate_per_ip,
            shared.config.conn_burst_per_ip,
        )));
        let sessions =
            crate::http_transport::Sessions::new(slots.clone(), per_ip.clone(), &shared.config);
        let mut tasks = tokio::task::JoinSet::new();
        let lag_meter = tokio::spawn({
            let metrics = shared.metrics.clone();
            async move { metrics.run_lag_meter(Duration::from_millis(10)).await }
        });
        let mut hub_ended = None;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                ended = &mut hub => {
                    let detail = match ended {
                        Ok(()) => "it returned".to_owned(),
                        Err(e) if e.is_panic() => {
                            let panic = e.into_panic();
                            panic
                                .downcast_ref::<&str>()
                                .map(|s| (*s).to_owned())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .map_or_else(|| "it panicked".to_owned(), |m| format!("it panicked: {m}"))
                        }
                        Err(e) => e.to_string(),
                    };
                    tracing::error!(%detail, "the hub task stopped; stopping the server");
                    hub_ended = Some(detail);
                    break;
                }
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(v) => v,
                        Err(e) => {
                            // EMFILE and friends: back off briefly instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    shared.metrics.accepted_total.fetch_add(1, Ordering::Relaxed);
                    let now = tokio::time::Instant::now().into_std();
                    let allowed = per_ip
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .check(&peer.ip(), now)
                        .is_ok();
                    if !allowed {
                        shared.metrics.refused(Refusal::RateLimited);
                        drop(stream);
                        continue;
                    }
                    // The guard moves into the task and gives the slot back
                    // when the task ends, panics included.
                    match slots.admit(peer.ip()) {
                        Admission::Serve(slot) => {
                            let key = sessions.next_key();
                            let shared = shared.clone();
                            let sessions = sessions.clone();
                            tasks.spawn(async move {
                                let _slot = slot;
                                crate::conn::serve(stream, peer, shared, key, sessions).await;
                            });
                        }
                        Admission::ProbeOnly(slot) => {
                            shared.metrics.refused(Refusal::Capacity);
                            let shared = shared.clone();
                            tasks.spawn(async move {
                                let _slot = slot;
                                answer_probe(stream, peer, &shared).await;
                            });
                        }
                        Admission::PerIp => {
                            shared.metrics.refused(Refusal::PerIp);
                            drop(stream);
                        }
                        Admission::Full => {
                            shared.metrics.refused(Refusal::Capacity);
                            drop(stream);
                        }
                    }
                    while tasks.try_join_next().is_some() {}
                }
            }
        }
        drop(listener);
        let _ = api_stop.send(());
        if let Some(mut task) = api_task {
            let grace = Duration::from_secs(shared.config.shutdown_grace_s.min(2));
            if tokio::time::timeout(grace, &mut task).await.is_err() {
                task.abort();
            }
        }
        lag_meter.abort();
        tracing::info!(connections = slots.open(), "shutting down");
        // Calls first. In memory, the hub ends every live call and queues
        // the news to each connection, which writes it before its `closing`
        // message; durable, it syncs the journal, lets go of the data
        // directory and ends nothing (the next start picks the calls up).
        let (done, ended) = tokio::sync::oneshot::channel();
        if shared.hub.send(HubMsg::Shutdown { done }).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), ended).await;
        }
        // A cluster node hands the lease back (if it led) so another node
        // takes over now rather than when the lease expires.
        if let Some(stop) = &seat_stop {
            let _ = stop.send(true);
        }
        let _ = shutdown_tx.send(true);
        let grace = Duration::from_secs(shared.config.shutdown_grace_s);
        let ended = async {
            while tasks.join_next().await.is_some() {}
            sessions.idle().await;
        };
        if tokio::time::timeout(grace, ended).await.is_err() {
            tracing::warn!("grace period over; dropping the remaining connections");
            tasks.abort_all();
        }
        drop(shared);
        if let Some(detail) = hub_ended {
            return Err(ServerError::HubStopped { detail });
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), hub).await;
        tracing::info!("stopped");
        Ok(())
    }

    /// Runs in a background task; for tests and examples.
    pub fn spawn(self) -> RunningServer {
        let addr = self.local_addr();
        let tls = self.shared.tls.is_some();
        let api_addr = self.api_addr();
        let authority = self.shared.authority.clone();
        let metrics = self.shared.metrics.clone();
        let hub = self.shared.hub.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(self.run(async move {
            let _ = stop_rx.await;
        }));
        RunningServer {
            addr,
            tls,
            api_addr,
            authority,
            metrics,
            hub,
            stop: Some(stop_tx),
            task,
        }
    }
}

/// A single node's hub: in memory, or recovered from the data directory;
/// with webhooks and push when configured.
fn single_hub(
    config: &Config,
    sb: invitation_core::SwitchboardConfig,
    delivery: Option<Delivery>,
    metrics: Arc<Metrics>,
) -> Result<Hub, ServerError> {
    let limits = HubLimits::from_config(config);
    let hub = match config.store_options() {
        Some(options) => {
            let retention = config.record_retention();
            Hub::recover(
                sb,
                limits,
                config.shed_after(),
                metrics.clone(),
                options,
                retention,
            )?
        }
        None => Hub::new(sb, limits, config.shed_after(), metrics.clone()),
    };
    let hub = if let Some(delivery) = delivery {
        tracing::info!(
            endpoints = config.webhook_urls.len(),
            "webhooks on: every call event is sent to each endpoint"
        );
        let webhooks = match config.store_options() {
            Some(options) => {
                let dir = options.dir.join("webhooks");
                Webhooks::start_durable(
                    &config.webhook_urls,
                    delivery,
                    metrics.clone(),
                    &dir,
                    options.durability == crate::store::Durability::Fsync,
                )
                .map_err(|source| crate::store::StoreError::Io { path: dir, source })?
            }
            None => Webhooks::start(&config.webhook_urls, delivery, metrics.clone()),
        };
        hub.with_webhooks(webhooks)
    } else {
        hub
    };
    let hub = match PushSettings::from_config(config)? {
        Some(settings) => {
            tracing::info!(gateway = %settings.url, "push on: devices that are not connected are woken through the gateway");
            hub.with_pushes(Pushes::start(settings, metrics.clone()))
        }
        None => hub,
    };
    Ok(hub)
}

/// A cluster node: its edge (what the hub is on a single node) and its
/// seat (campaigning for the lease, leading when it holds it), both in the
/// task the server watches as its hub. The seat stops when told, after
/// handing the lease back.
async fn start_cluster(
    config: &Config,
    sb: invitation_core::SwitchboardConfig,
    delivery: Option<Delivery>,
    metrics: Arc<Metrics>,
    hub_rx: mpsc::Receiver<HubMsg>,
) -> Result<(JoinHandle<()>, watch::Sender<bool>), ServerError> {
    use crate::cluster::{Nats, edge::Edge, seat::Seat};
    let url = config.nats_url.as_deref().expect("cluster mode");
    let nats = Nats::connect(url, &config.cluster_name).await?;
    let node = format!(
        "{}-{}",
        config.node_name.as_deref().unwrap_or("node"),
        random_suffix()
    );
    let lease_ttl = Duration::from_millis(config.cluster_lease_ms);
    let local = Arc::new(crate::cluster::LocalSeat::new(None));
    let edge = Edge::start(
        &nats,
        &node,
        lease_ttl,
        config.record_retention(),
        metrics.clone(),
        local.subscribe(),
    )
    .await?;
    if config.store_options().is_some() {
        tracing::info!("cluster mode: the state is kept in JetStream; data_dir is not used");
    }
    let urls = config.webhook_urls.clone();
    let push = PushSettings::from_config(config)?;
    let hook_metrics = metrics.clone();
    let decorate = move |hub: Hub| {
        let hub = match &delivery {
            Some(delivery) => hub.with_webhooks(Webhooks::start(
                &urls,
                delivery.clone(),
                hook_metrics.clone(),
            )),
            None => hub,
        };
        match &push {
            Some(settings) => {
                hub.with_pushes(Pushes::start(settings.clone(), hook_metrics.clone()))
            }
            None => hub,
        }
    };
    let seat = Seat {
        nats,
        node: node.clone(),
        lease_ttl,
        config: sb,
        server: config.clone(),
        metrics,
        decorate: Box::new(decorate),
        local,
    };
    tracing::info!(%node, cluster = %config.cluster_name, lease_ms = config.cluster_lease_ms,
        "cluster node: serving connections; the switchboard runs on the lease holder");
    let (stop_tx, stop_rx) = watch::channel(false);
    let seat = tokio::spawn(seat.run(stop_rx));
    let hub = tokio::spawn(async move {
        edge.run(hub_rx).await;
        // The edge stops with the server: give the seat a moment to hand
        // the lease back.
        let _ = tokio::time::timeout(Duration::from_secs(2), seat).await;
    });
    Ok((hub, stop_tx))
}

/// Eight random hex digits: a node's name differs per start, so its
/// connections from before a restart are never taken for its new ones.
fn random_suffix() -> String {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).expect("the OS has randomness");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Answers a connection taken from the probe reserve (every regular slot is
/// taken): `/healthz` (200 while the hub runs, 503 once it stopped) and
/// `/metrics`; anything else, a WebSocket upgrade included, gets 503. The
/// request head must arrive within the handshake timeout, at most 2 s.
async fn answer_probe(stream: TcpStream, peer: SocketAddr, shared: &Shared) {
    let limit = shared
        .config
        .handshake_timeout()
        .min(Duration::from_secs(2));
    // TLS (when on) and the request head share the one deadline.
    let deadline = tokio::time::Instant::now() + limit;
    let Some(mut stream) = crate::tls::handshake(stream, shared.tls.as_ref(), deadline, peer).await
    else {
        return;
    };
    let Ok(Ok((route, _))) = tokio::time::timeout_at(deadline, http::read_head(&mut stream)).await
    else {
        return;
    };
    let (status, content_type, body) = match route {
        Route::Health => {
            let (status, body) = crate::conn::health(shared);
            (status, "text/plain", body.to_owned())
        }
        Route::Metrics => (
            "200 OK",
            "text/plain; version=0.0.4",
            shared.metrics.render(),
        ),
        Route::Upgrade { .. } | Route::Sessions | Route::NotFound | Route::Demo(_) => (
            "503 Service Unavailable",
            "text/plain",
            "server full\n".to_owned(),
        ),
    };
    let _ = tokio::time::timeout(
        limit,
        http::respond(&mut stream, status, content_type, &body),
    )
    .await;
}

/// A server running in the background.
pub struct RunningServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Whether it serves TLS (its URLs are `wss://` and `https://`).
    pub tls: bool,
    /// Where its HTTP API listens, when it is on.
    pub api_addr: Option<SocketAddr>,
    /// Its token authority.
    pub authority: Authority,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    hub: mpsc::Sender<HubMsg>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl RunningServer {
    /// `ws://addr/`, or `wss://addr/` when it serves TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}/", self.addr)
    }

    /// A token for `user`, valid for an hour.
    pub fn token(&self, user: &str, name: &str) -> String {
        self.authority.mint(
            &invitation_core::UserId::new(user).expect("valid user id"),
            name,
            Duration::from_secs(3600),
        )
    }

    /// A page of ended-call records (empty for an in-memory server): the
    /// calls `query.user` took part in that ended in `query.from..query.to`
    /// (unix nanoseconds), by end time, after `query.cursor`.
    pub async fn call_records(&self, query: RecordQuery) -> Result<Page, RecordError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let stopped = || RecordError::Io {
            path: std::path::PathBuf::new(),
            source: std::io::Error::other("the server stopped"),
        };
        self.hub
            .send(HubMsg::Records { query, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// A command an app's backend sends on behalf of `user`: `invite` (the
    /// call's inviting device is `backend`; every device of the user hears
    /// of it), `cancel`, `hang_up`, `end`, `add`. `request` is its
    /// idempotency key: the same request again is answered, not run again.
    /// Answered once the command is journaled (durable servers).
    pub async fn backend_command(
        &self,
        user: invitation_core::User,
        request: invitation_core::RequestId,
        command: invitation_core::protocol::Command,
    ) -> Result<invitation_core::protocol::ReplyResult, invitation_core::CommandError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let gone = || invitation_core::CommandError::Unavailable {
            retry_after_ms: 1000,
        };
        self.hub
            .send(HubMsg::Backend {
                user,
                request,
                command,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Graceful shutdown; waits until it finished.
    pub async fn stop(self) {
        let RunningServer {
            stop, task, hub, ..
        } = self;
        // The hub runs until its last sender goes: this one too.
        drop(hub);
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        let _ = task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            listen: "127.0.0.1:0".parse().expect("address"),
            secret: Some("0123456789abcdef0123".into()),
            ..Config::default()
        }
    }

    /// If the hub task dies, `run` does not go on serving a zombie: it shuts
    /// down and returns `HubStopped` with the panic (main exits non-zero).
    #[tokio::test]
    async fn a_dead_hub_stops_the_server() {
        let mut server = Server::bind(config()).await.expect("binds");
        // The real hub, replaced by one with a bug.
        server.hub.abort();
        server.hub = tokio::spawn(async {
            tokio::task::yield_now().await;
            panic!("a bug in the hub");
        });
        let ended =
            tokio::time::timeout(Duration::from_secs(10), server.run(std::future::pending()))
                .await
                .expect("run returns once the hub is gone");
        match ended {
            Err(ServerError::HubStopped { detail }) => {
                assert!(detail.contains("a bug in the hub"), "{detail}")
            }
            other => panic!("expected HubStopped, got {other:?}"),
        }
    }
}
