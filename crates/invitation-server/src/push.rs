//! Push requests to the operator's push gateway (docs/push.md): the
//! switchboard decides who to wake and when to stop ([`PushNotice`]); this
//! module turns each notice into one signed JSON `POST` and delivers it.
//!
//! Pushes are about a ring that lasts seconds, so delivery is built for
//! speed, not for the long haul of webhooks: requests go out concurrently
//! (a slow answer for one phone delays no other), a `ring` is retried only
//! while its ring lasts, a `stop` for a while longer (a phone that rings
//! on after the call is gone is worse than a late stop). A `stop` for a
//! device always goes out after that device's `ring` has finished or been
//! given up (aborted), so a gateway never sees them in the wrong order.
//! Nothing is kept on disk: a ring that a crash cut off is gone with the
//! moment it was for.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use invitation_core::switchboard::{PushNotice, PushWhat};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::webhook::{SIGNATURE_HEADER, sign};

/// How push requests are delivered.
#[derive(Debug, Clone)]
pub(crate) struct PushSettings {
    /// The gateway.
    pub(crate) url: String,
    /// Secrets to sign with (as webhooks are signed).
    pub(crate) secrets: Arc<[String]>,
    /// Time allowed for one attempt.
    pub(crate) timeout: Duration,
    /// The wait after the first failed attempt; doubled after each next one.
    pub(crate) first_retry: Duration,
    /// The longest wait between attempts.
    pub(crate) max_retry: Duration,
    /// How long a `stop` is retried (a `ring`, only while it rings).
    pub(crate) stop_max_age: Duration,
    /// Requests waiting to be handed to the sender; more are dropped.
    pub(crate) queue: usize,
    /// Requests in flight at once.
    pub(crate) in_flight: usize,
    /// The roots trusted for an `https://` gateway (the system's, or
    /// `outbound_ca_file`).
    pub(crate) tls: Arc<rustls::ClientConfig>,
}

impl PushSettings {
    /// The settings of `config`, or none without a gateway: retries 250 ms
    /// doubling up to 5 s apart, stops retried for a minute, 10,000
    /// requests waiting and 256 in flight at most. Fails when the roots for
    /// an `https://` gateway cannot be loaded.
    pub(crate) fn from_config(
        config: &crate::config::Config,
    ) -> Result<Option<Self>, crate::tls::TlsSetupError> {
        let Some(url) = config.push_gateway_url.clone() else {
            return Ok(None);
        };
        let tls = crate::tls::outbound_tls(
            config.outbound_ca_file.as_deref(),
            url.starts_with("https://"),
        )?;
        Ok(Some(Self {
            tls,
            url,
            secrets: config.push_secrets.clone().into(),
            timeout: Duration::from_millis(config.push_timeout_ms),
            first_retry: Duration::from_millis(250),
            max_retry: Duration::from_secs(5),
            stop_max_age: Duration::from_secs(60),
            queue: 10_000,
            in_flight: 256,
        }))
    }
}

/// One request, ready to send.
#[derive(Debug)]
struct Job {
    /// Which device of which call (a `stop` waits for its `ring`).
    key: (String, String, String),
    ring: bool,
    id: String,
    body: String,
    /// Given up after this.
    until: Instant,
}

/// The hub's side: notices of a turn in, requests out once the turn is
/// journaled.
#[derive(Debug)]
pub(crate) struct Pushes {
    pending: Vec<Job>,
    queue: mpsc::Sender<Job>,
    settings: PushSettings,
    metrics: Arc<Metrics>,
}

impl Pushes {
    /// Starts the sender, which ends once this is dropped and its queue is
    /// empty.
    pub(crate) fn start(settings: PushSettings, metrics: Arc<Metrics>) -> Self {
        let (queue, rx) = mpsc::channel(settings.queue.max(1));
        tokio::spawn(send_all(rx, settings.clone(), metrics.clone()));
        Self {
            pending: Vec::new(),
            queue,
            settings,
            metrics,
        }
    }

    /// Notes one push of the turn; it goes out with [`Pushes::flush`].
    pub(crate) fn note(&mut self, notice: &PushNotice) {
        let now_ms = unix_ms_now();
        let (ring, body) = body(notice, now_ms);
        let until = Instant::now()
            + if ring {
                notice.ttl
            } else {
                self.settings.stop_max_age
            };
        let id = body["id"].as_str().unwrap_or_default().to_owned();
        self.pending.push(Job {
            key: (
                notice.call_id.to_string(),
                notice.user.to_string(),
                notice.device.to_string(),
            ),
            ring,
            id,
            body: body.to_string(),
            until,
        });
    }

