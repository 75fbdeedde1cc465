//! Turns a directory of run results into `BENCHMARKS.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::modes::RunResult;
use crate::spread::{self, Spread, Verdict};

/// Every repetition of every run, by (server, mode), in repetition order.
pub type AllRuns = BTreeMap<(String, String), Vec<RunResult>>;

/// Reads every `*.json` run result in `dir` (other JSON, such as
/// `meta.json`, is skipped), keyed by (server, mode); `LABEL-RUN.rK.json`
/// is repetition K of a run, `LABEL-RUN.json` a run made once.
pub fn load(dir: &Path) -> Result<AllRuns> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path)?;
            if let Ok(r) = serde_json::from_str::<RunResult>(&text) {
                found.push((repetition(&path), r));
            }
        }
    }
    found.sort_by_key(|(k, _)| *k);
    let mut out = AllRuns::new();
    for (_, r) in found {
        out.entry((r.server.clone(), r.mode.clone()))
            .or_default()
            .push(r);
    }
    Ok(out)
}

/// K of a file named `….rK.json`; 0 for any other name.
fn repetition(path: &Path) -> u32 {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.rsplit_once(".r"))
        .and_then(|(_, k)| k.parse().ok())
        .unwrap_or(0)
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn fmt_num(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) => format!("{x:.digits$}"),
        None => "—".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>, higher_is_better: bool) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a > 0.0 && b > 0.0 => {
            let r = if higher_is_better { a / b } else { b / a };
            format!("{r:.2}x")
        }
        _ => "—".into(),
    }
}

/// A figure of one (server, mode), or None when that run is absent.
type Pick = fn(&RunResult) -> Option<f64>;

/// One run per (server, mode).
pub type Runs = BTreeMap<(String, String), RunResult>;

/// The figure a mode's repetitions are ranked by to pick the one the
/// detail sections show, a tie-breaker, and what the figure is.
type Rank = fn(&RunResult) -> (Option<f64>, Option<f64>);

fn rank_of(mode: &str) -> Option<(Rank, &'static str)> {
    Some(match mode {
        "broadcast" => (
            |r| (ladder_max(r), ladder_p95_at_top(r).map(|x| -x)),
            "the most clients within the limit, then the p95 at that step",
        ),
        "fanout" => (
            |r| (fanout_best(r), fanout_complete(r)),
            "deliveries/s within the p99 limit",
        ),
        "connect" => (|r| (connect_rate(r), None), "connections/s"),
        "idle" => (|r| (idle_bytes(r), None), "RSS per connection"),
        "slow" => (|r| (slow_p99_during(r), None), "p99 during the stall"),
        _ => return None,
    })
}

/// Which of a run's repetitions the detail sections show: the median one by
/// its mode's figure (`rank_of`; the lower of the middle two for an even
/// count, a repetition without the figure ranked lowest), else the first.
pub fn representative(reps: &[RunResult]) -> usize {
    let Some(rank) = reps.first().and_then(|r| rank_of(&r.mode)).map(|(f, _)| f) else {
        return 0;
    };
    let key = |r: &RunResult| {
        let (a, b) = rank(r);
        (
            a.unwrap_or(f64::NEG_INFINITY),
            b.unwrap_or(f64::NEG_INFINITY),
        )
    };
    let mut order: Vec<usize> = (0..reps.len()).collect();
    order.sort_by(|&i, &j| {
        let (a, b) = (key(&reps[i]), key(&reps[j]));
        a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1))
    });
    order
        .get(reps.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0)
}

/// The representative repetition of every run ([`representative`]).
pub fn median_runs(all: &AllRuns) -> Runs {
    all.iter()
        .filter(|(_, reps)| !reps.is_empty())
        .map(|(k, reps)| (k.clone(), reps[representative(reps)].clone()))
        .collect()
}

/// For a repeated run, which repetition a detail table shows and why.
fn shown(reps: &[RunResult]) -> String {
    if reps.len() < 2 {
        return String::new();
    }
    let i = representative(reps);
    match reps.first().and_then(|r| rank_of(&r.mode)) {
        Some((_, what)) => format!(
            "; repetition {} of {}, the median by {what}",
            i + 1,
            reps.len()
        ),
        None => format!("; repetition {} of {}", i + 1, reps.len()),
    }
}

struct Row {
    name: &'static str,
    mode: &'static str,
    pick: Pick,
    digits: usize,
    higher_is_better: bool,
    target: &'static str,
}

fn ladder_max(r: &RunResult) -> Option<f64> {
    if !r.ok {
        return None;
    }
    num(&r.metrics["max_clients_within_limit"])
}

fn ladder_p95_at_top(r: &RunResult) -> Option<f64> {
    let steps = r.metrics["steps"].as_array()?;
    steps
        .iter()
        .rev()
        .find(|s| s["within_limit"] == true)
        .and_then(|s| num(&s["rtt"]["p95_ms"]))
}

fn fanout_best(r: &RunResult) -> Option<f64> {
    num(&r.metrics["best"]["deliveries_per_sec"])
}

fn fanout_complete(r: &RunResult) -> Option<f64> {
    num(&r.metrics["best_complete"]["deliveries_per_sec"])
}

fn fanout_p99(r: &RunResult) -> Option<f64> {
    num(&r.metrics["best"]["latency"]["p99_ms"])
}

fn fanout_cpu(r: &RunResult) -> Option<f64> {
    num(&r.metrics["best"]["server_cpu_us_per_delivery"])
}

fn fanout_cpu_user(r: &RunResult) -> Option<f64> {
    num(&r.metrics["best"]["server_user_us_per_delivery"])
}

fn fanout_cpu_kernel(r: &RunResult) -> Option<f64> {
    num(&r.metrics["best"]["server_kernel_us_per_delivery"])
}

fn fanout_loadgen_cpu(r: &RunResult) -> Option<f64> {
    num(&r.metrics["best"]["loadgen_cpu_us_per_delivery"])
}

