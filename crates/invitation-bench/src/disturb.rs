//! Was the machine quiet while we measured? A figure taken while the
//! hypervisor stole time from our vCPUs, or while some other program ran
//! on the CPUs the server and the generator are pinned to, measures that
//! program as much as ours. [`Probe`] reads `/proc` before and after a
//! run and says what disturbed it, so the suite can print it next to the
//! figure instead of reporting a number silently.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

/// Steal above this share of a pinned CPU's time marks a run disturbed.
const STEAL_LIMIT_PCT: f64 = 2.0;
/// Another program using more than this share of a pinned CPU marks a run
/// disturbed.
const OTHERS_LIMIT_PCT: f64 = 5.0;

/// One CPU's counters from `/proc/stat` (clock ticks).
#[derive(Debug, Clone, Copy, Default)]
struct CpuTicks {
    total: u64,
    steal: u64,
}

fn cpu_ticks() -> HashMap<usize, CpuTicks> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(name) = fields.next() else { continue };
        let Some(cpu) = name.strip_prefix("cpu").and_then(|n| n.parse().ok()) else {
            continue;
        };
        // user nice system idle iowait irq softirq steal (guest time is
        // already inside user and nice).
        let values: Vec<u64> = fields.take(8).filter_map(|v| v.parse().ok()).collect();
        if values.len() == 8 {
            out.insert(
                cpu,
                CpuTicks {
                    total: values.iter().sum(),
                    steal: values[7],
                },
            );
        }
    }
    out
}

/// Every thread on the machine: (pid, tid) -> (command, CPU ticks used,
/// the CPU it last ran on).
fn threads() -> HashMap<(u32, u32), (String, u64, usize)> {
    let mut out = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(tasks) = std::fs::read_dir(p.path().join("task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
                continue;
            };
            if let Some(parsed) = parse_stat(&stat) {
                out.insert((pid, tid), parsed);
            }
        }
    }
    out
}

/// (command, utime + stime, processor) of a `/proc/.../stat` line. The
/// command may hold spaces and parentheses: the fields start after the
/// last `)`.
fn parse_stat(stat: &str) -> Option<(String, u64, usize)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    // After the command: state is field 3 of the line, so field N is
    // rest[N - 3]: utime 14, stime 15, processor 39.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    let processor: usize = rest.get(36)?.parse().ok()?;
    Some((comm, utime + stime, processor))
}

/// The pids a process started, transitively (and itself).
fn family(root: u32) -> HashSet<u32> {
    let mut parents: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let ppid = std::fs::read_to_string(p.path().join("stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.get(s.rfind(')')? + 2..)?.to_owned();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                });
            if let Some(ppid) = ppid {
                parents.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut seen = HashSet::from([root]);
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &c in parents.get(&p).map_or(&[][..], Vec::as_slice) {
            if seen.insert(c) {
                todo.push(c);
            }
        }
    }
    seen
}

/// What disturbed a run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Disturbance {
    /// The highest steal among the watched CPUs, % of their time.
    pub(crate) steal_pct: f64,
    /// Other programs that ran on the watched CPUs: command and % of one
    /// CPU's time over the run, largest first.
    pub(crate) others: Vec<(String, f64)>,
}

impl Disturbance {
    /// Over either limit.
    pub(crate) fn disturbed(&self) -> bool {
        self.steal_pct > STEAL_LIMIT_PCT
            || self.others.iter().map(|(_, p)| p).sum::<f64>() > OTHERS_LIMIT_PCT
    }

    /// `quiet`, or what disturbed the run.
    pub(crate) fn describe(&self) -> String {
        if !self.disturbed() {
            return "quiet".to_owned();
        }
        let mut s = format!("DISTURBED: steal {:.1} %", self.steal_pct);
        for (comm, pct) in self.others.iter().take(3) {
            let _ = write!(s, ", {comm} {pct:.0} %");
        }
        s
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "disturbed": self.disturbed(),
            "steal_pct": self.steal_pct,
            "others": self.others.iter().map(|(c, p)| serde_json::json!({"command": c, "cpu_pct": p})).collect::<Vec<_>>(),
        })
    }
}

/// Watches the given CPUs over one run.
pub(crate) struct Probe {
    cpus: Vec<usize>,
    cpu: HashMap<usize, CpuTicks>,
    threads: HashMap<(u32, u32), (String, u64, usize)>,
}

impl Probe {
    /// Starts watching `cpus` (all CPUs when empty).
    pub(crate) fn start(cpus: &[usize]) -> Self {
        Self {
            cpus: cpus.to_vec(),
            cpu: cpu_ticks(),
            threads: threads(),
        }
    }

