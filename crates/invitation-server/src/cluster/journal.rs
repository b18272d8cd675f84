//! An append-only log in a JetStream stream that only one writer at a time
//! can extend: each append names the sequence it expects to follow.

use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use async_nats::jetstream::stream;
use futures_util::StreamExt;

use super::{ClusterError, Fence, Nats};

/// How long a read may wait for a message the stream says it holds.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A node's handle on the deployment's switchboard log.
///
/// `last` is the sequence of the last entry this node has seen (read or
/// appended). [`FencedLog::append`] succeeds only if it is still the
/// stream's last: a node that missed another's appends gets
/// [`ClusterError::Fenced`] and must [`FencedLog::catch_up`] first, so the
/// log never holds entries decided on different histories.
#[derive(Debug)]
pub struct FencedLog {
    nats: Nats,
    stream: String,
    /// The stream's handle, from [`FencedLog::open`].
    handle: stream::Stream,
    subject: String,
    last: u64,
}

impl FencedLog {
    /// The deployment's log (made on first use), positioned before its
    /// first entry: [`FencedLog::catch_up`] reads it all.
    pub async fn open(nats: &Nats, name: &str) -> Result<Self, ClusterError> {
        let stream = nats.stream_name(name);
        let subject = nats.subject(&name.to_ascii_lowercase());
        let handle = nats
            .ensure_stream(
                stream::Config {
                    name: stream.clone(),
                    subjects: vec![subject.clone()],
                    storage: stream::StorageType::File,
                    ..Default::default()
                },
                "log stream",
            )
            .await?;
        Ok(Self {
            nats: nats.clone(),
            stream,
            handle,
            subject,
            last: 0,
        })
    }

    /// The sequence of the last entry seen (0: none).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Positions the log after `seq` (where a snapshot left it): the next
    /// [`FencedLog::catch_up`] reads from `seq + 1`.
    pub fn skip_to(&mut self, seq: u64) {
        self.last = self.last.max(seq);
    }

    /// Drops every entry before `seq` (a snapshot covers them).
    pub async fn trim_before(&mut self, seq: u64) -> Result<(), ClusterError> {
        let oldest = self
            .handle
            .info()
            .await
            .map_err(|e| ClusterError::js("log trim", e))?
            .state
            .first_sequence;
        if oldest >= seq {
            return Ok(());
        }
        self.handle
            .purge()
            .sequence(seq)
            .await
            .map_err(|e| ClusterError::js("log trim", e))?;
        Ok(())
    }

    /// Appends `entry` right after the last entry seen; its sequence.
    pub async fn append(&mut self, entry: Vec<u8>) -> Result<u64, ClusterError> {
        let appended = self
            .nats
            .publish_fenced(
                &self.subject,
                entry,
                Fence::LastSequence(self.last),
                "log publish",
            )
            .await?;
        let seq = appended.ok_or_else(|| ClusterError::Fenced {
            stream: self.stream.clone(),
            expected: self.last,
        })?;
        self.last = seq;
        Ok(seq)
    }

    /// Reads every entry after the last one seen, in order, up to the
    /// stream's end as of the call; returns them with their sequences.
    pub async fn catch_up(&mut self) -> Result<Vec<(u64, Vec<u8>)>, ClusterError> {
        let end = self
            .handle
            .info()
            .await
            .map_err(|e| ClusterError::js("log info", e))?
            .state
            .last_sequence;
        if end <= self.last {
            return Ok(Vec::new());
        }
        let consumer = self
            .handle
            .create_consumer(OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: self.last + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| ClusterError::js("log consumer", e))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| ClusterError::js("log read", e))?;
        let mut entries = Vec::new();
        while self.last < end {
            let next = tokio::time::timeout(READ_TIMEOUT, messages.next())
                .await
                .map_err(|_| ClusterError::js("log read", "timed out"))?;
            let Some(message) = next else {
                return Err(ClusterError::js("log read", "the stream ended early"));
            };
            let message = message.map_err(|e| ClusterError::js("log read", e))?;
            let seq = message
                .info()
                .map_err(|e| ClusterError::js("log read", e))?
                .stream_sequence;
            if seq != self.last + 1 {
                // Trimmed under us (a snapshot now covers what we missed):
                // the caller must start again from that snapshot.
                return Err(ClusterError::js(
                    "log read",
                    format!(
                        "expected entry {} next, the log holds {seq}: trimmed",
                        self.last + 1
                    ),
                ));
            }
            self.last = seq;
            entries.push((seq, message.payload.to_vec()));
        }
        Ok(entries)
    }
}