fn connect_failures(r: &RunResult) -> Option<f64> {
    num(&r.metrics["failures"])
}

fn connect_welcome_p95(r: &RunResult) -> Option<f64> {
    num(&r.metrics["welcome"]["p95_ms"])
}

fn connect_confirm_p95(r: &RunResult) -> Option<f64> {
    num(&r.metrics["confirm"]["p95_ms"])
}

fn connect_rate(r: &RunResult) -> Option<f64> {
    num(&r.metrics["per_sec"])
}

fn idle_bytes(r: &RunResult) -> Option<f64> {
    num(&r.metrics["bytes_per_connection"])
}

fn slow_p99_before(r: &RunResult) -> Option<f64> {
    num(&r.metrics["before"]["latency"]["p99_ms"])
}

fn slow_p99_during(r: &RunResult) -> Option<f64> {
    num(&r.metrics["during"]["latency"]["p99_ms"])
}

fn slow_rss_growth(r: &RunResult) -> Option<f64> {
    let a = num(&r.metrics["before"]["max_rss_bytes"])?;
    let b = num(&r.metrics["during"]["max_rss_bytes"])?;
    Some((b - a) / 1048576.0)
}

const ROWS: &[Row] = &[
    Row {
        name: "broadcast ladder: most clients with p95 RTT within the limit",
        mode: "broadcast",
        pick: ladder_max,
        digits: 0,
        higher_is_better: true,
        target: "19,000 at p95 ≤ 100 ms",
    },
    Row {
        name: "broadcast ladder: p95 RTT at that step (ms)",
        mode: "broadcast",
        pick: ladder_p95_at_top,
        digits: 1,
        higher_is_better: false,
        target: "≤ 100",
    },
    Row {
        name: "fanout: deliveries/s sustained with p99 ≤ limit",
        mode: "fanout",
        pick: fanout_best,
        digits: 0,
        higher_is_better: true,
        target: "≥ 1.3x B1, ≥ 50x Rails",
    },
    Row {
        name: "fanout: deliveries/s with every delivery made, latency aside",
        mode: "fanout",
        pick: fanout_complete,
        digits: 0,
        higher_is_better: true,
        target: "",
    },
    Row {
        name: "fanout: p99 latency at the best rate within the limit (ms)",
        mode: "fanout",
        pick: fanout_p99,
        digits: 1,
        higher_is_better: false,
        target: "≤ 100",
    },
    Row {
        name: "fanout: server CPU µs per delivery",
        mode: "fanout",
        pick: fanout_cpu,
        digits: 2,
        higher_is_better: false,
        target: "≤ 0.8",
    },
    Row {
        name: "fanout: of which in user space (µs)",
        mode: "fanout",
        pick: fanout_cpu_user,
        digits: 2,
        higher_is_better: false,
        target: "",
    },
    Row {
        name: "fanout: of which in the kernel (µs)",
        mode: "fanout",
        pick: fanout_cpu_kernel,
        digits: 2,
        higher_is_better: false,
        target: "",
    },
    Row {
        name: "fanout: the load generator's CPU µs per delivery",
        mode: "fanout",
        pick: fanout_loadgen_cpu,
        digits: 2,
        higher_is_better: false,
        target: "",
    },
    Row {
        name: "connect: failures",
        mode: "connect",
        pick: connect_failures,
        digits: 0,
        higher_is_better: false,
        target: "0",
    },
    Row {
        name: "connect: p95 time to welcome (ms)",
        mode: "connect",
        pick: connect_welcome_p95,
        digits: 1,
        higher_is_better: false,
        target: "",
    },
    Row {
        name: "connect: p95 time to confirm_subscription (ms)",
        mode: "connect",
        pick: connect_confirm_p95,
        digits: 1,
        higher_is_better: false,
        target: "≤ 1000",
    },
    Row {
        name: "connect: connections/s",
        mode: "connect",
        pick: connect_rate,
        digits: 0,
        higher_is_better: true,
        target: "",
    },
    Row {
        name: "idle: server RSS per subscribed connection (bytes)",
        mode: "idle",
        pick: idle_bytes,
        digits: 0,
        higher_is_better: false,
        target: "≤ 4096",
    },
    Row {
        name: "slow: readers' p99 before the stall (ms)",
        mode: "slow",
        pick: slow_p99_before,
        digits: 1,
        higher_is_better: false,
        target: "",
    },
    Row {
        name: "slow: readers' p99 during the stall (ms)",
        mode: "slow",
        pick: slow_p99_during,
        digits: 1,
        higher_is_better: false,
        target: "unchanged within noise",
    },
    Row {
        name: "slow: server RSS growth during the stall (MiB)",
        mode: "slow",
        pick: slow_rss_growth,
        digits: 1,
        higher_is_better: false,
        target: "≤ queue limit × stalled",
    },
];

/// One row of the comparison table: each server's figure over its
/// repetitions, and how many repetitions there were.
pub struct SummaryRow {
    pub name: &'static str,
    pub digits: usize,
    pub higher_is_better: bool,
    pub target: &'static str,
    /// cable, B1, Rails: the figure's spread and the run's repetitions.
    pub servers: [(Option<Spread>, usize); 3],
}

impl SummaryRow {
    fn cell(&self, i: usize) -> String {
        let (s, runs) = self.servers[i];
        spread::cell(s, runs, self.digits)
    }

    /// cable's median against server `i`'s.
    fn ratio(&self, i: usize) -> String {
        let median = |j: usize| self.servers[j].0.map(|s| s.median);
        ratio(median(0), median(i), self.higher_is_better)
    }

    /// Whether cable and B1 differ beyond their spreads.
    pub fn verdict(&self) -> Verdict {
        spread::verdict(self.servers[0].0, self.servers[1].0, self.higher_is_better)
    }
}

