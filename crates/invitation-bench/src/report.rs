//! Output: one-line summaries, the suite (table, JSON, SVG plot) and the
//! Kamailio side of the comparison.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::Store;
use crate::disturb::{Probe, Spread};
use crate::load::RecoveryResult;
use crate::load::{self, CallsResult, IdleResult, RelayResult, TimeoutsResult};
use crate::scrape::bound;
use crate::sections::{self, Ctx};

/// One call run against a fresh server.
pub(crate) async fn run_calls(
    server_bin: &Option<PathBuf>,
    cpu: &str,
    rate: f64,
    secs: f64,
    callees: usize,
    receipts: bool,
    store: Store,
) -> Result<CallsResult> {
    run_calls_via(
        server_bin,
        cpu,
        rate,
        secs,
        callees,
        receipts,
        store,
        load::Via::WebSocket,
    )
    .await
}

/// [`run_calls`], with the clients on `via`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_calls_via(
    server_bin: &Option<PathBuf>,
    cpu: &str,
    rate: f64,
    secs: f64,
    callees: usize,
    receipts: bool,
    store: Store,
    via: load::Via,
) -> Result<CallsResult> {
    let server = crate::start_server_tls(server_bin, cpu, store, via.tls()).await?;
    let r = load::calls(&server, rate, secs, callees, receipts, true, via).await;
    server.stop().await;
    r
}

/// A call run's figures, for bench.json.
pub(crate) fn calls_json(r: &CallsResult) -> serde_json::Value {
    let q = |h: &hdrhistogram::Histogram<u64>, p| h.value_at_quantile(p);
    serde_json::json!({
        "rate": r.rate, "callees": r.callees, "offered": r.offered, "completed": r.completed,
        "failed": r.failed, "shed": r.shed,
        "ring_p50_us": q(&r.ring, 0.5), "ring_p99_us": q(&r.ring, 0.99), "ring_p999_us": q(&r.ring, 0.999),
        "server_ring_p50_us_at_most": r.server_ring.quantile_us(0.5), "server_ring_p99_us_at_most": r.server_ring.quantile_us(0.99),
        "accepted_p50_us": q(&r.accepted, 0.5), "accepted_p99_us": q(&r.accepted, 0.99), "accepted_p999_us": q(&r.accepted, 0.999),
        "server_cpu_us_per_call": r.server_cpu_us_per_call, "generator_cpu_us_per_call": r.generator_cpu_us_per_call,
        "journal_bytes_per_call": r.journal_bytes as f64 / r.completed.max(1) as f64,
        "journal_entries_per_call": r.journal_entries as f64 / r.completed.max(1) as f64,
    })
}

pub(crate) fn calls_line(r: &CallsResult) -> String {
    let journal = if r.store == Store::Memory {
        String::new()
    } else {
        format!(
            "; {}: journal {:.0} bytes/call ({:.1} entries/call)",
            r.store.label(),
            r.journal_bytes as f64 / r.completed.max(1) as f64,
            r.journal_entries as f64 / r.completed.max(1) as f64
        )
    };
    let line = format!(
        "calls: {}/s x{} callees: {} offered, {} completed, {} failed, {} shed; invite->ring p50 {} us p99 {} us p99.9 {} us (server's share p50 {} p99 {}); invite->accepted p50 {} us p99 {} us p99.9 {} us; server {:.0} us CPU/call, generator {:.0} us CPU/call",
        r.rate,
        r.callees,
        r.offered,
        r.completed,
        r.failed,
        r.shed,
        r.ring.value_at_quantile(0.5),
        r.ring.value_at_quantile(0.99),
        r.ring.value_at_quantile(0.999),
        bound(r.server_ring.quantile_us(0.5)),
        bound(r.server_ring.quantile_us(0.99)),
        r.accepted.value_at_quantile(0.5),
        r.accepted.value_at_quantile(0.99),
        r.accepted.value_at_quantile(0.999),
        r.server_cpu_us_per_call,
        r.generator_cpu_us_per_call
    );
    line + &journal
}

