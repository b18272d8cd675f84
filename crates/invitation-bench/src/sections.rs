//! The suite's sections after the 1:1 comparison (knee, fan-out, timers,
//! persistence, idle memory, relay; several nodes are in [`crate::cluster`]),
//! each measured in `runs` runs, alternating ours with the peer or the
//! variants it compares, and printed as the median and range of each figure
//! with whether the machine was quiet meanwhile.

use std::fmt::Write as _;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::disturb::{Probe, Spread};
use crate::load::{self, CallsResult, IdleResult, RecoveryResult, RelayResult, TimeoutsResult};
use crate::report::{
    calls_json, calls_line, idle_line, kamailio, recovery_json, recovery_line, relay_line,
    run_calls, timeouts_line,
};
use crate::scrape::bound;
use crate::{Durability, Store, start_server};

/// What every section needs, and where it writes.
pub(crate) struct Ctx<'a> {
    pub(crate) server_bin: &'a Option<PathBuf>,
    pub(crate) cpu: &'a str,
    /// Seconds per run (the knee search and fixed-rate runs cap it at 5).
    pub(crate) secs: f64,
    pub(crate) quick: bool,
    pub(crate) runs: usize,
    pub(crate) with_kamailio: bool,
    pub(crate) table: String,
    pub(crate) json: serde_json::Map<String, serde_json::Value>,
    /// (rate, ring p50 µs, ring p99 µs) for the plot.
    pub(crate) points: Vec<(f64, u64, u64)>,
}

impl Ctx<'_> {
    /// Prints what the table holds so far: a later phase that fails loses
    /// nothing above.
    pub(crate) fn flush(&mut self) {
        print!("{}", self.table);
        self.table.clear();
    }

    pub(crate) fn short(&self) -> f64 {
        self.secs.min(5.0)
    }
}

/// Runs `run` under a [`Probe`]; a disturbed run adds a note saying what
/// else ran, labelled.
pub(crate) async fn watched<T>(
    label: &str,
    expected: &[&str],
    notes: &mut Vec<String>,
    run: impl Future<Output = Result<T>>,
) -> Result<(T, serde_json::Value)> {
    let probe = Probe::start(&[]);
    let got = run.await;
    let quiet = probe.finish(expected);
    if quiet.disturbed() {
        notes.push(format!("{label}: {}", quiet.describe()));
    }
    Ok((got?, quiet.json()))
}

/// "quiet", or what disturbed the runs (each note says DISTURBED).
pub(crate) fn machine(notes: &[String]) -> String {
    if notes.is_empty() {
        "quiet".to_owned()
    } else {
        notes.join("; ")
    }
}

/// The runs of one variant: each run's result, what the machine was doing
/// during it, and a note for each disturbed run.
pub(crate) struct Rounds<T> {
    pub(crate) results: Vec<T>,
    pub(crate) machines: Vec<serde_json::Value>,
    pub(crate) notes: Vec<String>,
}

/// Runs every variant in turn, `runs` rounds (v1, v2, ..., v1, v2, ...),
/// each run under a [`Probe`]; `line` may print a run's result as it comes.
pub(crate) async fn alternate<V: Copy, T, Fut>(
    runs: usize,
    variants: &[V],
    table: &mut String,
    line: impl Fn(&T) -> Option<String>,
    mut run: impl FnMut(V) -> Fut,
) -> Result<Vec<Rounds<T>>>
where
    Fut: Future<Output = Result<T>>,
{
    let mut by: Vec<Rounds<T>> = variants
        .iter()
        .map(|_| Rounds {
            results: Vec::new(),
            machines: Vec::new(),
            notes: Vec::new(),
        })
        .collect();
    for _ in 0..runs {
        for (variant, rounds) in variants.iter().zip(&mut by) {
            let (result, m) = watched("ours", &[], &mut rounds.notes, run(*variant)).await?;
            if let Some(l) = line(&result) {
                let _ = writeln!(table, "  {l}");
            }
            rounds.results.push(result);
            rounds.machines.push(m);
        }
    }
    Ok(by)
}