/// The comparison's rows, from every repetition of cable's, B1's and
/// Rails' runs.
pub fn summary_rows(all: &AllRuns) -> Vec<SummaryRow> {
    let get = |server: &str, row: &Row| -> (Option<Spread>, usize) {
        let reps = all
            .get(&(server.to_owned(), row.mode.to_owned()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let values: Vec<f64> = reps.iter().filter_map(|r| (row.pick)(r)).collect();
        (Spread::of(&values), reps.len())
    };
    ROWS.iter()
        .map(|row| SummaryRow {
            name: row.name,
            digits: row.digits,
            higher_is_better: row.higher_is_better,
            target: row.target,
            servers: [get("cable", row), get("b1", row), get("rails", row)],
        })
        .collect()
}

/// The comparison table: cable vs B1 vs Rails, medians with their spreads,
/// ratios of the medians, and whether cable and B1 differ beyond the spread.
pub fn summary_table(all: &AllRuns) -> String {
    let mut s = String::new();
    s.push_str(
        "| benchmark | cable | B1 | Rails | cable vs B1 | beyond the spread? | cable vs Rails | target |\n",
    );
    s.push_str("|---|---:|---:|---:|---:|---|---:|---|\n");
    for row in summary_rows(all) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row.name,
            row.cell(0),
            row.cell(1),
            row.cell(2),
            row.ratio(1),
            row.verdict(),
            row.ratio(2),
            row.target
        );
    }
    let runs = |server: &str| {
        let n: Vec<usize> = ROWS
            .iter()
            .filter_map(|row| all.get(&(server.to_owned(), row.mode.to_owned())))
            .map(Vec::len)
            .collect();
        match (n.iter().min(), n.iter().max()) {
            (Some(a), Some(b)) if a == b => a.to_string(),
            (Some(a), Some(b)) => format!("{a} to {b}"),
            _ => "none".into(),
        }
    };
    let _ = writeln!(
        s,
        "\nEach figure is the median over the run's repetitions (`scripts/bench --repeat`, \
         interleaved: repetition 1 of every server, then repetition 2, ...), the lowest and \
         highest in brackets; `(—)` is a run made once, `n of N runs` says some repetitions \
         had no figure (a failed run). Repetitions per run: cable {}, B1 {}, Rails {}. \
         Ratios are of the medians and are cable's advantage: above 1.00x cable is better \
         (for latencies and memory, the other server's figure divided by cable's). \
         \"Beyond the spread?\": whether cable's and B1's ranges do not overlap (\"yes, \
         better\", \"yes, worse\") or do (\"no, within spread\": the difference is no larger \
         than the run-to-run noise); not judged with one run of either.",
        runs("cable"),
        runs("b1"),
        runs("rails"),
    );
    s
}

/// The comparison of cable and B1 as plain text for a terminal: the rows
/// with a figure for either, medians with their spreads, the ratio of the
/// medians and the verdict; columns padded to line up.
pub fn summary_text(all: &AllRuns) -> String {
    let mut lines = vec![[
        "benchmark".to_owned(),
        "cable".to_owned(),
        "B1".to_owned(),
        "cable vs B1".to_owned(),
        "beyond the spread?".to_owned(),
    ]];
    for row in summary_rows(all) {
        if row.servers[0].0.is_none() && row.servers[1].0.is_none() {
            continue;
        }
        lines.push([
            row.name.to_owned(),
            row.cell(0),
            row.cell(1),
            row.ratio(1),
            row.verdict().to_string(),
        ]);
    }
    if lines.len() == 1 {
        return "No cable or B1 runs in this result set.\n".into();
    }
    let width = |i: usize| {
        lines
            .iter()
            .map(|l| l[i].chars().count())
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..5).map(width).collect();
    let mut s = String::new();
    for l in &lines {
        let mut line = String::new();
        for (i, cell) in l.iter().enumerate() {
            let pad = widths[i] - cell.chars().count();
            // Figures right-aligned, words left-aligned.
            if (1..=3).contains(&i) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
            line.push_str("  ");
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

/// The ladder's steps, one table per server (of a repeated run, the
/// median repetition).
pub fn ladder_tables(all: &AllRuns) -> String {
    let mut s = String::new();
    for ((server, mode), reps) in all {
        if mode != "broadcast" || reps.is_empty() {
            continue;
        }
        let r = &reps[representative(reps)];
        let _ = writeln!(s, "\n**{server}** ({}{})\n", status(r), shown(reps));
        s.push_str("| clients | p95 RTT ms | min | median | max |\n|---:|---:|---:|---:|---:|\n");
        for st in r.metrics["steps"].as_array().into_iter().flatten() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                st["clients"],
                st["rtt"]["p95_ms"],
                st["rtt"]["min_ms"],
                st["rtt"]["p50_ms"],
                st["rtt"]["max_ms"]
            );
        }
    }
    s
}

/// The fan-out sweeps, one table per server label (of a repeated run, the
/// median repetition).
pub fn fanout_tables(all: &AllRuns) -> String {
    let mut s = String::new();
    for ((server, mode), reps) in all {
        if mode != "fanout" || reps.is_empty() {
            continue;
        }
        let r = &reps[representative(reps)];
        let _ = writeln!(
            s,
            "\n**{server}**, {} subscribers ({}{})\n",
            r.params["subscribers"],
            status(r),
            shown(reps)
        );
        s.push_str(
            "| broadcasts/s | deliveries/s | p50 ms | p99 ms | max ms | delivered | CPU µs/delivery | user / kernel | server CPU % | load generator µs/delivery |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for st in r.metrics["steps"].as_array().into_iter().flatten() {
            let _ = writeln!(
                s,
                "| {:.1} | {} | {} | {} | {} | {}/{} | {} | {} / {} | {} | {} |",
                st["rate"].as_f64().unwrap_or(0.0),
                st["deliveries_per_sec"],
                st["latency"]["p50_ms"],
                st["latency"]["p99_ms"],
                st["latency"]["max_ms"],
                st["delivered"],
                st["expected"],
                fmt_num(num(&st["server_cpu_us_per_delivery"]), 2),
                fmt_num(num(&st["server_user_us_per_delivery"]), 2),
                fmt_num(num(&st["server_kernel_us_per_delivery"]), 2),
                st["server_cpu_percent"],
                fmt_num(num(&st["loadgen_cpu_us_per_delivery"]), 2),
            );
        }
    }
    s
}

/// Pub/sub adapters compared: fan-out runs labelled `adapter-<name>`, with
/// the publisher on one node and the subscribers on another (or the same
/// node for the in-memory adapter).
pub fn adapter_table(runs: &Runs) -> String {
    fanout_comparison(
        runs,
        ("adapter-", "adapter"),
        "Publisher on one node, subscribers on another (both nodes on the same \
         machine; for `memory`, one node): the latency includes the trip through \
         the adapter's server.\n\n",
    )
}

/// Transports compared: fan-out runs labelled `transport-<name>`, the same
/// chat and the same sweep, subscribers over WebSockets or Server-Sent
/// Events.
pub fn transport_table(runs: &Runs) -> String {
    fanout_comparison(
        runs,
        ("transport-", "transport"),
        "One chat node on the in-memory adapter, the publisher on a WebSocket, the \
         subscribers on WebSockets or on Server-Sent Events (`fanout --sse`).\n\n",
    )
}

/// One row per fan-out run whose label starts with `prefix` (the rest
/// names it, in a column headed `column`), after `intro`.
fn fanout_comparison(runs: &Runs, (prefix, column): (&str, &str), intro: &str) -> String {
    let mut s = String::from(intro);
    let _ = writeln!(
        s,
        "| {column} | subscribers | latency at the first rate: p50 ms | p99 ms | best deliveries/s with p99 ≤ limit | p50 / p99 ms at that rate | server CPU µs per delivery at that rate |\n\
         |---|---:|---:|---:|---:|---|---:|"
    );
    let mut any = false;
    for ((server, mode), r) in runs {
        let Some(name) = server.strip_prefix(prefix) else {
            continue;
        };
        if mode != "fanout" {
            continue;
        }
        any = true;
        let first = &r.metrics["steps"][0];
        let best = &r.metrics["best"];
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} | {} / {} | {} |",
            r.params["subscribers"],
            fmt_num(num(&first["latency"]["p50_ms"]), 1),
            fmt_num(num(&first["latency"]["p99_ms"]), 1),
            fmt_num(num(&best["deliveries_per_sec"]), 0),
            fmt_num(num(&best["latency"]["p50_ms"]), 1),
            fmt_num(num(&best["latency"]["p99_ms"]), 1),
            fmt_num(num(&best["server_cpu_us_per_delivery"]), 2),
        );
    }
    if any {
        s
    } else {
        format!("No {column} runs in this result set.\n")
    }
}