pub(crate) fn recovery_line(r: &RecoveryResult) -> String {
    let server = r.recovered.map_or_else(
        || "no `state recovered` line seen".to_owned(),
        |(ms, entries, ringing)| {
            format!("the server's own count: {ms} ms, {entries} journal entries replayed, {ringing} calls ringing")
        },
    );
    format!(
        "recovery: {} invitations held ({:?}), made in {:.1} s ({} shed and resent); journal {} bytes ({:.0} B/invitation, {} entries), data directory {} bytes ({} snapshot of {} bytes, {} journal files); SIGKILL, restart: serving after {} ms ({server}); RSS after {} kB",
        r.pending,
        r.durability,
        r.fill_secs,
        r.shed,
        r.journal_bytes,
        r.journal_bytes as f64 / r.pending.max(1) as f64,
        r.journal_entries,
        r.dir_bytes,
        r.files.0,
        r.files.1,
        r.files.2,
        r.restart.as_millis(),
        r.rss_kb,
    )
}

pub(crate) fn recovery_json(r: &RecoveryResult) -> serde_json::Value {
    serde_json::json!({
        "pending": r.pending, "durability": format!("{:?}", r.durability), "fill_secs": r.fill_secs, "shed": r.shed,
        "journal_bytes": r.journal_bytes, "journal_entries": r.journal_entries, "dir_bytes": r.dir_bytes,
        "restart_ms": r.restart.as_millis() as u64,
        "server_recovery_ms": r.recovered.map(|x| x.0), "replayed": r.recovered.map(|x| x.1), "ringing": r.recovered.map(|x| x.2),
        "rss_kb": r.rss_kb, "snapshots": r.files.0, "snapshot_bytes": r.files.1, "journal_files": r.files.2,
    })
}

pub(crate) fn timeouts_line(r: &TimeoutsResult) -> String {
    let s = &r.server_lateness;
    format!(
        "timeouts: {} pending (10 s ring, sent over {} ms): at the server p50 {} p99 {} max {} ({} events); at the caller p50 {} us p99 {} us max {} us; {} shed then resent, {} missing; server RSS {:.0} B per pending invitation",
        r.pending,
        r.spread.as_millis(),
        bound(s.quantile_us(0.5)),
        bound(s.quantile_us(0.99)),
        bound(s.quantile_us(1.0)),
        s.count(),
        r.lateness.value_at_quantile(0.5),
        r.lateness.value_at_quantile(0.99),
        r.lateness.max(),
        r.shed,
        r.missing,
        r.server_rss_per_pending
    )
}

pub(crate) fn idle_line(r: &IdleResult) -> String {
    format!(
        "idle: {} connections: ours {:.0} B each, bare echo {:.0} B each: {:.2}x",
        r.clients,
        r.ours_bytes,
        r.echo_bytes,
        r.ours_bytes / r.echo_bytes.max(1.0)
    )
}

pub(crate) fn relay_line(r: &RelayResult) -> String {
    format!(
        "relay: ours {:.0} msg/s ({:.1} us CPU each), bare echo {:.0} msg/s ({:.1} us CPU each): {:.2}x",
        r.ours_per_s,
        r.ours_cpu_us_per_msg,
        r.echo_per_s,
        r.echo_cpu_us_per_msg,
        r.ours_per_s / r.echo_per_s.max(1.0)
    )
}

/// One Kamailio run: (calls completed, failed, CPU µs per call).
pub(crate) fn kamailio(rate: u64, calls: u64) -> Result<(u64, u64, f64)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/kamailio/run.sh");
    let out = std::process::Command::new("taskset")
        .args(["-c", "1", "bash"])
        .arg(&script)
        .args([rate.to_string(), calls.to_string()])
        .output()
        .context("running bench/kamailio/run.sh")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("kamailio "))
        .with_context(|| {
            format!(
                "no result from kamailio: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let get = |k: &str| -> f64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    Ok((
        get("calls") as u64,
        get("failed") as u64,
        get("cpu_us_per_call"),
    ))
}

