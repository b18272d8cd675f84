//! The flows across a three-node cluster on a real NATS: each new device
//! connects to the next node in turn, so a caller and their callee, or two
//! devices of one user, are on different nodes; and each time a device
//! reconnects it lands on the next node again, so every resume (offline
//! holds, a reconnect while ringing) crosses nodes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use invitation::prelude::*;
use invitation::testing::Recorder;
use invitation::transport::{
    BoxConnection, BoxTransport, Transport, TransportError, ws::WsTransport,
};
use invitation_server::RunningServer;

use super::{Breakable, Dev, Fixture, connected, handlers};
use crate::common::nats::{NatsServer, nats_server};

/// Three nodes of one deployment on one `nats-server`.
pub struct Cluster {
    pub nodes: Vec<RunningServer>,
    next: AtomicUsize,
    pub nats: NatsServer,
}

impl Cluster {
    /// Three nodes (lease 1 s) once each knows the leader; `None` when
    /// nats-server is missing (and not required).
    pub async fn start(test: &str) -> Option<Self> {
        Self::start_with(test, 3, |_| {}).await
    }

    /// `n` nodes, each configured by `tweak` as well.
    pub async fn start_with(
        test: &str,
        n: usize,
        tweak: impl Fn(&mut invitation_server::Config),
    ) -> Option<Self> {
        let nats = nats_server(test).await?;
        let mut nodes = Vec::new();
        for i in 0..n {
            nodes.push(
                crate::common::server(|c| {
                    c.caller_gone_grace_s = 1;
                    c.nats_url = Some(nats.url.clone());
                    c.cluster_name = "flows".into();
                    c.node_name = Some(format!("n{i}"));
                    c.cluster_lease_ms = 1000;
                    tweak(c);
                })
                .await,
            );
        }
        let cluster = Self {
            nodes,
            next: AtomicUsize::new(0),
            nats,
        };
        cluster.settled().await;
        Some(cluster)
    }

    /// Waits until one node leads and every node follows it (at most
    /// [`crate::common::SOON`]).
    pub async fn settled(&self) {
        let deadline = tokio::time::Instant::now() + crate::common::SOON;
        loop {
            let led = self
                .nodes
                .iter()
                .map(|n| n.metrics.cluster_leading.load(Ordering::Relaxed))
                .max()
                .unwrap_or(0);
            let followed: Vec<u64> = self
                .nodes
                .iter()
                .map(|n| n.metrics.cluster_term.load(Ordering::Relaxed))
                .collect();
            if led > 0 && followed.iter().all(|&t| t == led) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no settled leader within {:?}: led term {led}, nodes follow {followed:?}",
                crate::common::SOON
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Which node leads now, if one does.
    pub fn leader(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| {
            self.nodes[i]
                .metrics
                .cluster_leading
                .load(Ordering::Relaxed)
                > 0
        })
    }

    pub async fn stop(self) {
        for node in self.nodes {
            node.stop().await;
        }
    }
}

impl Fixture for Cluster {
    async fn device_configured(
        &self,
        user: &str,
        device: &str,
        extra: Option<Arc<dyn InvitationEvents>>,
        config: invitation_core::SessionConfig,
    ) -> Dev {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let node = &self.nodes[first % self.nodes.len()];
        let name = user.to_uppercase();
        let rec = Recorder::with_deadline(self.deadline());
        let inner: BoxTransport = Arc::new(Rotating {
            nodes: self
                .nodes
                .iter()
                .map(|n| Arc::new(WsTransport::new(n.url())) as BoxTransport)
                .collect(),
            next: AtomicUsize::new(first),
        });
        let (transport, link) = Breakable::new(inner);
        let client = handlers(Client::builder(), &rec, extra)
            .user(User::named(user, &name))
            .device(device)
            .token(node.token(user, &name))
            .session_config(config)
            .transport(transport)
            .backoff(Duration::from_millis(20), Duration::from_millis(200))
            .build()
            .unwrap();
        connected(client, rec, Some(link)).await
    }

    fn ring_s(&self) -> u32 {
        1
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

    fn break_link(&self, dev: &Dev) {
        dev.link.as_ref().expect("a breakable link").break_link();
    }
}

/// Connects to the next node each time.
struct Rotating {
    nodes: Vec<BoxTransport>,
    next: AtomicUsize,
}

#[async_trait]
impl Transport for Rotating {
    async fn connect(&self) -> Result<BoxConnection, TransportError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.nodes.len();
        self.nodes[i].connect().await
    }
}