pub(crate) fn spread_of<T>(items: &[T], f: impl Fn(&T) -> f64) -> Spread {
    Spread::of(&items.iter().map(f).collect::<Vec<_>>())
}

/// One line for several runs of the same calls: median (min-max) of each
/// figure, failures summed.
pub(crate) fn calls_summary(rs: &[CallsResult]) -> String {
    let q = |p| move |r: &CallsResult| r.ring.value_at_quantile(p) as f64;
    let a = |p| move |r: &CallsResult| r.accepted.value_at_quantile(p) as f64;
    // The median of the runs' bucket bounds (NaN when no run had one).
    let server_p99 = spread_of(rs, |r| r.server_ring.quantile_us(0.99).unwrap_or(f64::NAN)).median;
    format!(
        "{} runs: {} failed, {} shed; invite->ring p50 {} us, p99 {} us (server's share p99 {}); invite->accepted p99 {} us; server {} us CPU/call, generator {} us CPU/call",
        rs.len(),
        rs.iter().map(|r| r.failed).sum::<u64>(),
        rs.iter().map(|r| r.shed).sum::<u64>(),
        spread_of(rs, q(0.5)).show(0),
        spread_of(rs, q(0.99)).show(0),
        bound(Some(server_p99).filter(|v| !v.is_nan())),
        spread_of(rs, a(0.99)).show(0),
        spread_of(rs, |r| r.server_cpu_us_per_call).show(0),
        spread_of(rs, |r| r.generator_cpu_us_per_call).show(0),
    )
}

/// The summary of several runs for bench.json: each run, and the spread of
/// the figures the docs quote.
pub(crate) fn calls_runs_json(
    rs: &[CallsResult],
    machines: &[serde_json::Value],
) -> serde_json::Value {
    serde_json::json!({
        "runs": rs.iter().zip(machines).map(|(r, m)| {
            let mut e = calls_json(r);
            e["machine"] = m.clone();
            e
        }).collect::<Vec<_>>(),
        "ring_p50_us": spread_of(rs, |r| r.ring.value_at_quantile(0.5) as f64).json(),
        "ring_p99_us": spread_of(rs, |r| r.ring.value_at_quantile(0.99) as f64).json(),
        "accepted_p99_us": spread_of(rs, |r| r.accepted.value_at_quantile(0.99) as f64).json(),
        "server_cpu_us_per_call": spread_of(rs, |r| r.server_cpu_us_per_call).json(),
        "failed": rs.iter().map(|r| r.failed).sum::<u64>(),
        "shed": rs.iter().map(|r| r.shed).sum::<u64>(),
    })
}

/// One knee search: the highest offered rate with no failure, nothing shed
/// and p99 <= 10 ms for both ring and accept; every run's line goes to the
/// table. Returns the knee, each rate's figures and the plot's points.
async fn knee_search(
    ctx: &mut Ctx<'_>,
    store: Store,
) -> Result<(f64, Vec<serde_json::Value>, Vec<(f64, u64, u64)>)> {
    let (server_bin, cpu, short) = (ctx.server_bin, ctx.cpu, ctx.short());
    knee_ladder(&mut ctx.table, store.label(), &KNEE_RATES, |rate| {
        run_calls(server_bin, cpu, rate, short, 1, false, store)
    })
    .await
}

/// The rates a knee search steps through.
pub(crate) const KNEE_RATES: [f64; 10] = [
    1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0, 8000.0, 10000.0, 12000.0, 16000.0,
];

/// [`knee_search`] over `rates`, each run by `run` (`label` names the
/// server in the table).
pub(crate) async fn knee_ladder<Fut>(
    table: &mut String,
    label: &str,
    rates: &[f64],
    mut run: impl FnMut(f64) -> Fut,
) -> Result<(f64, Vec<serde_json::Value>, Vec<(f64, u64, u64)>)>
where
    Fut: Future<Output = Result<CallsResult>>,
{
    let mut knee = 0.0;
    let mut runs = Vec::new();
    let mut points = Vec::new();
    for &rate in rates {
        let r = run(rate).await?;
        let ok = r.failed == 0
            && r.shed == 0
            && r.ring.value_at_quantile(0.99) <= 10_000
            && r.accepted.value_at_quantile(0.99) <= 10_000;
        let _ = writeln!(table, "    {}", calls_line(&r));
        points.push((
            rate,
            r.ring.value_at_quantile(0.5),
            r.ring.value_at_quantile(0.99),
        ));
        runs.push(calls_json(&r));
        if !ok {
            break;
        }
        knee = rate;
    }
    let _ = writeln!(table, "    knee ({label}): {knee} calls/s");
    Ok((knee, runs, points))
}

