//! Several server nodes on NATS JetStream (docs/architecture.md, "Several
//! nodes").
//!
//! Every node is an edge (module `edge`): it serves connections and the
//! HTTP API, and hands what they say to the node that runs the switchboard
//! (its own edge hands them to it directly). One node at a time runs it
//! (module `seat`), holding a [`Lease`]; it appends the switchboard's inputs
//! to a [`FencedLog`] before acting on them, and snapshots the state now and
//! then (module `state`). When it dies, another node takes the lease, rebuilds the state from the snapshot and the log (the
//! switchboard is deterministic given its inputs and their times) and leads.
//! The lease and the log are plain JetStream streams, fenced by JetStream's
//! expected-sequence checks rather than by clocks: a node that lost its
//! lease without noticing cannot append, because its idea of the log's last
//! sequence is stale, so it never tells a client what the log does not hold.
//!
//! Why plain streams and not JetStream's key-value buckets for the lease:
//! the NATS server this project deploys with (2.9, Debian's) answers the
//! bucket creation of current `async-nats` in a form the client cannot
//! parse; a stream that keeps one message per subject, with a maximum
//! age, is what a bucket is underneath, and works on 2.9 and later.

pub(crate) mod edge;
mod journal;
mod lease;
pub(crate) mod records;
pub(crate) mod seat;
pub(crate) mod state;
pub(crate) mod wire;

use std::time::Duration;

pub use journal::FencedLog;
pub use lease::Lease;

/// What can go wrong talking to NATS.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The NATS server could not be reached (or refused the connection).
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect {
        /// The URL dialled.
        url: String,
        /// Why, as the client said it.
        reason: String,
    },
    /// Another node appended first: this node's view of the log is stale
    /// (it must catch up, and if it believed it led, step down).
    #[error("log {stream}: another writer appended after sequence {expected}")]
    Fenced {
        /// The stream appended to.
        stream: String,
        /// The last sequence this node knew.
        expected: u64,
    },
    /// The lease is held by another node (or expired and was taken).
    #[error("lease {stream}: held by another node")]
    LeaseLost {
        /// The lease's stream.
        stream: String,
    },
    /// Any other JetStream failure (timeouts, a server without JetStream).
    #[error("JetStream ({what}): {reason}")]
    JetStream {
        /// The operation.
        what: &'static str,
        /// Why, as the client said it.
        reason: String,
    },
}

impl ClusterError {
    pub(crate) fn js(what: &'static str, e: impl std::fmt::Display) -> Self {
        Self::JetStream {
            what,
            reason: e.to_string(),
        }
    }
}

/// A connection to the NATS deployment, and the name that keeps this
/// deployment's streams apart from others on the same NATS.
#[derive(Clone, Debug)]
pub struct Nats {
    js: async_nats::jetstream::Context,
    deployment: String,
}

impl Nats {
    /// Connects to `url`; every stream this deployment makes is named
    /// `INV_<deployment>_...` (`deployment`: letters, digits, `_`, `-`).
    pub async fn connect(url: &str, deployment: &str) -> Result<Self, ClusterError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| ClusterError::Connect {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            js: async_nats::jetstream::new(client),
            deployment: deployment.to_owned(),
        })
    }

    /// The plain NATS client (for core publish/subscribe).
    pub(crate) fn client(&self) -> async_nats::Client {
        self.js.client()
    }

    /// The JetStream context.
    pub(crate) fn jetstream(&self) -> &async_nats::jetstream::Context {
        &self.js
    }

    fn stream_name(&self, what: &str) -> String {
        format!("INV_{}_{what}", self.deployment)
    }

    pub(crate) fn subject(&self, what: &str) -> String {
        format!("inv.{}.{what}", self.deployment)
    }

    /// The stream, made unless it exists.
    async fn ensure_stream(
        &self,
        config: async_nats::jetstream::stream::Config,
        what: &'static str,
    ) -> Result<async_nats::jetstream::stream::Stream, ClusterError> {
        self.js
            .get_or_create_stream(config)
            .await
            .map_err(|e| ClusterError::js(what, e))
    }

    /// Publishes `payload` on `subject` if the stream is where `fence`
    /// says: the new message's sequence, or `None` when the fence refused
    /// it (another writer got there first).
    async fn publish_fenced(
        &self,
        subject: &str,
        payload: Vec<u8>,
        fence: Fence,
        what: &'static str,
    ) -> Result<Option<u64>, ClusterError> {
        use async_nats::jetstream::context::PublishErrorKind;
        use async_nats::jetstream::message::PublishMessage;
        let message = PublishMessage::build().payload(payload.into());
        let message = match fence {
            Fence::LastSequence(seq) => message.expected_last_sequence(seq),
            Fence::LastSubjectSequence(seq) => message.expected_last_subject_sequence(seq),
        };
        let ack = self
            .js
            .send_publish(subject.to_owned(), message)
            .await
            .map_err(|e| ClusterError::js(what, e))?
            .await;
        match ack {
            Ok(ack) => Ok(Some(ack.sequence)),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
            Err(e) => Err(ClusterError::js(what, e)),
        }
    }
}

/// The hub this node runs while it leads, and the term it leads: the
/// node's own edge hands its connections' inputs straight to it (no NATS
/// hop for clients of the leader). `None` while another node leads.
pub(crate) type LocalSeat =
    tokio::sync::watch::Sender<Option<(u64, tokio::sync::mpsc::Sender<crate::hub::HubMsg>)>>;

/// The switchboard's state as the deployment's JetStream holds it now: the
/// newest snapshot and every journal entry after it, what a node that takes
/// the lead starts from (for tools and tests; rebuild it with
/// `invitation_core::durable::Durable::recover`).
pub async fn read_state(
    nats: &Nats,
) -> Result<
    (
        Option<invitation_core::durable::SwitchboardSnapshot>,
        Vec<invitation_core::durable::JournalEntry>,
    ),
    ClusterError,
> {
    let loaded = state::load(nats).await?;
    Ok((loaded.snapshot, loaded.entries))
}

/// `at` (a process instant) in unix nanoseconds: how instants travel
/// between nodes (whose monotonic clocks share nothing).
pub(crate) fn unix_ns_of(at: tokio::time::Instant) -> i64 {
    let now = crate::hub::unix_ns_now();
    let ago = i64::try_from(at.elapsed().as_nanos()).unwrap_or(i64::MAX);
    now.saturating_sub(ago)
}

/// The process instant of unix time `ns` (now, if that is in the future
/// or too far back).
pub(crate) fn instant_of(ns: i64) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    let ago = unix_ns_of(now).saturating_sub(ns);
    u64::try_from(ago)
        .ok()
        .and_then(|ago| now.checked_sub(Duration::from_nanos(ago)))
        .unwrap_or(now)
}

/// Where a fenced publish expects the stream to be.
#[derive(Clone, Copy, Debug)]
enum Fence {
    /// The stream's last message has this sequence (0: empty).
    LastSequence(u64),
    /// The subject's last message has this sequence (0: none).
    LastSubjectSequence(u64),
}
