//! The switchboard's state in JetStream: the log of its inputs (one record
//! per hub turn, appended before the turn's messages leave) and the newest
//! snapshot, after which the log is trimmed. What the data directory is to
//! a single durable node, for a cluster.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::jetstream::stream;
use invitation_core::durable::{JournalEntry, SwitchboardSnapshot};
use serde::{Deserialize, Serialize};

use super::wire::Record;
use super::{ClusterError, FencedLog, Nats};
use crate::metrics::Metrics;

/// The log's name (stream `INV_<deployment>_LOG`).
const LOG: &str = "LOG";

/// Largest log record or snapshot piece, bytes: well under NATS's default
/// 1 MiB message limit.
const PIECE: usize = 256 * 1024;

/// Where the newest snapshot is: pieces `first..first + count` of the
/// snapshot stream, covering the log up to `log_seq`.
#[derive(Debug, Serialize, Deserialize)]
struct Head {
    first: u64,
    count: u64,
    log_seq: u64,
}

/// The snapshot stream's subjects.
fn snap_subjects(nats: &Nats) -> (String, String) {
    (nats.subject("snap.piece"), nats.subject("snap.head"))
}

/// The stream of snapshot pieces.
async fn snap_stream(nats: &Nats) -> Result<stream::Stream, ClusterError> {
    let (piece, _) = snap_subjects(nats);
    nats.ensure_stream(
        stream::Config {
            name: nats.stream_name("SNAP"),
            subjects: vec![piece],
            storage: stream::StorageType::File,
            ..Default::default()
        },
        "snapshot stream",
    )
    .await
}

/// The stream that keeps the newest snapshot head only (its own stream:
/// a purge that keeps one message per subject would not be scoped to a
/// subject on every NATS version).
async fn head_stream(nats: &Nats) -> Result<stream::Stream, ClusterError> {
    let (_, head) = snap_subjects(nats);
    nats.ensure_stream(
        stream::Config {
            name: nats.stream_name("SNAPHEAD"),
            subjects: vec![head],
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            ..Default::default()
        },
        "snapshot head stream",
    )
    .await
}

/// What a node that takes the lead starts from.
pub(crate) struct Loaded {
    /// The newest snapshot, if one was written.
    pub snapshot: Option<SwitchboardSnapshot>,
    /// Every journal entry after it, in order.
    pub entries: Vec<JournalEntry>,
    /// The log, positioned at its end.
    pub log: FencedLog,
}

/// Reads the newest snapshot and the log after it.
pub(crate) async fn load(nats: &Nats) -> Result<Loaded, ClusterError> {
    let snaps = snap_stream(nats).await?;
    let heads = head_stream(nats).await?;
    let (_, head_subject) = snap_subjects(nats);
    // A snapshot written meanwhile (by a leader that does not know yet it
    // was deposed) may trim the pieces of the head just read, or the log
    // right after it: then start again from the newest head.
    let mut tries = 0;
    loop {
        tries += 1;
        match load_once(nats, &snaps, &heads, &head_subject).await {
            Ok(loaded) => return Ok(loaded),
            Err(e) if tries >= 5 => return Err(e),
            Err(e) => tracing::warn!(error = %e, "the state changed while read; reading it again"),
        }
    }
}

async fn load_once(
    nats: &Nats,
    snaps: &stream::Stream,
    heads: &stream::Stream,
    head_subject: &str,
) -> Result<Loaded, ClusterError> {
    let mut log = FencedLog::open(nats, LOG).await?;
    let snapshot = match read_snapshot(snaps, heads, head_subject).await? {
        Some((snapshot, log_seq)) => {
            log.skip_to(log_seq);
            Some(snapshot)
        }
        None => None,
    };
    let mut loaded = Loaded {
        snapshot,
        entries: Vec::new(),
        log,
    };
    catch_up(&mut loaded).await?;
    Ok(loaded)
}