/// The Kamailio peer's knee: the highest offered rate with no failed call
/// and Kamailio below 95 % of its vCPU (CPU per call x rate), stepping up
/// as [`knee_search`] does.
fn kamailio_knee(
    secs: f64,
    table: &mut String,
    notes: &mut Vec<String>,
) -> (f64, Vec<serde_json::Value>) {
    let mut knee = 0.0;
    let mut runs = Vec::new();
    for rate in [
        1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0, 8000.0, 12000.0,
    ] {
        let probe = Probe::start(&[]);
        let got = kamailio(rate as u64, (rate * secs) as u64);
        let quiet = probe.finish(&["kamailio", "sipp"]);
        if quiet.disturbed() {
            notes.push(format!("peer at {rate}/s: {}", quiet.describe()));
        }
        let Ok((completed, failed, us_per_call)) = got else {
            let _ = writeln!(table, "    {rate}/s: no result ({})", got.unwrap_err());
            break;
        };
        let busy = us_per_call * rate / 1e6;
        let ok = failed == 0 && busy < 0.95;
        let _ = writeln!(
            table,
            "    {rate}/s: {completed} completed, {failed} failed, {us_per_call:.0} us/call, vCPU {:.0} % busy; {}",
            busy * 100.0,
            quiet.describe()
        );
        runs.push(
            serde_json::json!({"rate": rate, "completed": completed, "failed": failed,
            "cpu_us_per_call": us_per_call, "vcpu_busy": busy, "machine": quiet.json()}),
        );
        if !ok {
            break;
        }
        knee = rate;
    }
    (knee, runs)
}

