//! Ended-call records of a cluster, in a JetStream stream: one message per
//! record and participant, on a subject of that participant's own, so that
//! any node can page through one user's records without the leader. The
//! stream's maximum age is the retention.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use async_nats::jetstream::stream;
use futures_util::StreamExt;
use invitation_core::UserId;

use super::{ClusterError, Nats};
use crate::hub::RecordQuery;
use crate::records::{Cursor, MAX_PAGE, Page, RecordError, StoredRecord};

/// How far a record's store time may be from its end time (clock skew
/// between the leader and NATS, the publish's delay): reads start this much
/// before the time asked for.
const SKEW: Duration = Duration::from_secs(60);

/// How long a read waits for the next message the stream says it holds.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The subject of `user`'s records: the id in hex (user ids may hold
/// characters that mean something in a subject).
fn subject(nats: &Nats, user: &UserId) -> String {
    let hex: String = user.as_str().bytes().map(|b| format!("{b:02x}")).collect();
    nats.subject(&format!("rec.{hex}"))
}

/// The records stream (made on first use): opened once by a node that
/// leads (before it publishes) and by every edge (for its reads).
pub(crate) async fn open(nats: &Nats, retention: Duration) -> Result<stream::Stream, ClusterError> {
    nats.ensure_stream(
        stream::Config {
            name: nats.stream_name("RECORDS"),
            subjects: vec![nats.subject("rec.*")],
            storage: stream::StorageType::File,
            max_age: retention,
            ..Default::default()
        },
        "records stream",
    )
    .await
}

/// Publishes `records` (after the journal holds the turns that ended
/// them), one message per participant; a record published twice (a new
/// leader replays the journal's tail) is dropped by JetStream within its
/// duplicate window, and by [`list`] after it. The stream was made by
/// [`open`] when this node took the lead.
pub(crate) async fn publish(nats: &Nats, records: Vec<StoredRecord>) -> Result<(), ClusterError> {
    let js = nats.jetstream();
    let mut acks = Vec::new();
    for record in &records {
        let payload = serde_json::to_vec(record).expect("records serialize");
        let mut users: Vec<&UserId> = vec![&record.caller];
        users.extend(record.callees.iter().map(|c| &c.user));
        let mut seen = HashSet::new();
        for user in users.into_iter().filter(|u| seen.insert(*u)) {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                "Nats-Msg-Id",
                format!("{}:{}", record.call_id, user).as_str(),
            );
            let ack = js
                .publish_with_headers(subject(nats, user), headers, payload.clone().into())
                .await
                .map_err(|e| ClusterError::js("record publish", e))?;
            acks.push(ack);
        }
    }
    for ack in acks {
        ack.await
            .map_err(|e| ClusterError::js("record publish", e))?;
    }
    Ok(())
}

/// A page of `query.user`'s records, from any node: their messages from a
/// little before the time asked for, in the order they were published,
/// filtered and sorted as a single node's records are.
pub(crate) async fn list(
    nats: &Nats,
    stream: &stream::Stream,
    query: &RecordQuery,
) -> Result<Page, RecordError> {
    let failed = |e: ClusterError| RecordError::Io {
        path: std::path::PathBuf::new(),
        source: std::io::Error::other(e.to_string()),
    };
    let limit = query.limit.clamp(1, MAX_PAGE);
    let after = query.cursor.as_ref().map(Cursor::position);
    let start = after.map_or(query.from, |(at, _)| at.max(query.from));
    if query.to <= start {
        return Ok(Page::default());
    }
    let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(start))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        - SKEW;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subject(nats, &query.user),
            deliver_policy: DeliverPolicy::ByStartTime { start_time },
            ..Default::default()
        })
        .await
        .map_err(|e| failed(ClusterError::js("records consumer", e)))?;
    if consumer.cached_info().num_pending == 0 {
        return Ok(Page::default());
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| failed(ClusterError::js("records read", e)))?;
    let stop_after = query.to.saturating_add(SKEW.as_nanos() as i64);
    let mut out: Vec<StoredRecord> = Vec::new();
    let mut seen = HashSet::new();
    loop {
        let next = match tokio::time::timeout(READ_TIMEOUT, messages.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(failed(ClusterError::js("records read", e))),
            Ok(None) | Err(_) => break,
        };
        let info = next
            .info()
            .map_err(|e| failed(ClusterError::js("records read", e)))?;
        let pending = info.pending;
        let stored = info.published.unix_timestamp_nanos();
        if let Ok(record) = serde_json::from_slice::<StoredRecord>(&next.payload) {
            let position = (record.ended_at, &record.call_id);
            let wanted = record.ended_at >= query.from
                && record.ended_at < query.to
                && after.is_none_or(|a| position > a);
            if wanted && seen.insert(record.call_id.clone()) {
                out.push(record);
            }
        }
        // One more than the page, to know whether another follows; and a
        // little past it, for a record published out of end order.
        if pending == 0 || stored > i128::from(stop_after) || out.len() > limit + 16 {
            break;
        }
    }
    out.sort_by(|a, b| (a.ended_at, &a.call_id).cmp(&(b.ended_at, &b.call_id)));
    let next_cursor = (out.len() > limit).then(|| Cursor::after(&out[limit - 1]));
    out.truncate(limit);
    Ok(Page {
        records: out,
        next_cursor,
    })
}
