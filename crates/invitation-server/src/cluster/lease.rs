//! Who runs the switchboard: a lease in a JetStream stream that keeps one
//! message (the holder's name) for at most `ttl`.

use std::time::Duration;

use async_nats::jetstream::stream;

use super::{ClusterError, Fence, Nats};

/// One node's handle on the deployment's lease.
///
/// Taking it appends the node's name with "no message on the subject yet"
/// as the expected state; renewing appends again expecting the sequence of
/// its own last message. JetStream refuses either when the state differs,
/// so two nodes can never both believe a renewal succeeded. The message
/// expires `ttl` after the last renewal; a holder must renew well within it
/// (a third of it is the usual choice) and stop leading as soon as a
/// renewal is refused or has not succeeded for `ttl`.
#[derive(Debug)]
pub struct Lease {
    nats: Nats,
    stream: String,
    /// The stream's handle, from [`Lease::open`].
    handle: stream::Stream,
    subject: String,
    node: String,
    /// The sequence of our own last message, while we hold the lease.
    held: Option<u64>,
}

impl Lease {
    /// The deployment's lease (made on first use), as seen by `node`.
    pub async fn open(nats: &Nats, node: &str, ttl: Duration) -> Result<Self, ClusterError> {
        let stream = nats.stream_name("LEASE");
        let subject = nats.subject("lease");
        let handle = nats
            .ensure_stream(
                stream::Config {
                    name: stream.clone(),
                    subjects: vec![subject.clone()],
                    max_messages_per_subject: 1,
                    max_age: ttl,
                    ..Default::default()
                },
                "lease stream",
            )
            .await?;
        Ok(Self {
            nats: nats.clone(),
            stream,
            handle,
            subject,
            node: node.to_owned(),
            held: None,
        })
    }

    /// Takes the lease if nobody holds it (nobody renewed it within its
    /// time to live, or its holder handed it back); `false` when another
    /// node does.
    pub async fn try_take(&mut self) -> Result<bool, ClusterError> {
        let free_since = match self
            .handle
            .get_last_raw_message_by_subject(&self.subject)
            .await
        {
            Ok(m) if m.payload.is_empty() => m.sequence,
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => 0,
            Err(e) => return Err(ClusterError::js("lease holder", e)),
        };
        match self.append(free_since).await {
            Ok(seq) => {
                self.held = Some(seq);
                Ok(true)
            }
            Err(ClusterError::LeaseLost { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Extends the lease by its time to live; [`ClusterError::LeaseLost`]
    /// when it expired and another node took it (or it was never held).
    pub async fn renew(&mut self) -> Result<(), ClusterError> {
        let Some(last) = self.held else {
            return Err(ClusterError::LeaseLost {
                stream: self.stream.clone(),
            });
        };
        match self.append(last).await {
            Ok(seq) => {
                self.held = Some(seq);
                Ok(())
            }
            Err(e) => {
                if matches!(e, ClusterError::LeaseLost { .. }) {
                    self.held = None;
                }
                Err(e)
            }
        }
    }

    /// Hands the lease back (an empty message in its place, fenced like
    /// a renewal): another node can take it at once instead of waiting for
    /// it to expire.
    pub async fn release(&mut self) -> Result<(), ClusterError> {
        let Some(last) = self.held.take() else {
            return Ok(());
        };
        self.nats
            .publish_fenced(
                &self.subject,
                Vec::new(),
                Fence::LastSubjectSequence(last),
                "lease release",
            )
            .await?;
        Ok(())
    }

    /// Whether this node believes it holds the lease (its last take or
    /// renewal succeeded).
    pub fn held(&self) -> bool {
        self.held.is_some()
    }

    /// The node that holds the lease now, if any.
    pub async fn holder(&self) -> Result<Option<String>, ClusterError> {
        match self
            .handle
            .get_last_raw_message_by_subject(&self.subject)
            .await
        {
            Ok(m) if m.payload.is_empty() => Ok(None),
            Ok(m) => Ok(Some(String::from_utf8_lossy(&m.payload).into_owned())),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(ClusterError::js("lease holder", e)),
        }
    }

    async fn append(&self, expected: u64) -> Result<u64, ClusterError> {
        self.nats
            .publish_fenced(
                &self.subject,
                self.node.clone().into_bytes(),
                Fence::LastSubjectSequence(expected),
                "lease publish",
            )
            .await?
            .ok_or_else(|| ClusterError::LeaseLost {
                stream: self.stream.clone(),
            })
    }
}