/// The hostile-load run (`hostile` and `hostile-shutdown` results of any
/// server label): one row per case.
pub fn hostile_section(runs: &Runs) -> String {
    let mut s = String::new();
    let mut any = false;
    for ((server, mode), r) in runs {
        if mode != "hostile" {
            continue;
        }
        any = true;
        let p = &r.params;
        let _ = writeln!(
            s,
            "\n**{server}** ({}): each case {} s; the canary echoes every {} ms (its p99 over a case's few dozen echoes is close to the worst); an echo not back within {} ms is lost. Targets: the canary's worst round trip {}, nothing lost, RSS growth during a case ≤ {} MiB, a fresh client served after every case.\n",
            if r.ok { "every case passed".to_owned() } else {
                format!(
                    "{} of {} cases passed",
                    r.metrics["cases_passed"],
                    r.metrics["cases_run"]
                )
            },
            p["case_secs"],
            p["canary_interval_ms"],
            p["echo_grace_ms"],
            match p["rtt_limit_ms"].as_u64() {
                Some(0) | None => "not judged (smoke run)".to_owned(),
                Some(l) => format!("≤ {l} ms"),
            },
            p["rss_limit_mib"],
        );
        let b = &r.metrics["baseline"];
        let _ = writeln!(
            s,
            "Canary alone before the first case: p99 {} ms, worst {} ms. Server RSS then {} MiB; at its highest during the run {} MiB above that (memory a case leaves behind stays in the later cases' figures).\n",
            fmt_num(num(&b["canary"]["p99_ms"]), 1),
            fmt_num(num(&b["canary"]["worst_ms"]), 1),
            fmt_num(num(&b["rss_bytes"]).map(|x| x / 1048576.0), 1),
            fmt_num(num(&r.metrics["rss_peak_growth_bytes"]).map(|x| x / 1048576.0), 1),
        );
        s.push_str(
            "| case | canary worst RTT ms | p99 ms | lost / dup | RSS growth in the case MiB | RSS left after the case MiB | fresh client | verdict |\n\
             |---|---:|---:|---:|---:|---:|---|---|\n",
        );
        let cases = r.metrics["cases"].as_array().cloned().unwrap_or_default();
        for c in &cases {
            let rss = &c["rss"];
            let over = |k: &str| match (num(&rss[k]), num(&rss["before"])) {
                (Some(a), Some(b)) => Some((a - b) / 1048576.0),
                _ => None,
            };
            let (peak, after) = (over("peak"), over("after"));
            let failed: Vec<&str> = c["checks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|k| k["ok"] != true)
                .filter_map(|k| k["name"].as_str())
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} / {} | {} | {} | {} | {} |",
                c["name"].as_str().unwrap_or("?"),
                fmt_num(num(&c["canary"]["worst_ms"]), 1),
                fmt_num(num(&c["canary"]["p99_ms"]), 1),
                c["canary"]["lost"],
                c["canary"]["duplicated"],
                fmt_num(peak, 1),
                after
                    .map(|x| format!("{x:+.1}"))
                    .unwrap_or_else(|| "—".into()),
                if c["fresh"]["ok"] == true {
                    "ok"
                } else {
                    "FAILED"
                },
                if failed.is_empty() {
                    "passed".to_owned()
                } else {
                    format!("FAILED: {}", failed.join(", "))
                },
            );
        }
        s.push_str("\nWhat the attacking sockets got, and every failed check:\n\n");
        for c in &cases {
            let name = c["name"].as_str().unwrap_or("?");
            let _ = writeln!(
                s,
                "- `{name}`, {}: {}",
                c["description"].as_str().unwrap_or(""),
                crate::hostile::attack_summary(name, &c["attack"])
            );
            for k in c["checks"].as_array().into_iter().flatten() {
                if k["ok"] != true {
                    let _ = writeln!(
                        s,
                        "  - FAILED {}: {}",
                        k["name"].as_str().unwrap_or("?"),
                        k["detail"].as_str().unwrap_or("")
                    );
                }
            }
        }
        if let Some(sd) = runs.get(&(server.clone(), "hostile-shutdown".to_owned())) {
            let m = &sd.metrics;
            let _ = writeln!(
                s,
                "\n**SIGTERM with {} half-sent requests open** (drain timeout {} s, limit {} s): {}; a subscribed client got `{}` and its socket ended with `{}`.",
                sd.params["half_open"],
                sd.params["shutdown_timeout_secs"],
                m["limit_secs"],
                match num(&m["exit_secs"]) {
                    Some(x) => format!("gone after {x:.2} s ({})", if sd.ok { "passed" } else { "FAILED" }),
                    None => format!("still running {} s after the signal (FAILED)", sd.params["wait_secs"]),
                },
                m["live_client_disconnect"].as_str().unwrap_or("nothing"),
                m["live_client_ending"].as_str().unwrap_or("nothing"),
            );
        }
    }
    if any {
        s
    } else {
        "\nNo hostile run in this result set.\n".into()
    }
}

