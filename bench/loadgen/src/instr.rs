//! Instruction counts (scripts/callgrind): a server run under
//! `valgrind --tool=callgrind` for `cable-loadgen count` workloads of two
//! sizes, and the difference between them per connection or per delivery,
//! so that everything the sizes share (startup, shutdown, the subscribers'
//! connects) cancels.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use crate::modes::RunResult;
use crate::spread::{grouped, Spread};

/// The instructions (`Ir`, the first event) a callgrind output file counts:
/// its `totals:` line, or `summary:` when there is none.
pub fn totals(text: &str) -> Option<u64> {
    let line = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    line("totals:").or_else(|| line("summary:"))
}

/// One workload's count: its size and the instructions of each trial.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sized {
    pub clients: u64,
    pub broadcasts: u64,
    /// By trial.
    pub instructions: Vec<u64>,
}

/// The cost of one unit (a connect, a delivery) from a small and a large
/// workload: per trial, (large − small) / (units of large − units of small);
/// the median over trials and the spread.
pub fn per_unit(small: &Sized, large: &Sized, units: impl Fn(&Sized) -> u64) -> Option<Spread> {
    let du = units(large).checked_sub(units(small)).filter(|&d| d > 0)? as f64;
    let estimates: Vec<f64> = small
        .instructions
        .iter()
        .zip(&large.instructions)
        .map(|(&a, &b)| (b as f64 - a as f64) / du)
        .collect();
    Spread::of(&estimates)
}

/// A trial's number, K of `….tK.json`; 0 for any other name.
fn trial(path: &Path) -> u32 {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.rsplit_once(".t"))
        .and_then(|(_, k)| k.parse().ok())
        .unwrap_or(0)
}

/// Reads every `count` result `NAME.json` in `dir` with its callgrind
/// output `NAME.callgrind`, and works out each server's cost per connect
/// (results without broadcasts: the smallest and the largest number of
/// clients) and per delivery (results with broadcasts, the same number of
/// clients: the fewest and the most broadcasts; a delivery is one
/// broadcast frame to one client). `meta` goes into the result as it is.
pub fn summarize(dir: &Path, meta: Value) -> Result<Value> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Ok(r) = serde_json::from_str::<RunResult>(&std::fs::read_to_string(&path)?) else {
            continue;
        };
        if r.mode != "count" {
            continue;
        }
        if !r.ok {
            bail!("{}: the workload failed: {:?}", path.display(), r.errors);
        }
        let out = path.with_extension("callgrind");
        let text = std::fs::read_to_string(&out)
            .with_context(|| format!("{}: its callgrind output", path.display()))?;
        let ir = totals(&text).with_context(|| format!("{}: no totals line", out.display()))?;
        found.push((trial(&path), r, ir));
    }
    found.sort_by_key(|(t, _, _)| *t);
    // Per server, per (clients, broadcasts): the trials' counts.
    let mut by: BTreeMap<String, BTreeMap<(u64, u64), Sized>> = BTreeMap::new();
    // Heartbeat pings the clients got during the workloads, by server.
    let mut pings: BTreeMap<String, u64> = BTreeMap::new();
    for (_, r, ir) in found {
        *pings.entry(r.server.clone()).or_default() +=
            r.metrics["pings_received"].as_u64().unwrap_or(0);
        let clients = r.metrics["clients"].as_u64().unwrap_or(0);
        let broadcasts = r.metrics["broadcasts"].as_u64().unwrap_or(0);
        let sized = by
            .entry(r.server.clone())
            .or_default()
            .entry((clients, broadcasts))
            .or_insert_with(|| Sized {
                clients,
                broadcasts,
                instructions: vec![],
            });
        sized.instructions.push(ir);
    }
    let mut servers = serde_json::Map::new();
    for (server, sizes) in by {
        let connects: Vec<&Sized> = sizes.values().filter(|s| s.broadcasts == 0).collect();
        let deliveries: Vec<&Sized> = sizes.values().filter(|s| s.broadcasts > 0).collect();
        let sized = |s: &Sized| json!({"clients": s.clients, "broadcasts": s.broadcasts, "instructions": s.instructions});
        let figure = |p: Option<Spread>| match p {
            Some(p) => {
                json!({"median": p.median.round(), "min": p.min.round(), "max": p.max.round(), "trials": p.n})
            }
            None => Value::Null,
        };
        let mut entry = serde_json::Map::new();
        if let (Some(small), Some(large)) = (connects.first(), connects.last()) {
            entry.insert(
                "connect".into(),
                json!({
                    "small": sized(small),
                    "large": sized(large),
                    "per_connect": figure(per_unit(small, large, |s| s.clients)),
                }),
            );
        }
        // The fewest and the most broadcasts to one number of subscribers.
        if let Some(first) = deliveries.first() {
            let same: Vec<&&Sized> = deliveries
                .iter()
                .filter(|s| s.clients == first.clients)
                .collect();
            let (small, large) = (same[0], same[same.len() - 1]);
            entry.insert(
                "delivery".into(),
                json!({
                    "subscribers": first.clients,
                    "small": sized(small),
                    "large": sized(large),
                    "per_delivery": figure(per_unit(small, large, |s| s.broadcasts * s.clients)),
                }),
            );
        }
        entry.insert(
            "pings_received".into(),
            pings.get(&server).copied().unwrap_or(0).into(),
        );
        servers.insert(server, Value::Object(entry));
    }
    Ok(json!({"meta": meta, "servers": servers}))
}

