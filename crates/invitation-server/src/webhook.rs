//! Signed webhooks: every call milestone the switchboard reports becomes
//! one JSON event `POST`ed to each configured endpoint, signed with
//! HMAC-SHA256 over a timestamp and the body (docs/http-api.md, "Webhooks").
//!
//! The receiver side is [`verify`]: it checks the [`SIGNATURE_HEADER`] of
//! a request against the secrets the receiver knows.
//!
//! Delivery is one task per endpoint, first in first out (the events of a
//! call arrive in the order they happened), each event retried with
//! exponential backoff until it is delivered or older than
//! `webhook_max_age_s`. In a durable server events wait in the data
//! directory (`webhooks/`: an append-only outbox and a cursor per
//! endpoint, docs/operations.md "The data directory"); in memory, in a bounded queue per endpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use invitation_core::{CallId, CallNotice, User};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

mod outbox;

/// The request header that carries the signature:
/// `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, one
/// `v1` per configured secret.
pub const SIGNATURE_HEADER: &str = "Invitation-Signature";

/// Most `v1` signatures [`verify`] reads from one header.
pub const MAX_SIGNATURES: usize = 16;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The [`SIGNATURE_HEADER`] value for `body` sent at `timestamp` (unix
/// seconds): `t=<timestamp>` then one `v1=<hex>` per secret, in the order
/// given.
pub fn sign<S: AsRef<[u8]>>(secrets: &[S], timestamp: u64, body: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        header.push_str(",v1=");
        for b in mac(secret.as_ref(), timestamp, body)
            .finalize()
            .into_bytes()
        {
            header.push(char::from(HEX[usize::from(b >> 4)]));
            header.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    header
}

/// Why a webhook request is not to be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The request has no signature header.
    #[error("no {SIGNATURE_HEADER} header")]
    Missing,
    /// The header is not `t=<unix seconds>,v1=<64 hex digits>[,v1=...]`.
    #[error("malformed {SIGNATURE_HEADER} header: {0}")]
    Malformed(&'static str),
    /// The signed timestamp is further from now than the tolerance (a
    /// replayed request, or a clock far off).
    #[error("signature timestamp {timestamp} is {age_s} s from now, beyond the tolerance")]
    Stale {
        /// The header's timestamp, unix seconds.
        timestamp: u64,
        /// Its distance from now, seconds.
        age_s: u64,
    },
    /// No signature matches the body under any of the secrets.
    #[error("no signature matches the body under any secret")]
    NoMatch,
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let digits = s.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let nibble = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = [0u8; 32];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// Checks a webhook request: `header` is the [`SIGNATURE_HEADER`] value
/// (`None` when absent), `body` the raw request body, `now` the receiver's
/// clock in unix seconds, `tolerance` how far the signed timestamp may be
/// from it (five minutes is usual). Any `v1` signature made with any of
/// `secrets` passes (several secrets: rotation). Signatures are compared
/// in constant time.
pub fn verify<S: AsRef<[u8]>>(
    secrets: &[S],
    header: Option<&str>,
    body: &[u8],
    now: u64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let header = header.ok_or(VerifyError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (key, value) = part
            .trim()
            .split_once('=')
            .ok_or(VerifyError::Malformed("a part is not key=value"))?;
        match key {
            "t" if timestamp.is_some() => return Err(VerifyError::Malformed("two timestamps")),
            "t" => {
                timestamp = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| VerifyError::Malformed("t is not unix seconds"))?,
                );
            }
            "v1" if signatures.len() == MAX_SIGNATURES => {
                return Err(VerifyError::Malformed("too many signatures"));
            }
            "v1" => signatures.push(hex32(value).ok_or(VerifyError::Malformed(
                "a v1 signature is not 64 hex digits",
            ))?),
            // Other schemes: ignored, so a newer sender stays readable.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(VerifyError::Malformed("no t="))?;
    if signatures.is_empty() {
        return Err(VerifyError::Malformed("no v1 signature"));
    }
    let age_s = now.abs_diff(timestamp);
    if age_s > tolerance.as_secs() {
        return Err(VerifyError::Stale { timestamp, age_s });
    }
    for secret in secrets {
        let expected = mac(secret.as_ref(), timestamp, body);
        for signature in &signatures {
            // `verify_slice` compares in constant time.
            if expected.clone().verify_slice(signature).is_ok() {
                return Ok(());
            }
        }
    }
    Err(VerifyError::NoMatch)
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One event, serialized once for every endpoint and attempt.
#[derive(Debug)]
pub(crate) struct HookEvent {
    /// See [`event_id`]: the same milestone of the same call always gets
    /// the same id, so receivers can drop repeats.
    pub(crate) id: String,
    pub(crate) created_ms: u64,
    pub(crate) body: String,
}

/// An event's id: `evt_` and 32 hex digits of SHA-256 over the call id,
/// the milestone (type and subject) and how many times that milestone
/// came before in the call, so the same milestone always gets the same id.
fn event_id(call_id: &CallId, milestone: &str, repeat: u32) -> String {
    use sha2::Digest;
    let mut hash = Sha256::new();
    hash.update(call_id.as_str().as_bytes());
    hash.update([0]);
    hash.update(milestone.as_bytes());
    hash.update([0]);
    hash.update(repeat.to_be_bytes());
    let mut id = String::from("evt_");
    for b in &hash.finalize()[..16] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// Turns call notices into events, giving each its id.
#[derive(Debug, Default)]
pub(crate) struct Events {
    /// Per live call, the milestones seen (type and subject) and how many
    /// times each repeated (bounded by the switchboard's calls and their
    /// participants; an entry goes with the call's `ended`).
    seen: HashMap<CallId, Vec<(String, u32)>>,
}

impl Events {
    /// The event of one notice, created at `now_ms` (unix ms); `None` for
    /// a notice this version does not know.
    pub(crate) fn make(&mut self, notice: &CallNotice, now_ms: u64) -> Option<HookEvent> {
        let ids =
            |users: &[User]| -> Vec<String> { users.iter().map(|u| u.id.to_string()).collect() };
        let (call_id, kind, data): (&CallId, String, Value) = match notice {
            CallNotice::Started {
                call_id,
                caller,
                callees,
                device,
            } => (
                call_id,
                "call.invited".into(),
                json!({"caller": caller.as_str(), "device": device.as_str(), "callees": ids(callees)}),
            ),
            CallNotice::Ringing {
                call_id,
                caller,
                callee,
            } => (
                call_id,
                "call.ringing".into(),
                json!({"caller": caller.as_str(), "callee": callee.as_str()}),
            ),
            CallNotice::Delivered {
                call_id,
                caller,
                callee,
                device,
            } => (
                call_id,
                "call.delivered".into(),
                json!({"caller": caller.as_str(), "callee": callee.as_str(), "device": device.as_str()}),
            ),
            CallNotice::Outcome {
                call_id,
                callee,
                reason,
                caller,
                device,
            } => (
                call_id,
                format!("call.{}", reason.as_str()),
                json!({
                    "caller": caller.as_str(),
                    "callee": callee.as_str(),
                    "reason": reason.as_str(),
                    "device": device.as_ref().map(|d| d.as_str()),
                }),
            ),
            CallNotice::Joined { call_id, user } => (
                call_id,
                "call.participant_joined".into(),
                json!({"user": user.as_str()}),
            ),
            CallNotice::Left { call_id, user } => (
                call_id,
                "call.participant_left".into(),
                json!({"user": user.as_str()}),
            ),
            CallNotice::HungUp {
                call_id,
                caller,
                user,
                device,
            } => (
                call_id,
                "call.hung_up".into(),
                json!({"caller": caller.as_str(), "user": user.as_str(), "device": device.as_str()}),
            ),
            CallNotice::Ended {
                call_id,
                reason,
                caller,
                callees,
            } => (
                call_id,
                "call.ended".into(),
                json!({"caller": caller.as_str(), "callees": ids(callees), "reason": reason.as_str()}),
            ),
            _ => return None,
        };
        // The milestone's subject: the callee or user it is about.
        let subject = data
            .get("callee")
            .or_else(|| data.get("user"))
            .and_then(Value::as_str)
            .unwrap_or("");
        // A receipt is per device of the callee.
        let key = match notice {
            CallNotice::Delivered { device, .. } => format!("{kind}\0{subject}\0{device}"),
            _ => format!("{kind}\0{subject}"),
        };
        let seen = self.seen.entry(call_id.clone()).or_default();
        let repeat = match seen.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                seen.push((key.clone(), 0));
                0
            }
        };
        let id = event_id(call_id, &key, repeat);
        if matches!(notice, CallNotice::Ended { .. }) {
            self.seen.remove(call_id);
        }
        let body = json!({
            "id": id,
            "type": kind,
            "call_id": call_id.as_str(),
            "created_at": now_ms,
            "data": data,
        })
        .to_string();
        Some(HookEvent {
            id,
            created_ms: now_ms,
            body,
        })
    }
}

/// How events are delivered.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    /// Secrets to sign with, the first one's signature first.
    pub(crate) secrets: Arc<[String]>,
    /// Time allowed for one attempt.
    pub(crate) timeout: Duration,
    /// Give up on an event this old.
    pub(crate) max_age: Duration,
    /// The wait after the first failed attempt; doubled after each next one.
    pub(crate) first_retry: Duration,
    /// The longest wait between attempts.
    pub(crate) max_retry: Duration,
    /// Events waiting per endpoint; more are dropped (and counted).
    pub(crate) queue: usize,
    /// The roots trusted for `https://` endpoints (the system's, or
    /// `outbound_ca_file`).
    pub(crate) tls: Arc<rustls::ClientConfig>,
}

impl Delivery {
    /// The settings of `config` (retries from 1 s up to 5 minutes apart,
    /// 10,000 events waiting per endpoint). Fails when the roots for an
    /// `https://` endpoint cannot be loaded.
    pub(crate) fn from_config(
        config: &crate::config::Config,
    ) -> Result<Self, crate::tls::TlsSetupError> {
        let https = config
            .webhook_urls
            .iter()
            .any(|u| u.starts_with("https://"));
        let tls = crate::tls::outbound_tls(config.outbound_ca_file.as_deref(), https)?;
        Ok(Self {
            tls,
            secrets: config.webhook_secrets.clone().into(),
            timeout: Duration::from_millis(config.webhook_timeout_ms),
            max_age: Duration::from_secs(config.webhook_max_age_s),
            first_retry: Duration::from_secs(1),
            max_retry: Duration::from_secs(300),
            queue: 10_000,
        })
    }
}

/// Where the hub puts events for the delivery tasks.
#[derive(Debug)]
enum Sink {
    /// A bounded queue per endpoint.
    Memory(Vec<mpsc::Sender<Arc<HookEvent>>>),
    /// The outbox in the data directory, read by every endpoint's task.
    Disk {
        outbox: outbox::Outbox,
        endpoints: u64,
    },
}

/// The hub's side: notices in, events out to one task per endpoint.
#[derive(Debug)]
pub(crate) struct Webhooks {
    events: Events,
    /// Events of the turn, sent once the turn is journaled.
    pending: Vec<HookEvent>,
    sink: Sink,
    metrics: Arc<Metrics>,
}

impl Webhooks {
    /// Starts one delivery task per URL. Each ends once this is dropped
    /// and its queue is empty.
    pub(crate) fn start(urls: &[String], delivery: Delivery, metrics: Arc<Metrics>) -> Self {
        let queues = urls
            .iter()
            .map(|url| {
                let (tx, rx) = mpsc::channel(delivery.queue.max(1));
                tokio::spawn(deliver(url.clone(), rx, delivery.clone(), metrics.clone()));
                tx
            })
            .collect();
        Self {
            events: Events::default(),
            pending: Vec::new(),
            sink: Sink::Memory(queues),
            metrics,
        }
    }

    /// Starts one delivery task per URL, reading the outbox in `dir`
    /// (synced after every append when `sync_each`, else by
    /// [`Webhooks::sync`]). Events a previous run wrote and did not
    /// deliver go first. Each task stops once this is dropped (a later
    /// run delivers the rest).
    pub(crate) fn start_durable(
        urls: &[String],
        delivery: Delivery,
        metrics: Arc<Metrics>,
        dir: &Path,
        sync_each: bool,
    ) -> std::io::Result<Self> {
        let outbox = outbox::Outbox::open(dir, urls, sync_each)?;
        for url in urls {
            // Where this endpoint starts, fixed before anything is
            // appended: its cursor, or (a new endpoint) the end now.
            let cursor = outbox::cursor_path(outbox.dir(), url);
            let at = match outbox::read_cursor(&cursor) {
                Some(at) => at,
                None => {
                    let at = *outbox.subscribe().borrow();
                    outbox::write_cursor(&cursor, at)?;
                    at
                }
            };
            tokio::spawn(deliver_from_disk(
                url.clone(),
                outbox.dir().to_owned(),
                at,
                outbox.subscribe(),
                delivery.clone(),
                metrics.clone(),
            ));
        }
        Ok(Self {
            events: Events::default(),
            pending: Vec::new(),
            sink: Sink::Disk {
                outbox,
                endpoints: urls.len() as u64,
            },
            metrics,
        })
    }

    /// Syncs the outbox (with the journal's sync).
    pub(crate) fn sync(&mut self) -> std::io::Result<()> {
        match &mut self.sink {
            Sink::Disk { outbox, .. } => outbox.sync(),
            Sink::Memory(_) => Ok(()),
        }
    }

    /// After a recovery: appends the events of `notices` (the journal tail
    /// replayed, [`invitation_core::durable::Durable::take_replayed_notices`])
    /// that the outbox does not have, that is the events of a last turn that
    /// was journaled but whose events a crash kept from the outbox. Event
    /// ids are made from the call and milestone, so the replay's events
    /// have the ids the original run gave them. In memory: nothing to do.
    pub(crate) fn resend_missing(&mut self, notices: &[CallNotice]) {
        let Sink::Disk { outbox, .. } = &self.sink else {
            return;
        };
        let have = match outbox.recent_ids() {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the webhook outbox: the events of the last turn before the restart may be missing");
                return;
            }
        };
        let now_ms = unix_ms_now();
        let mut missing = 0usize;
        for notice in notices {
            if let Some(event) = self.events.make(notice, now_ms) {
                if !have.contains(&event.id) {
                    self.pending.push(event);
                    missing += 1;
                }
            }
        }
        if missing > 0 {
            tracing::warn!(
                events = missing,
                "webhook events of the last turn before the restart were not in the outbox: appended now"
            );
            self.flush();
        }
    }

    /// Notes one milestone; its event goes out with [`Webhooks::flush`].
    pub(crate) fn note(&mut self, notice: &CallNotice) {
        if let Some(event) = self.events.make(notice, unix_ms_now()) {
            self.pending.push(event);
        }
    }

    /// Hands the turn's events to every endpoint's queue (a full queue
    /// drops the event, with a warning and a count).
    pub(crate) fn flush(&mut self) {
        let queues = match &mut self.sink {
            Sink::Memory(queues) => queues,
            Sink::Disk { outbox, endpoints } => {
                if let Err(e) = outbox.append(&self.pending) {
                    let lost = self.pending.len() as u64;
                    self.metrics
                        .webhooks_dropped
                        .fetch_add(lost * *endpoints, Ordering::Relaxed);
                    self.metrics.store_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, lost, "cannot write the webhook outbox: events dropped");
                }
                self.pending.clear();
                return;
            }
        };
        for event in self.pending.drain(..) {
            let event = Arc::new(event);
            for (endpoint, queue) in queues.iter().enumerate() {
                if queue.try_send(event.clone()).is_err() {
                    self.metrics
                        .webhooks_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(endpoint, event = %event.id, "webhook queue full: event dropped");
                }
            }
        }
    }
}