/// The knee, ours and the peer's, alternating; latency at 10/50/80 % of
/// our median knee and overload at twice it. Returns our median knee.
pub(crate) async fn knee(ctx: &mut Ctx<'_>) -> Result<f64> {
    let runs = ctx.runs;
    let _ = writeln!(
        ctx.table,
        "\nknee search ({} s per rate), {runs} alternating runs: ours, then Kamailio's found the same way (no failed call, its vCPU below 95 %)",
        ctx.short()
    );
    let mut ours = Vec::new();
    let mut peers = Vec::new();
    let mut notes = Vec::new();
    let mut ours_json = Vec::new();
    let mut peer_json = Vec::new();
    let mut plots = Vec::new();
    for i in 0..runs {
        let _ = writeln!(ctx.table, "  run {} of {runs}, ours:", i + 1);
        let probe = Probe::start(&[]);
        let (k, r, pts) = knee_search(ctx, Store::Memory).await?;
        let quiet = probe.finish(&[]);
        if quiet.disturbed() {
            notes.push(format!("ours, run {}: {}", i + 1, quiet.describe()));
        }
        ours.push(k);
        ours_json.push(serde_json::json!({"knee": k, "rates": r, "machine": quiet.json()}));
        plots.push((k, pts));
        if ctx.with_kamailio {
            let _ = writeln!(ctx.table, "  run {} of {runs}, Kamailio:", i + 1);
            let (k, r) = kamailio_knee(ctx.short(), &mut ctx.table, &mut notes);
            peers.push(k);
            peer_json.push(serde_json::json!({"knee": k, "rates": r}));
        }
        ctx.flush();
    }
    let knee = Spread::of(&ours);
    let peer = Spread::of(&peers);
    let ratios = Spread::of(
        &ours
            .iter()
            .zip(&peers)
            .map(|(o, p)| o / p)
            .collect::<Vec<_>>(),
    );
    let _ = writeln!(
        ctx.table,
        "  knee: ours {} calls/s, Kamailio's {} calls/s, ratio {} (each run of ours to the peer's after it); {}",
        knee.show(0),
        peer.show(0),
        ratios.show(2),
        machine(&notes)
    );
    // The plot: the run whose knee is the median.
    if let Some((_, pts)) = plots.iter().find(|(k, _)| *k == knee.median) {
        ctx.points.extend(pts.iter().copied());
    }
    let knee = knee.median;

    // Latency at 10 %, 50 % and 80 % of the knee, and overload at 2x.
    let mut at_knee = Vec::new();
    let mut overload = serde_json::Value::Null;
    if knee > 0.0 {
        let (server_bin, cpu, short) = (ctx.server_bin, ctx.cpu, ctx.short());
        let shares = [0.1, 0.5, 0.8];
        let by = alternate(
            runs,
            &shares,
            &mut ctx.table,
            |_| None,
            |share: f64| {
                run_calls(
                    server_bin,
                    cpu,
                    (knee * share).round(),
                    short,
                    1,
                    false,
                    Store::Memory,
                )
            },
        )
        .await?;
        for (share, r) in shares.iter().zip(&by) {
            let rate = (knee * share).round();
            let _ = writeln!(
                ctx.table,
                "  at {:.0} % of the knee ({rate}/s), {}; {}",
                share * 100.0,
                calls_summary(&r.results),
                machine(&r.notes)
            );
            let mut entry = calls_runs_json(&r.results, &r.machines);
            entry["share_of_knee"] = (*share).into();
            entry["rate"] = rate.into();
            at_knee.push(entry);
        }
        let rate = 2.0 * knee;
        let mut by = alternate(
            runs,
            &[rate],
            &mut ctx.table,
            |_| None,
            |rate| run_calls(server_bin, cpu, rate, short, 1, false, Store::Memory),
        )
        .await?;
        let Rounds {
            results: rs,
            machines,
            notes,
        } = by.remove(0);
        let secs = ctx.short();
        let goodput = spread_of(&rs, |r| r.completed as f64 / secs);
        let _ = writeln!(
            ctx.table,
            "  overload at 2x the knee ({rate} calls/s offered): goodput {} calls/s = {:.2}x the knee ({:.2}-{:.2}), shed with `unavailable` {}, failed {}; ring p99 {} us; server {} us CPU/call; {}",
            goodput.show(0),
            goodput.median / knee,
            goodput.min / knee,
            goodput.max / knee,
            spread_of(&rs, |r| r.shed as f64).show(0),
            spread_of(&rs, |r| r.failed as f64).show(0),
            spread_of(&rs, |r| r.ring.value_at_quantile(0.99) as f64).show(0),
            spread_of(&rs, |r| r.server_cpu_us_per_call).show(0),
            machine(&notes)
        );
        overload = calls_runs_json(&rs, &machines);
        overload["offered_rate"] = rate.into();
        overload["goodput"] = goodput.json();
        overload["goodput_to_knee"] = (goodput.median / knee).into();
    }
    ctx.json.insert(
        "knee".into(),
        serde_json::json!({
            "calls_per_s": knee, "spread": Spread::of(&ours).json(), "runs": ours_json,
            "kamailio": {"calls_per_s": peer.json(), "runs": peer_json},
            "ours_to_peer": ratios.json(),
            "latency_at_share_of_knee": at_knee, "overload": overload,
        }),
    );
    ctx.flush();
    Ok(knee)
}

/// Group calls at 200/s with 1, 5 and 9 callees, alternating.
pub(crate) async fn fan_out(ctx: &mut Ctx<'_>) -> Result<()> {
    let _ = writeln!(
        ctx.table,
        "\ngroup calls at 200/s (first callee accepts, others decline), {} alternating rounds (1, 5, 9 callees, 1, ...)",
        ctx.runs
    );
    let counts = [1usize, 5, 9];
    let (server_bin, cpu, short) = (ctx.server_bin, ctx.cpu, ctx.short());
    let by = alternate(
        ctx.runs,
        &counts,
        &mut ctx.table,
        |_| None,
        |callees| run_calls(server_bin, cpu, 200.0, short, callees, false, Store::Memory),
    )
    .await?;
    let mut fan = Vec::new();
    for (callees, r) in counts.iter().zip(&by) {
        let _ = writeln!(
            ctx.table,
            "  {callees} callee(s): {}; {}",
            calls_summary(&r.results),
            machine(&r.notes)
        );
        let mut e = calls_runs_json(&r.results, &r.machines);
        e["callees"] = (*callees).into();
        fan.push(e);
    }
    ctx.json.insert("fan_out".into(), fan.into());
    ctx.flush();
    Ok(())
}