    /// Hands the turn's requests to the sender (a full queue drops them,
    /// with a warning and a count).
    pub(crate) fn flush(&mut self) {
        for job in self.pending.drain(..) {
            if let Err(e) = self.queue.try_send(job) {
                let job = match e {
                    mpsc::error::TrySendError::Full(job)
                    | mpsc::error::TrySendError::Closed(job) => job,
                };
                self.metrics.pushes_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(push = %job.id, "push queue full: request dropped");
            }
        }
    }
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The request body of `notice` (and whether it is a ring): the gateway
/// contract of docs/push.md.
fn body(notice: &PushNotice, now_ms: u64) -> (bool, serde_json::Value) {
    let ttl_ms = u64::try_from(notice.ttl.as_millis()).unwrap_or(u64::MAX);
    let (kind, ring) = match &notice.what {
        PushWhat::Ring { .. } => ("ring", true),
        _ => ("stop", false),
    };
    let mut hash = Sha256::new();
    for part in [
        notice.call_id.as_str(),
        notice.user.as_str(),
        notice.device.as_str(),
        kind,
        &now_ms.to_string(),
    ] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let digest = hash.finalize();
    let id: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    let mut body = json!({
        "id": format!("push_{id}"),
        "type": kind,
        "created_at": now_ms,
        "call_id": notice.call_id.as_str(),
        "collapse_id": notice.call_id.as_str(),
        "ttl_ms": ttl_ms,
        "expires_at": now_ms.saturating_add(ttl_ms),
        "user": notice.user.as_str(),
        "device": notice.device.as_str(),
        "platform": notice.registration.platform.as_str(),
        "token": notice.registration.token,
    });
    match &notice.what {
        PushWhat::Ring {
            caller,
            call_type,
            callees,
            custom_data,
        } => {
            body["call"] = json!({
                "caller": caller,
                "call_type": call_type,
                "callees": callees.iter().collect::<Vec<_>>(),
                "custom_data": custom_data.as_ref().map(|d| d.as_str()),
            });
        }
        PushWhat::Stop { reason } => body["reason"] = json!(reason.as_str()),
        _ => {}
    }
    (ring, body)
}

/// The sender: one task per request (at most `in_flight` at once); a
/// device's `stop` waits until its `ring` is done, cutting a ring that is
/// still being retried short.
async fn send_all(mut queue: mpsc::Receiver<Job>, settings: PushSettings, metrics: Arc<Metrics>) {
    let client = match crate::tls::http_client(&settings.tls)
        .timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(url = %settings.url, error = %e, "cannot build the push client: no pushes");
            return;
        }
    };
    let permits = Arc::new(Semaphore::new(settings.in_flight.max(1)));
    // Rings not finished yet, by device of a call (at most `in_flight`
    // running, plus finished ones swept as the map grows).
    let mut rings: HashMap<(String, String, String), JoinHandle<()>> = HashMap::new();
    while let Some(job) = queue.recv().await {
        if rings.len() >= settings.in_flight.max(1) {
            rings.retain(|_, task| !task.is_finished());
        }
        if !job.ring {
            if let Some(ring) = rings.remove(&job.key) {
                ring.abort();
                let _ = ring.await;
            }
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (client, settings, metrics) = (client.clone(), settings.clone(), metrics.clone());
        let key = job.key.clone();
        let ring = job.ring;
        let task = tokio::spawn(async move {
            send_one(&client, &settings, &metrics, &job).await;
            drop(permit);
        });
        if ring {
            rings.insert(key, task);
        }
    }
}

/// Sends one request, retrying with backoff until it is accepted, refused
/// for good (4xx but 408 and 429), or past its `until`.
async fn send_one(client: &reqwest::Client, settings: &PushSettings, metrics: &Metrics, job: &Job) {
    let mut wait = settings.first_retry;
    let mut attempt = 1u32;
    loop {
        let signature = sign(&settings.secrets, unix_ms_now() / 1000, job.body.as_bytes());
        let sent = client
            .post(&settings.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(job.body.clone())
            .send()
            .await;
        let failure = match sent {
            Ok(response) if response.status().is_success() => {
                metrics.pushes_sent.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(response) => {
                let status = response.status().as_u16();
                if (400..500).contains(&status) && status != 408 && status != 429 {
                    metrics.pushes_dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(push = %job.id, status, "the push gateway refused the request: dropped");
                    return;
                }
                format!("answered {status}")
            }
            Err(e) if e.is_timeout() => "timed out".to_owned(),
            Err(e) => e.to_string(),
        };
        metrics.push_failed_attempts.fetch_add(1, Ordering::Relaxed);
        if Instant::now() + wait > job.until {
            metrics.pushes_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(push = %job.id, attempt, %failure, "push not delivered in time: dropped");
            return;
        }
        tracing::debug!(push = %job.id, attempt, %failure, "push attempt failed");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(settings.max_retry);
        attempt += 1;
    }
}

#[cfg(test)]
mod tests;