/// The newest snapshot and the log sequence it covers, if one was written.
async fn read_snapshot(
    snaps: &stream::Stream,
    heads: &stream::Stream,
    head_subject: &str,
) -> Result<Option<(SwitchboardSnapshot, u64)>, ClusterError> {
    let head = match heads.get_last_raw_message_by_subject(head_subject).await {
        Ok(m) => serde_json::from_slice::<Head>(&m.payload)
            .map_err(|e| ClusterError::js("snapshot head", e))?,
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => return Ok(None),
        Err(e) => return Err(ClusterError::js("snapshot head", e)),
    };
    let mut bytes = Vec::new();
    for seq in head.first..head.first + head.count {
        let piece = snaps.get_raw_message(seq).await.map_err(|e| {
            ClusterError::js(
                "snapshot piece",
                format!(
                    "{e} (piece {seq} of {}..{})",
                    head.first,
                    head.first + head.count
                ),
            )
        })?;
        bytes.extend_from_slice(&piece.payload);
    }
    let snapshot = serde_json::from_slice(&bytes).map_err(|e| ClusterError::js("snapshot", e))?;
    Ok(Some((snapshot, head.log_seq)))
}

/// Reads what was appended to the log since `loaded` was read.
pub(crate) async fn catch_up(loaded: &mut Loaded) -> Result<(), ClusterError> {
    for (_, bytes) in loaded.log.catch_up().await? {
        match serde_json::from_slice::<Record>(&bytes) {
            Ok(Record::Turn { entries }) => loaded.entries.extend(entries),
            Ok(Record::Term { .. }) => {}
            Err(e) => return Err(ClusterError::js("log record", e)),
        }
    }
    Ok(())
}

/// The leader's writer: appends each turn's entries, and writes a
/// snapshot (then trims the log) once enough was appended since the last.
pub(crate) struct LogSink {
    nats: Nats,
    log: FencedLog,
    since_snapshot: u64,
    snapshot_after: u64,
    writing: Option<tokio::task::JoinHandle<()>>,
    metrics: Arc<Metrics>,
}

impl LogSink {
    pub(crate) fn new(
        nats: Nats,
        log: FencedLog,
        snapshot_after: u64,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            nats,
            log,
            since_snapshot: 0,
            snapshot_after,
            writing: None,
            metrics,
        }
    }

    /// Appends `entries` (drained) as one record, or several when they do
    /// not fit one message. A fenced append means another node leads.
    pub(crate) async fn append(
        &mut self,
        entries: &mut Vec<JournalEntry>,
    ) -> Result<(), ClusterError> {
        let count = entries.len() as u64;
        let mut record = Vec::new();
        for entry in entries.drain(..) {
            if record.is_empty() {
                record.extend_from_slice(br#"{"t":"turn","entries":["#);
            } else {
                record.push(b',');
            }
            serde_json::to_writer(&mut record, &entry).expect("journal entries serialize");
            if record.len() >= PIECE {
                self.flush(std::mem::take(&mut record)).await?;
            }
        }
        if !record.is_empty() {
            self.flush(record).await?;
        }
        self.metrics
            .journal_entries
            .fetch_add(count, Ordering::Relaxed);
        Ok(())
    }

    /// Closes one record and appends it (the buffer becomes the message).
    async fn flush(&mut self, mut record: Vec<u8>) -> Result<(), ClusterError> {
        record.extend_from_slice(b"]}");
        let len = record.len() as u64;
        self.log.append(record).await?;
        self.since_snapshot += len;
        self.metrics.journal_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Publishes the records of calls that ended in a journaled turn, in
    /// the background (a failure is logged and counted, as on one node).
    pub(crate) fn publish_records(&self, records: Vec<crate::records::StoredRecord>) {
        let (nats, metrics) = (self.nats.clone(), self.metrics.clone());
        tokio::spawn(async move {
            let count = records.len();
            if let Err(e) = super::records::publish(&nats, records).await {
                metrics.store_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, lost = count, "cannot publish call records to JetStream");
            }
        });
    }

    /// Whether a snapshot is due (and none is being written).
    pub(crate) fn wants_snapshot(&mut self) -> bool {
        if self.writing.as_ref().is_some_and(|t| !t.is_finished()) {
            return false;
        }
        self.since_snapshot >= self.snapshot_after
    }

    /// Writes `state` (the switchboard as of the log's last record) in the
    /// background, then trims what it covers from the log.
    pub(crate) fn snapshot(&mut self, state: SwitchboardSnapshot) {
        self.since_snapshot = 0;
        let nats = self.nats.clone();
        let log_seq = self.log.last();
        self.metrics.snapshots.fetch_add(1, Ordering::Relaxed);
        self.writing = Some(tokio::spawn(async move {
            match write_snapshot(&nats, &state, log_seq).await {
                Ok(pieces) => tracing::info!(
                    log_seq,
                    pieces,
                    "snapshot written to JetStream; the log before it trimmed"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "cannot write a snapshot to JetStream (the log keeps everything)")
                }
            }
        }));
    }
}