/// Timers: a burst (all created, so all expiring, at once) and a steady
/// state (created over 5 s, expiring at the same pace), alternating.
pub(crate) async fn timers(ctx: &mut Ctx<'_>) -> Result<()> {
    let shapes = [
        (2000usize, 0u64),
        (if ctx.quick { 4000 } else { 15_000 }, 5000),
    ];
    let _ = writeln!(
        ctx.table,
        "\ntimeouts, {} alternating rounds (burst, steady, burst, ...)",
        ctx.runs
    );
    let (server_bin, cpu) = (ctx.server_bin, ctx.cpu);
    let by = alternate(
        ctx.runs,
        &shapes,
        &mut ctx.table,
        |t| Some(timeouts_line(t)),
        |(pending, spread_ms)| async move {
            let server = start_server(server_bin, cpu, Store::Memory).await?;
            let t = load::timeout_storm(&server, pending, Duration::from_millis(spread_ms)).await;
            server.stop().await;
            t
        },
    )
    .await?;
    let mut timers = Vec::new();
    for ((pending, spread_ms), r) in shapes.iter().zip(&by) {
        let (ts, ms, notes) = (&r.results, &r.machines, &r.notes);
        let server = |q: f64| {
            spread_of(ts, move |t: &TimeoutsResult| {
                t.server_lateness.quantile_us(q).unwrap_or(f64::NAN)
            })
        };
        let caller = |q: f64| {
            spread_of(ts, move |t: &TimeoutsResult| {
                t.lateness.value_at_quantile(q) as f64
            })
        };
        let missing: usize = ts.iter().map(|t| t.missing).sum();
        let rss = spread_of(ts, |t| t.server_rss_per_pending);
        let _ = writeln!(
            ctx.table,
            "  {pending} pending over {spread_ms} ms, {} runs: at the server p50 <= {} us, p99 <= {} us, max <= {} us; at the caller p50 {} us, p99 {} us, max {} us; {missing} missing; server RSS {} B per pending invitation; {}",
            ts.len(),
            server(0.5).show(0),
            server(0.99).show(0),
            server(1.0).show(0),
            caller(0.5).show(0),
            caller(0.99).show(0),
            spread_of(ts, |t| t.lateness.max() as f64).show(0),
            rss.show(0),
            machine(notes)
        );
        timers.push(serde_json::json!({
            "pending": pending, "spread_ms": spread_ms, "missing": missing,
            "server_lateness_p50_us_at_most": server(0.5).json(),
            "server_lateness_p99_us_at_most": server(0.99).json(),
            "server_lateness_max_us_at_most": server(1.0).json(),
            "caller_lateness_p50_us": caller(0.5).json(), "caller_lateness_p99_us": caller(0.99).json(),
            "caller_lateness_max_us": spread_of(ts, |t| t.lateness.max() as f64).json(),
            "server_rss_per_pending_bytes": rss.json(),
            "machines": ms,
        }));
    }
    ctx.json.insert("timeouts".into(), timers.into());
    ctx.flush();
    Ok(())
}

