//! Turns a directory of run results into `BENCHMARKS.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::modes::RunResult;

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

/// The first repetition of every run.
pub fn first_runs(all: &AllRuns) -> Runs {
    all.iter()
        .filter_map(|(k, reps)| reps.first().map(|r| (k.clone(), r.clone())))
        .collect()
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
        target: "≥ 0.9x B1, ≥ 50x Rails",
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

/// The comparison table: cable vs B1 vs Rails with ratios.
pub fn summary_table(runs: &Runs) -> String {
    let get = |server: &str, row: &Row| -> Option<f64> {
        runs.get(&(server.to_owned(), row.mode.to_owned()))
            .and_then(|r| (row.pick)(r))
    };
    let mut s = String::new();
    s.push_str("| benchmark | cable | B1 | Rails | cable vs B1 | cable vs Rails | target |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---|\n");
    for row in ROWS {
        let (c, b, r) = (get("cable", row), get("b1", row), get("rails", row));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.name,
            fmt_num(c, row.digits),
            fmt_num(b, row.digits),
            fmt_num(r, row.digits),
            ratio(c, b, row.higher_is_better),
            ratio(c, r, row.higher_is_better),
            row.target
        );
    }
    s.push_str(
        "\nRatios are cable's advantage: above 1.00x cable is better (for latencies and \
         memory, the other server's figure divided by cable's).\n",
    );
    s
}

/// The ladder's steps, one table per server.
pub fn ladder_tables(runs: &Runs) -> String {
    let mut s = String::new();
    for ((server, mode), r) in runs {
        if mode != "broadcast" {
            continue;
        }
        let _ = writeln!(s, "\n**{server}** ({})\n", status(r));
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

/// The fan-out sweeps, one table per server label.
pub fn fanout_tables(runs: &Runs) -> String {
    let mut s = String::new();
    for ((server, mode), r) in runs {
        if mode != "fanout" {
            continue;
        }
        let _ = writeln!(
            s,
            "\n**{server}**, {} subscribers ({})\n",
            r.params["subscribers"],
            status(r)
        );
        s.push_str(
            "| broadcasts/s | deliveries/s | p50 ms | p99 ms | max ms | delivered | CPU µs/delivery | server CPU % |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for st in r.metrics["steps"].as_array().into_iter().flatten() {
            let _ = writeln!(
                s,
                "| {:.1} | {} | {} | {} | {} | {}/{} | {} | {} |",
                st["rate"].as_f64().unwrap_or(0.0),
                st["deliveries_per_sec"],
                st["latency"]["p50_ms"],
                st["latency"]["p99_ms"],
                st["latency"]["max_ms"],
                st["delivered"],
                st["expected"],
                fmt_num(num(&st["server_cpu_us_per_delivery"]), 2),
                st["server_cpu_percent"],
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

fn status(r: &RunResult) -> String {
    if r.ok {
        "ok".into()
    } else {
        format!("FAILED: {}", r.errors.first().cloned().unwrap_or_default())
    }
}

/// Every run's parameters and figures as compact JSON lines.
pub fn raw(runs: &Runs) -> String {
    let mut s = String::new();
    for ((server, mode), r) in runs {
        let _ = writeln!(
            s,
            "- `{server} {mode}` ({}): params `{}`",
            if r.ok { "ok" } else { "failed" },
            r.params
        );
        for e in r.errors.iter().take(3) {
            let _ = writeln!(s, "  - error: {e}");
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
    fn table_has_a_row_per_figure() {
        let runs = one_run(
            "idle",
            true,
            json!({}),
            json!({"bytes_per_connection": 3000.0}),
        );
        let t = summary_table(&runs);
        assert!(t.contains("| idle: server RSS per subscribed connection (bytes) | 3000 | — |"));
    }
}