/// `median`, with `(±x%)` half the trials' range over the median when
/// there were several.
fn figure(v: &Value) -> String {
    let Some(median) = v["median"].as_f64() else {
        return "—".into();
    };
    let (min, max) = (
        v["min"].as_f64().unwrap_or(median),
        v["max"].as_f64().unwrap_or(median),
    );
    if v["trials"].as_u64().unwrap_or(1) > 1 && median > 0.0 {
        format!(
            "{} (±{:.2}%)",
            grouped(median, 0),
            (max - min) / 2.0 / median * 100.0
        )
    } else {
        grouped(median, 0)
    }
}

/// The instruction counts as markdown: how they were made, one row per
/// server, cable against B1.
pub fn markdown(summary: &Value) -> String {
    let mut s = String::new();
    let meta = &summary["meta"];
    let servers = summary["servers"].as_object().cloned().unwrap_or_default();
    let any = |server: &str, key: &str| -> &Value { &summary["servers"][server][key] };
    // The sizes, from the first server that ran each workload.
    let sizes = |key: &str| {
        servers
            .values()
            .map(|v| v[key].clone())
            .find(|v| !v.is_null())
            .unwrap_or_default()
    };
    let (conn, del) = (sizes("connect"), sizes("delivery"));
    let _ = writeln!(
        s,
        "Instructions the server executes, counted by `valgrind --tool=callgrind` ({} \
         build; every thread, from start to exit) while `cable-loadgen count` runs a fixed \
         workload: nothing is timed, so a change to a hot path shows here without the \
         timing noise of the runs above (valgrind runs the server's threads one at a time, \
         so lock contention and parallelism are not measured). Each figure is a difference \
         between two workloads of different sizes, so startup and shutdown cancel.\n\n\
         - **per connect**: (I({} clients) − I({} clients)) / {}; the clients open one at a \
         time, each through TCP, the WebSocket handshake, the welcome, the BenchmarkChannel \
         subscription and its confirmation, and close before the next one opens (the close \
         is in the figure).\n\
         - **per delivery**: {} subscribers, (I({} broadcasts) − I({} broadcasts)) / ({} × {}); \
         one client broadcasts one at a time, each after every subscriber got the last one \
         (so every broadcast is written on its own, the costliest way); a delivery is one \
         broadcast frame written to one subscriber, with a {}th share of receiving the \
         broadcast command and answering broadcastResult.\n",
        meta["profile"].as_str().unwrap_or("release"),
        conn["large"]["clients"],
        conn["small"]["clients"],
        conn["large"]["clients"]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(conn["small"]["clients"].as_u64().unwrap_or(0)),
        del["subscribers"],
        del["large"]["broadcasts"],
        del["small"]["broadcasts"],
        del["large"]["broadcasts"]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(del["small"]["broadcasts"].as_u64().unwrap_or(0)),
        del["subscribers"],
        del["subscribers"],
    );
    s.push_str("| server | instructions per connect | instructions per delivery | trials |\n|---|---:|---:|---:|\n");
    // cable first, then B1, then any other.
    let mut names: Vec<&String> = servers.keys().collect();
    names.sort_by_key(|n| (n.as_str() != "cable", n.as_str() != "b1", n.as_str()));
    for name in names {
        let v = &servers[name];
        let label = if name == "b1" { "B1" } else { name.as_str() };
        let trials = v["connect"]["per_connect"]["trials"]
            .as_u64()
            .or(v["delivery"]["per_delivery"]["trials"].as_u64())
            .unwrap_or(0);
        let _ = writeln!(
            s,
            "| {label} | {} | {} | {trials} |",
            figure(&v["connect"]["per_connect"]),
            figure(&v["delivery"]["per_delivery"]),
        );
    }
    let ratio = |key: &str, per: &str| {
        let a = any("cable", key)[per]["median"].as_f64();
        let b = any("b1", key)[per]["median"].as_f64();
        match (a, b) {
            (Some(a), Some(b)) if a > 0.0 && b > 0.0 => format!("{:.2}x", a / b),
            _ => "—".into(),
        }
    };
    if servers.contains_key("cable") && servers.contains_key("b1") {
        let _ = writeln!(
            s,
            "| cable / B1 | {} | {} | |",
            ratio("connect", "per_connect"),
            ratio("delivery", "per_delivery")
        );
    }
    s.push_str(
        "\nWith several trials, ± is half the trials' range over the median: the run-to-run \
         variation of the count itself. cable / B1 is how many times B1's instructions cable \
         executes (below 1.00x cable executes fewer).",
    );
    for name in servers.keys() {
        let n = summary["servers"][name]["pings_received"]
            .as_u64()
            .unwrap_or(0);
        if n > 0 {
            let _ = write!(
                s,
                " {name}'s clients got {n} heartbeat pings during the workloads: their \
                 writes are in its counts (unevenly between the sizes)."
            );
        }
    }
    if let Some(m) = meta.as_object().filter(|m| !m.is_empty()) {
        let at = |k: &str| m.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_owned();
        let _ = write!(
            s,
            " Counted at commit `{}` on {} with {}, {} tokio worker thread(s) \
             (`TOKIO_WORKER_THREADS`).",
            at("commit"),
            at("date"),
            at("valgrind"),
            at("workers"),
        );
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_come_from_the_totals_line() {
        let out = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 123\n\nfn=main\n1 5\ntotals: 456789\n";
        assert_eq!(totals(out), Some(456789));
        assert_eq!(totals("events: Ir\nsummary: 1234 5\n"), Some(1234));
        assert_eq!(totals("events: Ir\n"), None);
    }

    #[test]
    fn per_unit_differences_the_two_sizes() {
        let small = Sized {
            clients: 200,
            broadcasts: 0,
            instructions: vec![1_000_000, 1_000_100],
        };
        let large = Sized {
            clients: 400,
            broadcasts: 0,
            instructions: vec![3_000_000, 3_000_500],
        };
        let p = per_unit(&small, &large, |s| s.clients).unwrap();
        // (3,000,000 − 1,000,000) / 200 and (3,000,500 − 1,000,100) / 200.
        assert_eq!((p.min, p.max, p.n), (10_000.0, 10_002.0, 2));
        assert_eq!(p.median, 10_001.0);
        // Deliveries: broadcasts × subscribers.
        let d = |b: u64, i: u64| Sized {
            clients: 100,
            broadcasts: b,
            instructions: vec![i],
        };
        let p = per_unit(&d(200, 50_000_000), &d(400, 90_000_000), |s| {
            s.broadcasts * s.clients
        })
        .unwrap();
        assert_eq!(p.median, 2_000.0);
        // No difference in size: no figure.
        assert_eq!(per_unit(&d(200, 1), &d(200, 2), |s| s.broadcasts), None);
    }

    #[test]
    fn summarize_pairs_results_with_their_counts() {
        let dir = std::env::temp_dir().join(format!("cable-instr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let put = |name: &str, server: &str, clients: u64, broadcasts: u64, ir: u64| {
            let r = RunResult {
                mode: "count".into(),
                server: server.into(),
                ok: true,
                params: json!({}),
                metrics: json!({"clients": clients, "broadcasts": broadcasts}),
                errors: vec![],
            };
            std::fs::write(
                dir.join(format!("{name}.json")),
                serde_json::to_string(&r).unwrap(),
            )
            .unwrap();
            std::fs::write(
                dir.join(format!("{name}.callgrind")),
                format!("events: Ir\nsummary: {ir}\ntotals: {ir}\n"),
            )
            .unwrap();
        };
        for t in 1..=2u64 {
            put(
                &format!("cable-connect-200.t{t}"),
                "cable",
                200,
                0,
                10_000_000 + t,
            );
            put(
                &format!("cable-connect-400.t{t}"),
                "cable",
                400,
                0,
                30_000_000 + 3 * t,
            );
            put(
                &format!("cable-deliver-200.t{t}"),
                "cable",
                100,
                200,
                50_000_000,
            );
            put(
                &format!("cable-deliver-400.t{t}"),
                "cable",
                100,
                400,
                90_000_000 + 200 * t,
            );
        }
        put("b1-connect-200.t1", "b1", 200, 0, 5_000_000);
        std::fs::write(
            dir.join("b1-connect-200.t1.json"),
            serde_json::to_string(&RunResult {
                mode: "count".into(),
                server: "b1".into(),
                ok: true,
                params: json!({}),
                metrics: json!({"clients": 200, "broadcasts": 0, "pings_received": 7}),
                errors: vec![],
            })
            .unwrap(),
        )
        .unwrap();
        put("b1-connect-400.t1", "b1", 400, 0, 15_000_000);
        let s = summarize(&dir, json!({"commit": "abc1234"})).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let c = &s["servers"]["cable"];
        assert_eq!(
            c["connect"]["small"]["instructions"],
            json!([10_000_001u64, 10_000_002u64])
        );
        // Trial 1: 20,000,002 / 200; trial 2: 20,000,004 / 200.
        assert_eq!(c["connect"]["per_connect"]["median"], json!(100_000.0));
        assert_eq!(c["connect"]["per_connect"]["trials"], json!(2));
        // 40,000,200 / 20,000 and 40,000,400 / 20,000.
        assert_eq!(c["delivery"]["per_delivery"]["min"], json!(2000.0));
        assert_eq!(c["delivery"]["subscribers"], json!(100));
        assert_eq!(
            s["servers"]["b1"]["connect"]["per_connect"]["median"],
            json!(50_000.0)
        );
        assert!(s["servers"]["b1"]["delivery"].is_null());
        let md = markdown(&s);
        assert!(
            md.contains("| cable | 100,000 (±0.00%) | 2,000 (±0.00%) | 2 |"),
            "{md}"
        );
        assert!(md.contains("| B1 | 50,000 | — | 1 |"), "{md}");
        assert!(md.contains("| cable / B1 | 2.00x | — | |"), "{md}");
        assert!(md.find("| cable |") < md.find("| B1 |"), "{md}");
        assert!(
            md.contains("(I(400 clients) − I(200 clients)) / 200"),
            "{md}"
        );
        assert!(md.contains("Counted at commit `abc1234`"), "{md}");
        assert!(md.contains("b1's clients got 7 heartbeat pings"), "{md}");
        assert!(!md.contains("cable's clients got"), "{md}");
    }
}