/// The cost of keeping the state on disk: CPU and journal bytes per call at
/// fixed rates in each mode (alternating), the durable knee against the
/// in-memory one, and the restart time with many invitations held.
pub(crate) async fn persistence(ctx: &mut Ctx<'_>, memory_knee: f64) -> Result<()> {
    let runs = ctx.runs;
    let _ = writeln!(
        ctx.table,
        "\npersistence: 1:1 calls in memory vs durable, {runs} alternating rounds (memory, write, fsync, memory, ...)"
    );
    let stores = [
        Store::Memory,
        Store::Durable(Durability::Write),
        Store::Durable(Durability::Fsync),
    ];
    let mut fixed = Vec::new();
    for rate in [1000.0, 2000.0] {
        let (server_bin, cpu, short) = (ctx.server_bin, ctx.cpu, ctx.short());
        let by = alternate(
            runs,
            &stores,
            &mut ctx.table,
            |_| None,
            |store| run_calls(server_bin, cpu, rate, short, 1, false, store),
        )
        .await?;
        for (store, r) in stores.iter().zip(&by) {
            let (rs, ms, notes) = (&r.results, &r.machines, &r.notes);
            let journal = if *store == Store::Memory {
                String::new()
            } else {
                format!(
                    "; journal {} bytes/call, {} entries/call",
                    spread_of(rs, |r| r.journal_bytes as f64 / r.completed.max(1) as f64).show(0),
                    spread_of(rs, |r| r.journal_entries as f64 / r.completed.max(1) as f64).show(1),
                )
            };
            let _ = writeln!(
                ctx.table,
                "  {rate}/s [{}] {}{journal}; {}",
                store.label(),
                calls_summary(rs),
                machine(notes)
            );
            let mut e = calls_runs_json(rs, ms);
            e["store"] = store.label().into();
            e["rate"] = rate.into();
            fixed.push(e);
        }
        ctx.flush();
    }
    let _ = writeln!(ctx.table, "  knee search, durable (write), {runs} runs:");
    let mut knees = Vec::new();
    let mut knee_json = Vec::new();
    let mut notes = Vec::new();
    for i in 0..runs {
        let probe = Probe::start(&[]);
        let (k, r, _) = knee_search(ctx, Store::Durable(Durability::Write)).await?;
        let quiet = probe.finish(&[]);
        if quiet.disturbed() {
            notes.push(format!("run {}: {}", i + 1, quiet.describe()));
        }
        knees.push(k);
        knee_json.push(serde_json::json!({"knee": k, "rates": r, "machine": quiet.json()}));
    }
    let knee = Spread::of(&knees);
    let ratio = if memory_knee > 0.0 {
        knee.median / memory_knee
    } else {
        f64::NAN
    };
    let _ = writeln!(
        ctx.table,
        "  durable knee {} calls/s = {ratio:.2}x the in-memory knee ({memory_knee}; target >= 0.8x); {}",
        knee.show(0),
        machine(&notes)
    );
    ctx.flush();
    let pending = if ctx.quick { 10_000 } else { 100_000 };
    // Once from the journal alone, once from a snapshot and its tail.
    let shapes = [None, Some(8)];
    let (server_bin, cpu) = (ctx.server_bin, ctx.cpu);
    let by = alternate(
        runs,
        &shapes,
        &mut ctx.table,
        |rec: &RecoveryResult| Some(recovery_line(rec)),
        |snapshot_after_mb| {
            load::recovery(
                server_bin,
                cpu,
                Durability::Write,
                pending,
                snapshot_after_mb,
            )
        },
    )
    .await?;
    let mut recoveries = Vec::new();
    for (snapshot_after_mb, r) in shapes.iter().zip(&by) {
        let (rs, ms, notes) = (&r.results, &r.machines, &r.notes);
        let restart = spread_of(rs, |r| r.restart.as_millis() as f64);
        let own = spread_of(rs, |r| r.recovered.map_or(f64::NAN, |x| x.0 as f64));
        let _ = writeln!(
            ctx.table,
            "  recovery of {pending} held invitations ({}), {} runs: serving after {} ms (the server's own count {} ms); journal {} B/invitation; RSS after {} kB; {}",
            if snapshot_after_mb.is_some() {
                "from a snapshot and its tail"
            } else {
                "from the journal alone"
            },
            rs.len(),
            restart.show(0),
            own.show(0),
            spread_of(rs, |r| r.journal_bytes as f64 / r.pending.max(1) as f64).show(0),
            spread_of(rs, |r| r.rss_kb as f64).show(0),
            machine(notes)
        );
        recoveries.push(serde_json::json!({
            "snapshot_after_mb": snapshot_after_mb,
            "runs": rs.iter().zip(ms).map(|(r, m)| { let mut e = recovery_json(r); e["machine"] = m.clone(); e }).collect::<Vec<_>>(),
            "restart_ms": restart.json(), "server_recovery_ms": own.json(),
        }));
    }
    ctx.json.insert(
        "persistence".into(),
        serde_json::json!({
            "fixed_rates": fixed,
            "knee": {"calls_per_s": knee.json(), "ratio_to_memory": ratio, "runs": knee_json},
            "recovery": recoveries,
        }),
    );
    ctx.flush();
    Ok(())
}