/// The jitter runs (mode `jitter`, any server label): one row per run, the
/// history-off run last; the broker's cost is each run's server CPU per
/// broadcast minus that of the history-off run.
pub fn jitter_section(runs: &Runs) -> String {
    let jitter: Vec<&RunResult> = runs.values().filter(|r| r.mode == "jitter").collect();
    if jitter.is_empty() {
        return "No jitter runs in this result set.\n".into();
    }
    let off = jitter
        .iter()
        .find(|r| r.metrics["history"] == false)
        .and_then(|r| num(&r.metrics["server_cpu_us_per_broadcast"]));
    let mut s = String::new();
    if let Some(r) = jitter.first() {
        let _ = writeln!(
            s,
            "AnyCable's jitter test: {} clients on one room, {} broadcasts/s for {} s through \
             `POST /admin/broadcast`; every second {}% of the connected clients lose their \
             socket and reconnect within {} ms. With history they resume by `?sid=` and \
             ask `history` from the last position they hold (deduping by offset, as \
             @anycable/web); without, plain `actioncable-v1-json` clients only subscribe \
             again. Recovery: reconnect to `confirm_history` (history) or to \
             `confirm_subscription` (off). Server CPU per broadcast is over the whole \
             publishing window (fan-out, drops, reconnects, replays); the broker's cost is \
             that minus the history-off run's. Admin POST: the publisher's round trip per \
             broadcast (a new TCP connection each, the append included).\n",
            r.params["clients"],
            r.params["rate"],
            r.params["secs"],
            r.params["drop_percent"],
            r.params["reconnect_delay_ms"],
        );
    }
    s.push_str(
        "| run | history | clients with 100% | delivered % | missing | duplicates (deduped by offset) | recovery p50 / p99 ms | server CPU per broadcast µs | broker's cost per broadcast µs | admin POST p50 / p99 ms | status |\n\
         |---|---|---:|---:|---:|---|---|---:|---:|---|---|\n",
    );
    let mut ordered = jitter.clone();
    ordered.sort_by_key(|r| r.metrics["history"] == false);
    for r in ordered {
        let m = &r.metrics;
        let history = m["history"] == true;
        let cpu = num(&m["server_cpu_us_per_broadcast"]);
        let cost = match (history, cpu, off) {
            (true, Some(a), Some(b)) => format!("{:+.0}", a - b),
            (false, Some(_), _) => "(baseline)".into(),
            _ => "—".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {}% | {} | {} | {} ({}) | {} / {} | {} | {cost} | {} / {} | {} |",
            r.server,
            if history { "on" } else { "off" },
            fmt_num(num(&m["clients_full_delivery_percent"]), 1),
            fmt_num(num(&m["delivered_percent"]), 2),
            m["missing"],
            m["duplicates"],
            m["deduped_by_offset"],
            fmt_num(num(&m["recovery"]["p50_ms"]), 1),
            fmt_num(num(&m["recovery"]["p99_ms"]), 1),
            fmt_num(cpu, 0),
            fmt_num(num(&m["broadcast_post"]["p50_ms"]), 1),
            fmt_num(num(&m["broadcast_post"]["p99_ms"]), 1),
            status(r),
        );
    }
    s
}

