//! Accepting connections, per-IP limits, and graceful shutdown.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::auth::{Authority, random_secret};
use crate::config::{Config, ConfigError};
use crate::hub::{Hub, HubMsg};
use crate::metrics::{Metrics, Refusal};
use crate::rate::KeyedLimiter;

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
}

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    hub: JoinHandle<()>,
    generated_secret: Option<String>,
}

impl Server {
    /// Validates the settings, binds the address and starts the hub.
    pub async fn bind(mut config: Config) -> Result<Self, ServerError> {
        let sb = config.validate()?;
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
        let metrics = Arc::new(Metrics::default());
        let (hub_tx, hub_rx) = mpsc::channel(4096);
        let hub = Hub::new(
            sb,
            config.invite_rate_per_user,
            config.invite_burst_per_user,
            config.shed_after(),
            metrics.clone(),
        );
        let hub = tokio::spawn(hub.run(hub_rx));
        let (shutdown_tx, shutdown) = watch::channel(false);
        Ok(Self {
            listener,
            shared: Arc::new(Shared {
                conn_config: Arc::new(config.connection_config()),
                config,
                authority,
                metrics,
                hub: hub_tx,
                shutdown,
            }),
            shutdown_tx,
            hub,
            generated_secret,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
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
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            listener,
            shared,
            shutdown_tx,
            hub,
            ..
        } = self;
        let active = Arc::new(AtomicUsize::new(0));
        // Connection ids are never reused: a late message about a closed
        // connection cannot reach a new one.
        let next_key = AtomicU64::new(1);
        let per_ip = Mutex::new(KeyedLimiter::<IpAddr>::new(
            shared.config.conn_rate_per_ip,
            shared.config.conn_burst_per_ip,
        ));
        let mut tasks = tokio::task::JoinSet::new();
        let lag_meter = tokio::spawn({
            let metrics = shared.metrics.clone();
            async move { metrics.run_lag_meter(Duration::from_millis(10)).await }
        });
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
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
                    if per_ip.lock().expect("limiter").check(&peer.ip(), now).is_err() {
                        shared.metrics.refused(Refusal::RateLimited);
                        drop(stream);
                        continue;
                    }
                    if active.load(Ordering::Relaxed) >= shared.config.max_connections {
                        shared.metrics.refused(Refusal::Capacity);
                        drop(stream);
                        continue;
                    }
                    active.fetch_add(1, Ordering::Relaxed);
                    let key = invitation_core::ConnId::new(next_key.fetch_add(1, Ordering::Relaxed));
                    let (shared, active) = (shared.clone(), active.clone());
                    tasks.spawn(async move {
                        crate::conn::serve(stream, peer, shared, key).await;
                        active.fetch_sub(1, Ordering::Relaxed);
                    });
                    while tasks.try_join_next().is_some() {}
                }
            }
        }
        drop(listener);
        lag_meter.abort();
        tracing::info!(
            connections = active.load(Ordering::Relaxed),
            "shutting down"
        );
        // Calls first: the hub ends every live call and queues the news to
        // each connection, which writes it before its `closing` message.
        let (done, ended) = tokio::sync::oneshot::channel();
        if shared.hub.send(HubMsg::Shutdown { done }).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), ended).await;
        }
        let _ = shutdown_tx.send(true);
        let grace = Duration::from_secs(shared.config.shutdown_grace_s);
        if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tracing::warn!("grace period over; dropping the remaining connections");
            tasks.abort_all();
        }
        drop(shared);
        let _ = tokio::time::timeout(Duration::from_secs(1), hub).await;
        tracing::info!("stopped");
    }

    /// Runs in a background task; for tests and examples.
    pub fn spawn(self) -> RunningServer {
        let addr = self.local_addr();
        let authority = self.shared.authority.clone();
        let metrics = self.shared.metrics.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(self.run(async move {
            let _ = stop_rx.await;
        }));
        RunningServer {
            addr,
            authority,
            metrics,
            stop: Some(stop_tx),
            task,
        }
    }
}

/// A server running in the background.
pub struct RunningServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its token authority.
    pub authority: Authority,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningServer {
    /// `ws://addr/`.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// A token for `user`, valid for an hour.
    pub fn token(&self, user: &str, name: &str) -> String {
        self.authority.mint(
            &invitation_core::UserId::new(user).expect("valid user id"),
            name,
            Duration::from_secs(3600),
        )
    }

    /// Graceful shutdown; waits until it finished.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}