    /// What ran on the watched CPUs since [`Probe::start`] besides this
    /// process and what it started (the servers, the load), and the
    /// programs named in `expected` (a peer that daemonizes, so is no
    /// descendant: `kamailio`, `sipp`), and how much time the hypervisor
    /// stole from them.
    pub(crate) fn finish(self, expected: &[&str]) -> Disturbance {
        let cpu_now = cpu_ticks();
        let watched = |c: &usize| self.cpus.is_empty() || self.cpus.contains(c);
        let mut steal_pct: f64 = 0.0;
        let mut window: u64 = 0;
        for (c, now) in &cpu_now {
            let Some(before) = self.cpu.get(c).filter(|_| watched(c)) else {
                continue;
            };
            let total = now.total.saturating_sub(before.total);
            window = window.max(total);
            if total > 0 {
                let stolen = now.steal.saturating_sub(before.steal);
                steal_pct = steal_pct.max(100.0 * stolen as f64 / total as f64);
            }
        }
        let ours = family(std::process::id());
        let mut by_comm: HashMap<String, u64> = HashMap::new();
        for ((pid, tid), (comm, ticks, processor)) in threads() {
            if ours.contains(&pid) || !watched(&processor) || expected.contains(&comm.as_str()) {
                continue;
            }
            let before = self.threads.get(&(pid, tid)).map_or(0, |t| t.1);
            let used = ticks.saturating_sub(before);
            if used > 0 {
                *by_comm.entry(comm).or_default() += used;
            }
        }
        let mut others: Vec<(String, f64)> = by_comm
            .into_iter()
            .map(|(c, t)| (c, 100.0 * t as f64 / window.max(1) as f64))
            .filter(|(_, p)| *p >= 0.5)
            .collect();
        others.sort_by(|a, b| b.1.total_cmp(&a.1));
        Disturbance { steal_pct, others }
    }
}

/// Median and range of some runs' figures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spread {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

impl Spread {
    /// Of `values` (NaN when empty).
    pub(crate) fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Self {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Self {
            median,
            min: v[0],
            max: v[v.len() - 1],
        }
    }

    /// `median (min-max)`, with `digits` decimals.
    pub(crate) fn show(&self, digits: usize) -> String {
        if self.median.is_nan() {
            return "-".to_owned();
        }
        format!(
            "{:.d$} ({:.d$}-{:.d$})",
            self.median,
            self.min,
            self.max,
            d = digits
        )
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({"median": self.median, "min": self.min, "max": self.max})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_spaces_and_parentheses_in_the_command_parses() {
        // Fields after the command: state ppid pgrp session tty tpgid flags
        // minflt cminflt majflt cmajflt utime stime ... processor (39th).
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[14 - 3] = "700".into(); // utime
        fields[15 - 3] = "42".into(); // stime
        fields[39 - 3] = "1".into(); // processor
        let line = format!("1234 (tokio (worker) 1) {}", fields.join(" "));
        assert_eq!(
            parse_stat(&line),
            Some(("tokio (worker) 1".to_owned(), 742, 1))
        );
    }

    #[test]
    fn median_and_range() {
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Spread::of(&[4.0, 1.0, 2.0, 3.0]);
        assert_eq!(s.median, 2.5);
        assert_eq!(s.show(1), "2.5 (1.0-4.0)");
        assert_eq!(Spread::of(&[]).show(0), "-");
    }

    /// A busy program that is not ours (started through `setsid -f`, so
    /// not a descendant: it stops by itself after a second) is named with
    /// its share; this process's own work is not.
    #[test]
    fn another_program_on_the_watched_cpus_is_named() {
        let probe = Probe::start(&[]);
        let started = std::process::Command::new("setsid")
            .args(["-f", "timeout", "1", "sh", "-c", "while :; do :; done"])
            .status()
            .expect("setsid runs");
        assert!(started.success());
        // Our own work meanwhile, for a measured window of 300 ms.
        let mut x = 0u64;
        let t0 = std::time::Instant::now();
        while t0.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let d = probe.finish(&[]);
        let sh = d.others.iter().find(|(c, _)| c == "sh");
        assert!(sh.is_some_and(|(_, pct)| *pct >= 10.0), "{d:?}");
        assert!(d.disturbed(), "{d:?}");
        assert!(d.describe().contains("sh"), "{}", d.describe());
        let me = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert!(
            !d.others.iter().any(|(c, _)| c == me.trim()),
            "our own work counted: {d:?}"
        );
    }
}