/// The replay runs (mode `replay`, one per broker): the server's CPU per
/// client in the plain and the replaying wave, and what a replay costs.
pub fn replay_section(runs: &Runs) -> String {
    let replay: Vec<&RunResult> = runs.values().filter(|r| r.mode == "replay").collect();
    if replay.is_empty() {
        return "No replay runs in this result set.\n".into();
    }
    let mut s = String::new();
    if let Some(r) = replay.first() {
        let _ = writeln!(
            s,
            "What a history replay costs (`cable-loadgen replay`): {} messages are published \
             to a room, then waves of {} clients on `actioncable-v1-ext-json` connect and \
             subscribe, {} at a time: a plain wave without a `history` request, then a \
             replaying wave that asks `history: {{since}}` and reads all {} messages before \
             `confirm_history`; {} rounds of both, each kind's CPU summed. The \
             waves differ only by the replay, so the replaying wave's server CPU minus the \
             plain wave's is the replays': the broker's read, the encoding, the writes. \
             The backend's: the same difference for the backend's processes (`redis-server`, \
             `postgres`, `nats-server`), which the server's figure leaves out. \
             Subscribe to confirmation: the client's subscribe sent to `confirm_subscription` \
             (plain) or `confirm_history` (replaying, all messages read).\n",
            r.params["history"],
            r.params["clients"],
            r.metrics["connect_concurrency"]
                .as_u64()
                .map_or("—".to_owned(), |c| c.to_string()),
            r.params["history"],
            r.params["rounds"],
        );
    }
    s.push_str(
        "| run | server CPU per client, plain µs | per client, replaying µs | per replay µs | per replayed message µs | backend's CPU per replay µs | per replayed message µs | subscribe to confirm p50 / p99 ms, plain | replaying | status |\n\
         |---|---:|---:|---:|---:|---:|---:|---|---|---|\n",
    );
    for r in replay {
        let m = &r.metrics;
        let lat = |w: &str| {
            format!(
                "{} / {}",
                fmt_num(num(&m[w]["subscribe_to_confirm"]["p50_ms"]), 1),
                fmt_num(num(&m[w]["subscribe_to_confirm"]["p99_ms"]), 1)
            )
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.server,
            fmt_num(num(&m["server_cpu_us_per_client_plain"]), 0),
            fmt_num(num(&m["server_cpu_us_per_client_replay"]), 0),
            fmt_num(num(&m["server_cpu_us_per_replay"]), 0),
            fmt_num(num(&m["server_cpu_us_per_replayed_message"]), 2),
            fmt_num(num(&m["backend_cpu_us_per_replay"]), 0),
            fmt_num(num(&m["backend_cpu_us_per_replayed_message"]), 2),
            lat("plain"),
            lat("replay"),
            status(r),
        );
    }
    s
}

fn status(r: &RunResult) -> String {
    if r.ok {
        "ok".into()
    } else {
        format!("FAILED: {}", r.errors.first().cloned().unwrap_or_default())
    }
}

