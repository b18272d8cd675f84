//! Reads the server's own histograms from `/metrics`, so a figure can be
//! split into the server's share and the generator's (a saturated or
//! descheduled generator inflates every end-to-end latency).

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One Prometheus histogram: cumulative counts per upper bound (seconds),
/// `+Inf` last.
#[derive(Debug, Clone, Default)]
pub(crate) struct Buckets(Vec<(f64, u64)>);

/// Fetches `/metrics` over plain HTTP/1.1.
pub(crate) async fn metrics(addr: SocketAddr) -> Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await?;
    let mut text = String::new();
    s.read_to_string(&mut text).await?;
    let (_, body) = text.split_once("\r\n\r\n").context("no HTTP body")?;
    Ok(body.to_owned())
}

/// Fetches `/metrics` from a server, over https when it serves TLS (with
/// the benchmark's certificate).
pub(crate) async fn metrics_of(server: &crate::ServerProc) -> Result<String> {
    if !server.tls {
        return metrics(server.addr).await;
    }
    let tls = crate::pki::get()?.client.config();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .build()?;
    Ok(client
        .get(format!("https://{}/metrics", server.addr))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The value of the counter or gauge `name` (no labels) in a Prometheus
/// text exposition.
pub(crate) fn counter(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

impl Buckets {
    /// The histogram `name` in a Prometheus text exposition.
    pub(crate) fn parse(text: &str, name: &str) -> Self {
        let prefix = format!("{name}_bucket{{le=\"");
        Self(
            text.lines()
                .filter_map(|l| l.strip_prefix(&prefix))
                .filter_map(|rest| {
                    let (le, count) = rest.split_once("\"} ")?;
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().ok()?
                    };
                    Some((le, count.trim().parse().ok()?))
                })
                .collect(),
        )
    }

    /// What was recorded between `before` and `self`.
    pub(crate) fn since(&self, before: &Self) -> Self {
        Self(
            self.0
                .iter()
                .map(|&(le, n)| {
                    let old = before.0.iter().find(|b| b.0 == le).map_or(0, |b| b.1);
                    (le, n.saturating_sub(old))
                })
                .collect(),
        )
    }

    /// Observations.
    pub(crate) fn count(&self) -> u64 {
        self.0.last().map_or(0, |b| b.1)
    }

    /// Upper bound, in µs, of the bucket holding quantile `q` (1.0: the
    /// maximum); `None` when nothing was recorded; infinite past the last bound.
    pub(crate) fn quantile_us(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        self.0
            .iter()
            .find(|b| b.1 >= want)
            .map(|b| (b.0 * 1e6).round())
    }
}

/// `≤ 50 us` style text for a bucket bound.
pub(crate) fn bound(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.is_infinite() => "> 1 s".into(),
        Some(v) if v >= 1000.0 => format!("<= {} ms", v / 1000.0),
        Some(v) => format!("<= {v} us"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_from_cumulative_buckets() {
        let text = "x_bucket{le=\"0.00005\"} 10\nx_bucket{le=\"0.0001\"} 98\nx_bucket{le=\"0.005\"} 100\nx_bucket{le=\"+Inf\"} 100\nx_count 100\n";
        let before = Buckets::parse("x_bucket{le=\"0.00005\"} 5\n", "x");
        let b = Buckets::parse(text, "x");
        assert_eq!(b.count(), 100);
        assert_eq!(b.quantile_us(0.5), Some(100.0));
        assert_eq!(b.quantile_us(0.99), Some(5000.0));
        assert_eq!(b.quantile_us(1.0), Some(5000.0));
        let d = b.since(&before);
        assert_eq!(d.quantile_us(0.05), Some(50.0));
        assert_eq!(Buckets::default().quantile_us(0.5), None);
    }
}