/// Memory per idle connection and relayed messages per second, ours
/// against the bare echo, alternating.
pub(crate) async fn idle_and_relay(ctx: &mut Ctx<'_>) -> Result<()> {
    let runs = ctx.runs;
    let clients = if ctx.quick { 1000 } else { 5000 };
    let _ = writeln!(
        ctx.table,
        "\nidle connections and relay, ours against a bare WebSocket echo, {runs} alternating runs"
    );
    let mut idle: Vec<IdleResult> = Vec::new();
    let mut relay: Vec<RelayResult> = Vec::new();
    let mut idle_notes = Vec::new();
    let mut relay_notes = Vec::new();
    for _ in 0..runs {
        let (i, _) = watched(
            "idle",
            &[],
            &mut idle_notes,
            load::idle_both(ctx.server_bin, ctx.cpu, clients, 1),
        )
        .await?;
        let _ = writeln!(ctx.table, "  {}", idle_line(&i));
        idle.push(i);
        let (r, _) = watched(
            "relay",
            &[],
            &mut relay_notes,
            load::relay_both(ctx.server_bin, ctx.cpu, if ctx.quick { 2.0 } else { 5.0 }),
        )
        .await?;
        let _ = writeln!(ctx.table, "  {}", relay_line(&r));
        relay.push(r);
    }
    let ours = spread_of(&idle, |i| i.ours_bytes);
    let echo = spread_of(&idle, |i| i.echo_bytes);
    let ratio = spread_of(&idle, |i| i.ours_bytes / i.echo_bytes.max(1.0));
    let _ = writeln!(
        ctx.table,
        "  idle: {clients} connections: ours {} B each, bare echo {} B each: {}x; {}",
        ours.show(0),
        echo.show(0),
        ratio.show(2),
        machine(&idle_notes)
    );
    let ours_r = spread_of(&relay, |r| r.ours_per_s);
    let echo_r = spread_of(&relay, |r| r.echo_per_s);
    let ratio_r = spread_of(&relay, |r| r.ours_per_s / r.echo_per_s.max(1.0));
    let _ = writeln!(
        ctx.table,
        "  relay: ours {} msg/s ({} us CPU each), bare echo {} msg/s ({} us CPU each): {}x; {}",
        ours_r.show(0),
        spread_of(&relay, |r| r.ours_cpu_us_per_msg).show(1),
        echo_r.show(0),
        spread_of(&relay, |r| r.echo_cpu_us_per_msg).show(1),
        ratio_r.show(2),
        machine(&relay_notes)
    );
    ctx.json.insert(
        "idle".into(),
        serde_json::json!({"clients": clients, "ours_bytes": ours.json(), "echo_bytes": echo.json(), "ratio": ratio.json(),
            "runs": idle.iter().map(|i| serde_json::json!({"ours_bytes": i.ours_bytes, "echo_bytes": i.echo_bytes})).collect::<Vec<_>>()}),
    );
    ctx.json.insert(
        "relay".into(),
        serde_json::json!({"ours_msg_per_s": ours_r.json(), "echo_msg_per_s": echo_r.json(), "ratio": ratio_r.json(),
            "runs": relay.iter().map(|r| serde_json::json!({"ours_msg_per_s": r.ours_per_s, "echo_msg_per_s": r.echo_per_s, "ours_cpu_us_per_msg": r.ours_cpu_us_per_msg, "echo_cpu_us_per_msg": r.echo_cpu_us_per_msg})).collect::<Vec<_>>()}),
    );
    ctx.flush();
    Ok(())
}