/// Every run's parameters (and, of a repeated run, every repetition's
/// outcome) as compact JSON lines.
pub fn raw(all: &AllRuns) -> String {
    let mut s = String::new();
    for ((server, mode), reps) in all {
        let Some(first) = reps.first() else { continue };
        let outcome = |r: &RunResult| if r.ok { "ok" } else { "failed" };
        let outcomes = if reps.len() == 1 {
            outcome(first).to_owned()
        } else {
            format!(
                "{} repetitions: {}",
                reps.len(),
                reps.iter().map(outcome).collect::<Vec<_>>().join(", ")
            )
        };
        let _ = writeln!(
            s,
            "- `{server} {mode}` ({outcomes}): params `{}`",
            first.params
        );
        for (k, r) in reps.iter().enumerate() {
            for e in r.errors.iter().take(3) {
                if reps.len() == 1 {
                    let _ = writeln!(s, "  - error: {e}");
                } else {
                    let _ = writeln!(s, "  - repetition {}: error: {e}", k + 1);
                }
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ratios_favour_cable_above_one() {
        assert_eq!(ratio(Some(200.0), Some(100.0), true), "2.00x");
        assert_eq!(ratio(Some(50.0), Some(100.0), false), "2.00x");
        assert_eq!(ratio(None, Some(1.0), true), "—");
    }

    /// Results holding one run of cable in `mode`.
    fn one_run(mode: &str, ok: bool, params: Value, metrics: Value) -> Runs {
        let run = RunResult {
            mode: mode.into(),
            server: "cable".into(),
            ok,
            params,
            metrics,
            errors: vec![],
        };
        BTreeMap::from([(("cable".to_owned(), mode.to_owned()), run)])
    }

    #[test]
    fn hostile_section_has_a_row_per_case() {
        let runs = one_run(
            "hostile",
            false,
            json!({"case_secs": 3.0, "canary_interval_ms": 50, "echo_grace_ms": 5000, "rtt_limit_ms": 100, "rss_limit_mib": 64}),
            json!({
                    "baseline": {"canary": {"p99_ms": 1.0, "worst_ms": 1.5}, "rss_bytes": 10485760},
                    "cases_run": 1,
                    "cases_passed": 0,
                    "cases": [{
                        "name": "big_broadcast",
                        "description": "a big broadcast",
                        "canary": {"worst_ms": 12.34, "p99_ms": 10.0, "lost": 0, "duplicated": 0},
                        "rss": {"before": 10485760, "after": 12582912, "peak": 20971520, "peak_over_baseline": 10485760},
                        "fresh": {"ok": true},
                        "attack": {"members": 20, "got_small": 0, "still_connected": 0},
                        "checks": [
                            {"name": "canary_lost_nothing", "ok": true, "detail": ""},
                            {"name": "members_connected", "ok": false, "detail": "0 of 20"}
                        ],
                    }],
            }),
        );
        let t = hostile_section(&runs);
        assert!(t.contains("**cable** (0 of 1 cases passed)"), "{t}");
        assert!(
            t.contains("| big_broadcast | 12.3 | 10.0 | 0 / 0 | 10.0 | +2.0 | ok | FAILED: members_connected |"),
            "{t}"
        );
        assert!(t.contains("  - FAILED members_connected: 0 of 20"), "{t}");
    }

    #[test]
    fn jitter_section_charges_the_broker_against_the_history_off_run() {
        let run = |server: &str, history: bool, cpu: f64, full: f64| RunResult {
            mode: "jitter".into(),
            server: server.into(),
            ok: true,
            params: json!({"clients": 1000, "rate": 10.0, "secs": 30.0, "drop_percent": 10.0, "reconnect_delay_ms": 200}),
            metrics: json!({
                "history": history,
                "clients_full_delivery_percent": full,
                "delivered_percent": 99.5,
                "missing": 12,
                "duplicates": 0,
                "deduped_by_offset": 3,
                "recovery": {"p50_ms": 4.0, "p99_ms": 20.0},
                "server_cpu_us_per_broadcast": cpu,
                "broadcast_post": {"p50_ms": 1.0, "p99_ms": 2.0},
            }),
            errors: vec![],
        };
        let runs: Runs = [
            run("jitter-off", false, 900.0, 20.0),
            run("jitter-memory", true, 1000.0, 100.0),
        ]
        .into_iter()
        .map(|r| ((r.server.clone(), r.mode.clone()), r))
        .collect();
        let t = jitter_section(&runs);
        assert!(
            t.contains("1000 clients on one room, 10.0 broadcasts/s for 30.0 s"),
            "{t}"
        );
        assert!(
            t.contains("| jitter-memory | on | 100.0% | 99.50 | 12 | 0 (3) | 4.0 / 20.0 | 1000 | +100 | 1.0 / 2.0 | ok |"),
            "{t}"
        );
        assert!(t.contains("| jitter-off | off | 20.0% |"), "{t}");
        // The history-on rows come first.
        assert!(t.find("jitter-memory") < t.find("jitter-off"), "{t}");
    }

    #[test]
    fn replay_section_shows_the_cost_of_a_replay() {
        let wave = |p50: f64| json!({"subscribe_to_confirm": {"p50_ms": p50, "p99_ms": p50 * 2.0}});
        let r = RunResult {
            mode: "replay".into(),
            server: "replay-memory".into(),
            ok: true,
            params: json!({"clients": 1000, "history": 100, "rounds": 3}),
            metrics: json!({
                "connect_concurrency": 200,
                "plain": wave(1.0),
                "replay": wave(3.0),
                "server_cpu_us_per_client_plain": 150.0,
                "server_cpu_us_per_client_replay": 400.0,
                "server_cpu_us_per_replay": 250.0,
                "server_cpu_us_per_replayed_message": 2.5,
                "backend_cpu_us_per_replay": null,
                "backend_cpu_us_per_replayed_message": null,
            }),
            errors: vec![],
        };
        let runs: Runs = [r]
            .into_iter()
            .map(|r| ((r.server.clone(), r.mode.clone()), r))
            .collect();
        let t = replay_section(&runs);
        assert!(t.contains("100 messages are published"), "{t}");
        assert!(t.contains("waves of 1000 clients"), "{t}");
        assert!(t.contains("subscribe, 200 at a time"), "{t}");
        assert!(t.contains("3 rounds of both"), "{t}");
        assert!(
            t.contains(
                "| replay-memory | 150 | 400 | 250 | 2.50 | — | — | 1.0 / 2.0 | 3.0 / 6.0 | ok |"
            ),
            "{t}"
        );
        assert!(replay_section(&Runs::new()).contains("No replay runs"));
    }

    /// Every run of `runs` as a run made once.
    fn once(runs: Runs) -> AllRuns {
        runs.into_iter().map(|(k, r)| (k, vec![r])).collect()
    }

    /// Repetitions of `server`'s `mode` run, one per metrics value.
    fn reps(server: &str, mode: &str, metrics: &[Value]) -> ((String, String), Vec<RunResult>) {
        let runs = metrics
            .iter()
            .map(|m| RunResult {
                mode: mode.into(),
                server: server.into(),
                ok: true,
                params: json!({"subscribers": 1000}),
                metrics: m.clone(),
                errors: vec![],
            })
            .collect();
        ((server.to_owned(), mode.to_owned()), runs)
    }

    #[test]
    fn table_has_a_row_per_figure() {
        let runs = one_run(
            "idle",
            true,
            json!({}),
            json!({"bytes_per_connection": 3000.0}),
        );
        let t = summary_table(&once(runs));
        assert!(
            t.contains("| idle: server RSS per subscribed connection (bytes) | 3,000 (—) | — | — | — | — | — | ≤ 4096 |"),
            "{t}"
        );
    }

    #[test]
    fn table_shows_medians_spreads_and_verdicts() {
        let bytes = |v: &[f64]| -> Vec<Value> {
            v.iter()
                .map(|b| json!({"bytes_per_connection": b}))
                .collect()
        };
        let rate = |v: &[f64]| -> Vec<Value> {
            v.iter()
                .map(|d| json!({"best": {"deliveries_per_sec": d}, "best_complete": {"deliveries_per_sec": d}}))
                .collect()
        };
        let all: AllRuns = [
            reps("cable", "idle", &bytes(&[8200.0, 8000.0, 8100.0])),
            reps("b1", "idle", &bytes(&[13000.0, 14000.0, 13500.0])),
            reps("rails", "idle", &bytes(&[30000.0])),
            reps(
                "cable",
                "fanout",
                &rate(&[900_000.0, 1_000_000.0, 1_100_000.0]),
            ),
            reps(
                "b1",
                "fanout",
                &rate(&[1_050_000.0, 1_200_000.0, 1_300_000.0]),
            ),
            reps(
                "cable",
                "connect",
                &[
                    json!({"per_sec": 9000.0}),
                    json!({"per_sec": 9100.0}),
                    json!({"per_sec": 9200.0}),
                ],
            ),
            reps(
                "b1",
                "connect",
                &[
                    json!({"per_sec": 9500.0}),
                    json!({"per_sec": 9600.0}),
                    json!({"per_sec": 9700.0}),
                ],
            ),
        ]
        .into_iter()
        .collect();
        let t = summary_table(&all);
        // Lower memory is better: cable's whole range is below B1's.
        assert!(
            t.contains("| idle: server RSS per subscribed connection (bytes) | 8,100 (8,000–8,200) | 13,500 (13,000–14,000) | 30,000 (—) | 1.67x | yes, better | 3.70x | ≤ 4096 |"),
            "{t}"
        );
        // The medians differ, the ranges overlap.
        assert!(
            t.contains("| fanout: deliveries/s sustained with p99 ≤ limit | 1,000,000 (900,000–1,100,000) | 1,200,000 (1,050,000–1,300,000) | — | 0.83x | no, within spread | — |"),
            "{t}"
        );
        // Higher is better and cable's range is wholly below B1's.
        assert!(
            t.contains("| connect: connections/s | 9,100 (9,000–9,200) | 9,600 (9,500–9,700) | — | 0.95x | yes, worse |"),
            "{t}"
        );
        assert!(
            t.contains("Repetitions per run: cable 3, B1 3, Rails 1."),
            "{t}"
        );
    }

    #[test]
    fn summary_text_lines_up_cable_and_b1() {
        let bytes = |v: &[f64]| -> Vec<Value> {
            v.iter()
                .map(|b| json!({"bytes_per_connection": b}))
                .collect()
        };
        let all: AllRuns = [
            reps("cable", "idle", &bytes(&[8200.0, 8000.0, 8100.0])),
            reps("b1", "idle", &bytes(&[13000.0, 14000.0, 13500.0])),
            reps(
                "cable",
                "connect",
                &[json!({"per_sec": 900.0}), json!({"per_sec": 1100.0})],
            ),
        ]
        .into_iter()
        .collect();
        let t = summary_text(&all);
        let lines: Vec<&str> = t.lines().collect();
        // The header, connect's connections/s, idle; rows without a figure left out.
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("benchmark "), "{t}");
        assert!(lines[1].starts_with("connect: connections/s "), "{t}");
        assert!(lines[1].contains("1,000 (900–1,100)"), "{t}");
        assert!(lines[1].ends_with("—  —"), "{t}");
        assert!(
            lines[2]
                .contains("8,100 (8,000–8,200)  13,500 (13,000–14,000)        1.67x  yes, better"),
            "{t}"
        );
        // Columns line up: the verdicts start at the same character.
        let at = |l: &str, pat: &str| l.chars().count() - l[l.find(pat).unwrap()..].chars().count();
        assert_eq!(at(lines[0], "beyond"), at(lines[2], "yes, better"), "{t}");
    }

    #[test]
    fn a_failed_repetition_is_counted_out_of_the_median() {
        let mut all: AllRuns = [reps(
            "cable",
            "broadcast",
            &[
                json!({"max_clients_within_limit": 19000, "steps": []}),
                json!({"max_clients_within_limit": 18000, "steps": []}),
                json!({"max_clients_within_limit": 5000, "steps": []}),
            ],
        )]
        .into_iter()
        .collect();
        all.values_mut().next().unwrap()[2].ok = false;
        let t = summary_table(&all);
        assert!(t.contains("| 18,500 (18,000–19,000; 2 of 3 runs) |"), "{t}");
    }

    #[test]
    fn detail_tables_show_the_median_repetition() {
        let sweep = |best: f64| json!({"best": {"deliveries_per_sec": best}, "steps": [{"rate": best / 1000.0}]});
        let all: AllRuns = [reps(
            "cable",
            "fanout",
            &[sweep(100_000.0), sweep(300_000.0), sweep(200_000.0)],
        )]
        .into_iter()
        .collect();
        assert_eq!(representative(&all[&("cable".into(), "fanout".into())]), 2);
        let t = fanout_tables(&all);
        assert!(
            t.contains("(ok; repetition 3 of 3, the median by deliveries/s within the p99 limit)"),
            "{t}"
        );
        assert!(t.contains("| 200.0 |"), "{t}");
        assert!(!t.contains("| 100.0 |") && !t.contains("| 300.0 |"), "{t}");
        // Ladders: the most clients, ties broken by the p95 at that step.
        let ladder = |max: u64, p95: f64| json!({"max_clients_within_limit": max, "steps": [{"clients": max, "within_limit": true, "rtt": {"p95_ms": p95}}]});
        let (_, runs) = reps(
            "cable",
            "broadcast",
            &[
                ladder(19000, 300.0),
                ladder(19000, 100.0),
                ladder(18000, 50.0),
                ladder(19000, 200.0),
            ],
        );
        // Ranked 18000, 19000@300, 19000@200, 19000@100: the lower middle.
        assert_eq!(representative(&runs), 0);
        let (_, runs) = reps(
            "cable",
            "broadcast",
            &[
                ladder(19000, 300.0),
                ladder(19000, 100.0),
                ladder(19000, 200.0),
            ],
        );
        assert_eq!(representative(&runs), 2);
        // Runs without a ranking figure, and single runs: the first.
        let (_, runs) = reps("cable", "hostile", &[json!({}), json!({})]);
        assert_eq!(representative(&runs), 0);
    }

    #[test]
    fn load_groups_repetitions_in_order() {
        let dir = std::env::temp_dir().join(format!("cable-report-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, server: &str, bytes: f64| {
            let r = RunResult {
                mode: "idle".into(),
                server: server.into(),
                ok: true,
                params: json!({}),
                metrics: json!({"bytes_per_connection": bytes}),
                errors: vec![],
            };
            std::fs::write(dir.join(name), serde_json::to_string(&r).unwrap()).unwrap();
        };
        // Written last to first: the order is the repetition number's, not
        // the directory's or the names' (r10 after r9).
        for k in (1..=12).rev() {
            write(&format!("cable-idle.r{k}.json"), "cable", k as f64);
        }
        write("b1-idle.json", "b1", 5.0);
        std::fs::write(dir.join("meta.json"), "{}").unwrap();
        let all = load(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let figures = |server: &str| -> Vec<f64> {
            all[&(server.to_owned(), "idle".to_owned())]
                .iter()
                .filter_map(idle_bytes)
                .collect()
        };
        let want: Vec<f64> = (1..=12).map(|k| k as f64).collect();
        assert_eq!(figures("cable"), want);
        assert_eq!(figures("b1"), [5.0]);
        assert_eq!(all.len(), 2);
    }
}