fn client(url: &str, delivery: &Delivery) -> Option<reqwest::Client> {
    match crate::tls::http_client(&delivery.tls)
        .timeout(delivery.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => Some(client),
        Err(e) => {
            tracing::error!(%url, error = %e, "cannot build the webhook client: no deliveries");
            None
        }
    }
}

/// One endpoint's task: its events in order, each until delivered or too old.
async fn deliver(
    url: String,
    mut queue: mpsc::Receiver<Arc<HookEvent>>,
    delivery: Delivery,
    metrics: Arc<Metrics>,
) {
    let Some(client) = client(&url, &delivery) else {
        return;
    };
    while let Some(event) = queue.recv().await {
        deliver_one(&client, &url, &event, &delivery, &metrics, &|| false).await;
    }
}

/// The `id` and `created_at` of an outbox line.
#[derive(serde::Deserialize)]
struct Stamp {
    id: String,
    created_at: u64,
}

/// One endpoint's task in a durable server: reads the outbox from its
/// cursor in batches, delivers each event in order and moves the cursor
/// past it (delivered or dropped), starting `at` its cursor.
async fn deliver_from_disk(
    url: String,
    dir: PathBuf,
    mut at: outbox::Position,
    mut end: tokio::sync::watch::Receiver<outbox::Position>,
    delivery: Delivery,
    metrics: Arc<Metrics>,
) {
    let Some(client) = client(&url, &delivery) else {
        return;
    };
    let cursor = outbox::cursor_path(&dir, &url);
    loop {
        let known = *end.borrow_and_update();
        if at >= known {
            if end.changed().await.is_err() {
                return;
            }
            continue;
        }
        let limit = (at.0 == known.0).then_some(known.1);
        let lines = match outbox::read_lines(&dir, at.0, at.1, limit) {
            Ok(lines) => lines,
            Err(e) => {
                // Tried again later (never skipped: that would lose events).
                tracing::error!(%url, error = %e, segment = at.0, "cannot read the webhook outbox: trying again");
                tokio::time::sleep(delivery.max_retry).await;
                if end.has_changed().is_err() {
                    return;
                }
                continue;
            }
        };
        if lines.is_empty() {
            // This segment is done (or gone): the next one.
            at = (at.0 + 1, 0);
            continue;
        }
        for (line, next) in lines {
            match serde_json::from_str::<Stamp>(&line) {
                Ok(stamp) => {
                    let event = HookEvent {
                        id: stamp.id,
                        created_ms: stamp.created_at,
                        body: line,
                    };
                    let stopped = || end.has_changed().is_err();
                    if !deliver_one(&client, &url, &event, &delivery, &metrics, &stopped).await {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(%url, error = %e, "an unreadable webhook outbox line: skipped")
                }
            }
            at = (at.0, next);
            if let Err(e) = outbox::write_cursor(&cursor, at) {
                tracing::error!(%url, error = %e, "cannot write a webhook cursor");
            }
        }
    }
}

/// Delivers one event, retrying until it is delivered or too old (true),
/// or until `stopped` says the server stopped (false: the event stays for
/// the next run).
async fn deliver_one(
    client: &reqwest::Client,
    url: &str,
    event: &HookEvent,
    delivery: &Delivery,
    metrics: &Metrics,
    stopped: &(dyn Fn() -> bool + Sync),
) -> bool {
    let mut wait = delivery.first_retry;
    let mut attempt = 1u32;
    loop {
        if stopped() {
            return false;
        }
        let now_ms = unix_ms_now();
        let signature = sign(&delivery.secrets, now_ms / 1000, event.body.as_bytes());
        let sent = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(event.body.clone())
            .send()
            .await;
        let failure = match sent {
            Ok(response) if response.status().is_success() => {
                metrics.webhooks_delivered.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Ok(response) => format!("answered {}", response.status().as_u16()),
            Err(e) if e.is_timeout() => "timed out".to_owned(),
            Err(e) => e.to_string(),
        };
        metrics
            .webhook_failed_attempts
            .fetch_add(1, Ordering::Relaxed);
        let age = Duration::from_millis(unix_ms_now().saturating_sub(event.created_ms));
        if age + wait > delivery.max_age {
            metrics.webhooks_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%url, event = %event.id, attempt, %failure, "webhook not delivered within webhook_max_age_s: dropped");
            return true;
        }
        tracing::debug!(%url, event = %event.id, attempt, %failure, retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "webhook attempt failed");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(delivery.max_retry);
        attempt += 1;
    }
}

#[cfg(test)]
pub(crate) mod tests;