/// Writes a snapshot's pieces, then its head, then trims the pieces of
/// older snapshots and the log it covers. A crash at any point leaves the
/// previous head (and the whole log after it) or the new one.
async fn write_snapshot(
    nats: &Nats,
    state: &SwitchboardSnapshot,
    log_seq: u64,
) -> Result<u64, ClusterError> {
    let bytes = serde_json::to_vec(state).map_err(|e| ClusterError::js("snapshot", e))?;
    let snaps = snap_stream(nats).await?;
    let heads = head_stream(nats).await?;
    let (piece_subject, head_subject) = snap_subjects(nats);
    let js = nats.jetstream();
    let mut first = None;
    let mut count = 0;
    for piece in bytes.chunks(PIECE) {
        let ack = js
            .publish(piece_subject.clone(), piece.to_vec().into())
            .await
            .map_err(|e| ClusterError::js("snapshot piece", e))?
            .await
            .map_err(|e| ClusterError::js("snapshot piece", e))?;
        first.get_or_insert(ack.sequence);
        count += 1;
    }
    let first = first.unwrap_or(0);
    // Heads only move forward: a writer that finds a newer head (a leader
    // deposed while it wrote) gives up, and two writers racing cannot both
    // replace the same head.
    let current = match heads.get_last_raw_message_by_subject(&head_subject).await {
        Ok(m) => Some((
            m.sequence,
            serde_json::from_slice::<Head>(&m.payload)
                .map_err(|e| ClusterError::js("snapshot head", e))?,
        )),
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => None,
        Err(e) => return Err(ClusterError::js("snapshot head", e)),
    };
    if current.as_ref().is_some_and(|(_, h)| h.log_seq >= log_seq) {
        return Err(ClusterError::js("snapshot head", "a newer snapshot exists"));
    }
    let head = serde_json::to_vec(&Head {
        first,
        count,
        log_seq,
    })
    .expect("heads serialize");
    let fence = super::Fence::LastSubjectSequence(current.map_or(0, |(seq, _)| seq));
    if nats
        .publish_fenced(&head_subject, head, fence, "snapshot head")
        .await?
        .is_none()
    {
        return Err(ClusterError::js(
            "snapshot head",
            "another writer moved the head",
        ));
    }
    let mut snaps = snaps;
    let oldest = snaps
        .info()
        .await
        .map_err(|e| ClusterError::js("snapshot trim", e))?
        .state
        .first_sequence;
    // Only when there is something older: a purge up to the stream's first
    // message would empty it on some NATS versions.
    if oldest < first {
        snaps
            .purge()
            .sequence(first)
            .await
            .map_err(|e| ClusterError::js("snapshot trim", e))?;
    }
    let mut log = FencedLog::open(nats, LOG).await?;
    log.trim_before(log_seq + 1).await?;
    Ok(count)
}