fn svg(points: &[(f64, u64, u64)]) -> String {
    let (w, h, m) = (640.0, 360.0, 50.0);
    let max_x = points.iter().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let max_y = points
        .iter()
        .map(|p| p.2 as f64)
        .fold(1000.0, f64::max)
        .min(20_000.0)
        * 1.1;
    let x = |v: f64| m + v / max_x * (w - 2.0 * m);
    let y = |v: f64| h - m - v.min(max_y) / max_y * (h - 2.0 * m);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<line x1="{m}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        h - m,
        w - m,
        h - m
    );
    let _ = writeln!(
        s,
        r#"<line x1="{m}" y1="{m}" x2="{m}" y2="{}" stroke="black"/>"#,
        h - m
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">offered load (calls/s), server pinned to one vCPU</text>"#,
        w / 2.0,
        h - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">invite -> ring latency (us)</text>"#,
        h / 2.0,
        h / 2.0
    );
    for i in 0..=4 {
        let v = max_y / 4.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{:.0}</text>"#,
            m - 4.0,
            y(v) + 4.0,
            v
        );
        let xv = max_x / 4.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{:.0}</text>"#,
            x(xv),
            h - m + 16.0,
            xv
        );
    }
    for (i, (name, color)) in [("p50", "#1f77b4"), ("p99", "#d62728")].iter().enumerate() {
        let pts: Vec<String> = points
            .iter()
            .map(|p| {
                format!(
                    "{:.1},{:.1}",
                    x(p.0),
                    y(if i == 0 { p.1 } else { p.2 } as f64)
                )
            })
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        for p in &pts {
            let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(s, r#"<circle cx="{px}" cy="{py}" r="3" fill="{color}"/>"#);
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" fill="{color}">{name}</text>"#,
            w - m - 40.0,
            m + 16.0 * (i as f64 + 1.0)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Everything, in bounded time.
pub(crate) async fn suite(
    server_bin: &Option<PathBuf>,
    cpu: &str,
    out: &Path,
    quick: bool,
    with_kamailio: bool,
    runs: usize,
) -> Result<()> {
    let secs = if quick { 3.0 } else { 8.0 };
    let runs = runs.max(1);
    let mut json = serde_json::Map::new();
    let mut table = String::new();
    let mut points = Vec::new();

    // 1. CPU per 1:1 call, ours and Kamailio's, at the same rates: `runs`
    //    alternating runs of each (ours, peer, ours, ...), median and range,
    //    and whether anything else ran on the CPUs meanwhile.
    let _ = writeln!(
        table,
        "\n1:1 calls (invite -> ring -> accept -> hang up), server on one vCPU, generator on the other; {runs} alternating runs each, median (min-max)"
    );
    let _ = writeln!(
        table,
        "{:>6} {:>7} {:>6} {:>10} {:>10} {:>18} {:>8} {:>18} {:>16}  machine",
        "rate/s",
        "failed",
        "shed",
        "ring p50",
        "ring p99",
        "ours us/call",
        "gen us",
        "kam us/call",
        "ratio"
    );
    let mut compare = Vec::new();
    let mut floor_rows = Vec::new();
    for rate in [500.0, 1000.0, 2000.0, 4000.0] {
        let mut ours = Vec::new();
        let mut peer = Vec::new();
        let mut floor = Vec::new();
        let mut notes = Vec::new();
        for _ in 0..runs {
            let probe = Probe::start(&[]);
            let r = run_calls(server_bin, cpu, rate, secs, 1, false, Store::Memory).await?;
            let quiet = probe.finish(&[]);
            if quiet.disturbed() {
                notes.push(format!("ours: {}", quiet.describe()));
            }
            ours.push((r, quiet));
            if with_kamailio {
                let probe = Probe::start(&[]);
                let k = kamailio(rate as u64, (rate * secs) as u64).ok();
                let quiet = probe.finish(&["kamailio", "sipp"]);
                if quiet.disturbed() {
                    notes.push(format!("peer: {}", quiet.describe()));
                }
                if let Some(k) = k {
                    peer.push((k, quiet));
                }
            }
            // The floor: the same rate through a bare relay on the same CPU.
            let probe = Probe::start(&[]);
            let relay = crate::start_echo(cpu).await?;
            let f = load::relay_floor(&relay, rate, secs).await;
            relay.stop().await;
            let quiet = probe.finish(&[]);
            if quiet.disturbed() {
                notes.push(format!("relay: {}", quiet.describe()));
            }
            floor.push(f?);
        }
        let spread = |f: &dyn Fn(&CallsResult) -> f64| {
            Spread::of(&ours.iter().map(|(r, _)| f(r)).collect::<Vec<_>>())
        };
        let cpu_ours = spread(&|r| r.server_cpu_us_per_call);
        let cpu_gen = spread(&|r| r.generator_cpu_us_per_call);
        let p50 = spread(&|r| r.ring.value_at_quantile(0.5) as f64);
        let p99 = spread(&|r| r.ring.value_at_quantile(0.99) as f64);
        let failed: u64 = ours.iter().map(|(r, _)| r.failed).sum();
        let shed: u64 = ours.iter().map(|(r, _)| r.shed).sum();
        let cpu_peer = Spread::of(&peer.iter().map(|(k, _)| k.2).collect::<Vec<_>>());
        let peer_failed: u64 = peer.iter().map(|(k, _)| k.1).sum();
        // Each run of ours against the peer run right after it.
        let ratios = Spread::of(
            &ours
                .iter()
                .zip(&peer)
                .map(|((r, _), (k, _))| r.server_cpu_us_per_call / k.2)
                .collect::<Vec<_>>(),
        );
        let _ = writeln!(
            table,
            "{:>6} {:>7} {:>6} {:>10.0} {:>10.0} {:>18} {:>8.0} {:>18} {:>16}  {}",
            rate,
            failed,
            shed,
            p50.median,
            p99.median,
            cpu_ours.show(0),
            cpu_gen.median,
            if peer_failed > 0 {
                format!("{} ({peer_failed} failed)", cpu_peer.show(0))
            } else {
                cpu_peer.show(0)
            },
            ratios.show(2),
            if notes.is_empty() {
                "quiet".to_owned()
            } else {
                notes.join("; ")
            }
        );
        points.push((rate, p50.median as u64, p99.median as u64));
        let relay_p50 = Spread::of(
            &floor
                .iter()
                .map(|(h, _)| h.value_at_quantile(0.5) as f64)
                .collect::<Vec<_>>(),
        );
        let relay_p99 = Spread::of(
            &floor
                .iter()
                .map(|(h, _)| h.value_at_quantile(0.99) as f64)
                .collect::<Vec<_>>(),
        );
        let relay_lost: u64 = floor.iter().map(|(_, l)| l).sum();
        let server_p50 = Spread::of(
            &ours
                .iter()
                .filter_map(|(r, _)| r.server_ring.quantile_us(0.5))
                .collect::<Vec<_>>(),
        );
        let server_p99 = Spread::of(
            &ours
                .iter()
                .filter_map(|(r, _)| r.server_ring.quantile_us(0.99))
                .collect::<Vec<_>>(),
        );
        floor_rows.push(format!(
            "{:>6} {:>16} {:>16} {:>8.2} {:>8.2} {:>16} {:>16} {:>6}",
            rate,
            relay_p50.show(0),
            relay_p99.show(0),
            p50.median / relay_p50.median,
            p99.median / relay_p99.median,
            server_p50.show(0),
            server_p99.show(0),
            relay_lost
        ));
        compare.push(serde_json::json!({
            "rate": rate,
            "runs": ours.iter().map(|(r, q)| {
                let mut e = calls_json(r);
                e["machine"] = q.json();
                e
            }).collect::<Vec<_>>(),
            "kamailio_runs": peer.iter().map(|(k, q)| serde_json::json!({
                "completed": k.0, "failed": k.1, "cpu_us_per_call": k.2, "machine": q.json()
            })).collect::<Vec<_>>(),
            "ours_cpu_us_per_call": cpu_ours.json(),
            "kamailio_cpu_us_per_call": cpu_peer.json(),
            "ratio": ratios.json(),
            "ring_p50_us": p50.json(),
            "ring_p99_us": p99.json(),
            "relay_floor": {
                "p50_us": relay_p50.json(),
                "p99_us": relay_p99.json(),
                "lost": relay_lost,
                "ring_p50_to_relay_p50": p50.median / relay_p50.median,
                "ring_p99_to_relay_p99": p99.median / relay_p99.median,
                "server_share_p50_us_at_most": server_p50.json(),
                "server_share_p99_us_at_most": server_p99.json(),
            },
        }));
    }
    let _ = writeln!(
        table,
        "\nlatency floor: the same rates through a bare WebSocket relay (client -> relay -> client, same library and settings, same CPU), median (min-max) of the runs; invite -> ring as a multiple of it; the server's own share (invite read -> incoming_call written, bucket bound)"
    );
    let _ = writeln!(
        table,
        "{:>6} {:>16} {:>16} {:>8} {:>8} {:>16} {:>16} {:>6}",
        "rate/s",
        "relay p50 us",
        "relay p99 us",
        "x p50",
        "x p99",
        "server p50 us",
        "server p99 us",
        "lost"
    );
    for row in floor_rows {
        let _ = writeln!(table, "{row}");
    }
    json.insert("calls_1to1".into(), compare.into());

    // Printed as it goes: a later phase that fails loses nothing above.
    print!("{table}");
    table.clear();

    // 1b. The same calls on every transport, alternating (ws, wss, http,
    //     https, ws, ...): what TLS and the HTTP transport cost next to a
    //     plain WebSocket, in one window.
    let _ = writeln!(
        table,
        "\n1:1 calls at 500/s by transport ({runs} alternating rounds, median (min-max)); the server terminates TLS itself"
    );
    let _ = writeln!(
        table,
        "{:>6} {:>7} {:>16} {:>16} {:>16} {:>16}  machine",
        "via", "failed", "ring p50 us", "ring p99 us", "server us/call", "gen us/call"
    );
    let transports = [
        load::Via::WebSocket,
        load::Via::Wss,
        load::Via::Http,
        load::Via::Https,
    ];
    let mut by_via: Vec<Vec<(CallsResult, crate::disturb::Disturbance)>> =
        transports.iter().map(|_| Vec::new()).collect();
    for _ in 0..runs {
        for (i, via) in transports.iter().enumerate() {
            let probe = Probe::start(&[]);
            let r =
                run_calls_via(server_bin, cpu, 500.0, secs, 1, false, Store::Memory, *via).await?;
            by_via[i].push((r, probe.finish(&[])));
        }
    }
    let mut over_transports = serde_json::Map::new();
    for (via, runs_of) in transports.iter().zip(&by_via) {
        let spread = |f: &dyn Fn(&CallsResult) -> f64| {
            Spread::of(&runs_of.iter().map(|(r, _)| f(r)).collect::<Vec<_>>())
        };
        let failed: u64 = runs_of.iter().map(|(r, _)| r.failed + r.shed).sum();
        let notes: Vec<String> = runs_of
            .iter()
            .filter(|(_, q)| q.disturbed())
            .map(|(_, q)| q.describe())
            .collect();
        let _ = writeln!(
            table,
            "{:>6} {:>7} {:>16} {:>16} {:>16} {:>16}  {}",
            via.label(),
            failed,
            spread(&|r| r.ring.value_at_quantile(0.5) as f64).show(0),
            spread(&|r| r.ring.value_at_quantile(0.99) as f64).show(0),
            spread(&|r| r.server_cpu_us_per_call).show(0),
            spread(&|r| r.generator_cpu_us_per_call).show(0),
            if notes.is_empty() {
                "quiet".to_owned()
            } else {
                notes.join("; ")
            }
        );
        over_transports.insert(
            via.label().into(),
            serde_json::json!({
                "runs": runs_of.iter().map(|(r, q)| {
                    let mut e = calls_json(r);
                    e["machine"] = q.json();
                    e
                }).collect::<Vec<_>>(),
                "ring_p50_us": spread(&|r| r.ring.value_at_quantile(0.5) as f64).json(),
                "ring_p99_us": spread(&|r| r.ring.value_at_quantile(0.99) as f64).json(),
                "server_cpu_us_per_call": spread(&|r| r.server_cpu_us_per_call).json(),
            }),
        );
    }
    json.insert(
        "calls_1to1_by_transport".into(),
        serde_json::Value::Object(over_transports),
    );

    // Printed as it goes: a later phase that fails loses nothing above.
    print!("{table}");
    table.clear();

    // 2-7. The knee (ours and the peer's), fan-out, timers, persistence,
    //      idle memory and relay, several nodes on NATS: each figure from
    //      `runs` alternating runs.
    let mut ctx = Ctx {
        server_bin,
        cpu,
        secs,
        quick,
        runs,
        with_kamailio,
        table,
        json,
        points,
    };
    let knee = sections::knee(&mut ctx).await?;
    sections::fan_out(&mut ctx).await?;
    sections::timers(&mut ctx).await?;
    sections::persistence(&mut ctx, knee).await?;
    sections::idle_and_relay(&mut ctx).await?;
    crate::cluster::section(&mut ctx).await?;
    let Ctx {
        table,
        json,
        mut points,
        ..
    } = ctx;

    println!("{table}");
    std::fs::create_dir_all(out)?;
    let json_path = out.join("bench.json");
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&serde_json::Value::Object(json))?,
    )?;
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let svg_path = out.join("latency.svg");
    std::fs::write(&svg_path, svg(&points))?;
    println!("wrote {} and {}", json_path.display(), svg_path.display());
    Ok(())
}
