//! `twonode`: BenchmarkChannel subscribers on several nodes that share one
//! pub/sub backend, the publisher on one of them; delivery latency on the
//! publisher's node (same-node) beside the others' (cross-node: the
//! broadcast went through the backend to another process).
//!
//! Each node of `--subscribe-urls` gets `--subscribers-per-node`
//! subscribers; the publisher (`--publish-url`, default the first node)
//! sends `--rate` broadcasts a second for `--secs` through
//! BenchmarkChannel's `broadcast` action, which every subscriber gets on
//! `all`. Same-node deliveries go through the backend too (cable publishes
//! every broadcast to the adapter and delivers what comes back from it), so
//! what cross-node adds is the other process. With one URL it is the
//! single-node figure: the same clients and the same publisher on one
//! process.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::Serialize;
use serde_json::{json, Value};

use crate::client::{self, histogram, Shared};
use crate::modes::{bar, close_all, open_many, publish_paced, summary, Common, RunResult};
use crate::procfs;

#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct TwoNodeOpts {
    /// The nodes' WebSocket URLs, comma-separated (`{i}`: the client's
    /// number); each gets --subscribers-per-node subscribers.
    #[arg(long, value_delimiter = ',', required = true)]
    pub subscribe_urls: Vec<String>,
    /// The publisher's node (default: the first of --subscribe-urls).
    #[arg(long)]
    pub publish_url: Option<String>,
    #[arg(long, default_value_t = 9000)]
    pub subscribers_per_node: usize,
    /// Broadcasts per second, fixed.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// Seconds of broadcasting.
    #[arg(long, default_value_t = 30.0)]
    pub secs: f64,
    #[arg(long, default_value_t = 200)]
    pub payload_padding: usize,
    /// Longest wait after the last broadcast for every delivery.
    #[arg(long, default_value_t = 10.0)]
    pub drain_secs: f64,
}

struct Node {
    url: String,
    same: bool,
    shared: std::sync::Arc<Shared>,
    subs: Vec<client::Client>,
}

/// The run; see the module docs.
pub async fn twonode(common: &Common, o: &TwoNodeOpts) -> Result<RunResult> {
    if o.subscribe_urls.is_empty() || o.rate <= 0.0 || o.secs <= 0.0 {
        bail!("--subscribe-urls must name a node; --rate and --secs must be above 0");
    }
    let publish_url = o
        .publish_url
        .clone()
        .unwrap_or_else(|| o.subscribe_urls[0].clone());
    let n = o.subscribers_per_node;
    let connecting = Instant::now();
    let mut nodes = Vec::new();
    for (k, url) in o.subscribe_urls.iter().enumerate() {
        let (shared, _rtt) = Shared::new();
        let mut on_node = common.clone();
        on_node.target.url = url.clone();
        let (subs, _, failures) = open_many(
            &on_node,
            k * n..(k + 1) * n,
            &shared,
            &format!("node {} subscribers", k + 1),
            |_| None,
        )
        .await;
        if !failures.is_empty() {
            bail!(
                "{} subscribers of {url} failed: {}",
                failures.len(),
                failures[0]
            );
        }
        nodes.push(Node {
            url: url.clone(),
            same: *url == publish_url,
            shared,
            subs,
        });
    }
    let connect_secs = connecting.elapsed().as_secs_f64();
    let (pub_shared, _rtt) = Shared::new();
    let mut pub_target = common.target.clone();
    pub_target.url = publish_url.clone();
    let id = nodes.len() * n;
    let (ws, _) = client::open(&pub_target, id, None).await?;
    let publisher = client::spawn(id, ws, pub_shared);
    // Let the subscriptions settle (adapter acks on every node).
    tokio::time::sleep(Duration::from_secs(1)).await;

    let padding = client::padding(o.payload_padding);
    let cpu0: Vec<Option<u64>> = common
        .server_pids
        .iter()
        .map(|&p| procfs::cpu_us(p).ok())
        .collect();
    for node in &nodes {
        node.shared.start_window();
    }
    let started = Instant::now();
    let total = (o.rate * o.secs).round() as u64;
    let pb = bar(common, total, &format!("{:.1} broadcasts/s", o.rate));
    let sent = publish_paced(&publisher, &padding, o.rate, total, started, &pb, |_| {}).await;
    pb.finish_and_clear();
    let delivered = |node: &Node| node.shared.delivered();
    let deadline = Instant::now() + Duration::from_secs_f64(o.drain_secs);
    while nodes
        .iter()
        .any(|node| delivered(node) < sent * node.subs.len() as u64)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu: Vec<Option<u64>> = common
        .server_pids
        .iter()
        .zip(&cpu0)
        .map(|(&p, c0)| Some(procfs::cpu_us(p).ok()? - (*c0)?))
        .collect();

    let mut errors = Vec::new();
    let mut rows = Vec::new();
    let (mut same, mut cross, mut all) = (histogram(), histogram(), histogram());
    let (mut same_n, mut cross_n) = ((0u64, 0u64), (0u64, 0u64));
    for (k, node) in nodes.iter().enumerate() {
        let lat = node.shared.merged();
        let (got, want) = (delivered(node), sent * node.subs.len() as u64);
        if got < want {
            errors.push(format!(
                "{}: {} of {want} deliveries missing",
                node.url,
                want - got
            ));
        }
        let (h, count) = if node.same {
            (&mut same, &mut same_n)
        } else {
            (&mut cross, &mut cross_n)
        };
        h.add(&lat).expect("same bounds");
        all.add(&lat).expect("same bounds");
        count.0 += got;
        count.1 += want;
        let c = cpu.get(k).copied().flatten();
        println!(
            "node {} ({}): {} subscribers, delivered {got}/{want}, p50 {:.2} ms, p99 {:.2} ms, server CPU {}",
            k + 1,
            if node.same { "same node" } else { "cross-node" },
            node.subs.len(),
            lat.value_at_quantile(0.5) as f64 / 1e3,
            lat.value_at_quantile(0.99) as f64 / 1e3,
            c.map_or("-".into(), |c| format!("{:.0}%", c as f64 / elapsed / 1e4)),
        );
        rows.push(json!({
            "url": node.url,
            "same_node": node.same,
            "subscribers": node.subs.len(),
            "delivered": got,
            "expected": want,
            "latency": summary(&lat),
            "server_cpu_percent": c.map(|c| (c as f64 / elapsed / 1e4).round()),
        }));
    }
    let group = |h: &hdrhistogram::Histogram<u64>, (got, want): (u64, u64)| -> Value {
        if want == 0 {
            Value::Null
        } else {
            json!({"delivered": got, "expected": want, "latency": summary(h)})
        }
    };
    let delivered_all: u64 = nodes.iter().map(delivered).sum();
    let cpu_total: Option<u64> = cpu.iter().copied().sum();
    let cpu_per = match cpu_total {
        Some(c) if delivered_all > 0 && !cpu.is_empty() => Some(c as f64 / delivered_all as f64),
        _ => None,
    };
    for node in &nodes {
        errors.extend(
            node.shared
                .errors
                .lock()
                .expect("errors lock")
                .iter()
                .cloned(),
        );
    }
    publisher.close();
    for node in &nodes {
        close_all(&node.subs, &node.shared).await;
    }
    RunResult::new(
        "twonode",
        common,
        o,
        json!({
            "nodes": rows,
            "publish_url": publish_url,
            "subscribers": nodes.iter().map(|node| node.subs.len()).sum::<usize>(),
            "sent": sent,
            "same_node": group(&same, same_n),
            "cross_node": group(&cross, cross_n),
            "all": group(&all, (delivered_all, same_n.1 + cross_n.1)),
            "server_cpu_us_per_delivery": cpu_per,
            "connect_secs": connect_secs,
        }),
        errors,
    )
}

/// `twonode-B` (two nodes) and `onenode-B` (one) runs side by side, one row
/// per backend B.
pub fn report_section(runs: &crate::report::Runs) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;
    let mut by_backend: BTreeMap<&str, (Option<&RunResult>, Option<&RunResult>)> = BTreeMap::new();
    for ((server, mode), r) in runs {
        if mode != "twonode" {
            continue;
        }
        if let Some(b) = server.strip_prefix("onenode-") {
            by_backend.entry(b).or_default().0 = Some(r);
        } else if let Some(b) = server.strip_prefix("twonode-") {
            by_backend.entry(b).or_default().1 = Some(r);
        }
    }
    if by_backend.is_empty() {
        return "No two-node runs in this result set.\n".into();
    }
    let mut s = String::new();
    if let Some(r) = runs.values().find(|r| r.mode == "twonode") {
        let _ = writeln!(
            s,
            "BenchmarkChannel subscribers on two chat processes sharing one backend, the \
             publisher on node A: {} broadcasts/s for {} s, each to every subscriber. \
             Same-node: subscribers on A; cross-node: on B. Both go through the backend (a \
             node hears its own publications back from it, as Rails' do): what cross-node \
             adds is the other process. The single-node figure: one chat on the same backend with as many \
             subscribers as both nodes together, the publisher on it (`memory`: the in-memory \
             adapter, for reference). Latency is publisher send to subscriber receipt; both \
             nodes, the backend and the load generator share the machine.\n",
            r.params["rate"], r.params["secs"],
        );
    }
    s.push_str(
        "| backend | one node: subscribers | p50 / p99 ms | two nodes: subscribers per node | same node (A) p50 / p99 ms | cross-node (B) p50 / p99 ms | server CPU µs per delivery: one / two nodes | status |\n\
         |---|---:|---|---:|---|---|---|---|\n",
    );
    let lat = |g: &Value| match (
        g["latency"]["p50_ms"].as_f64(),
        g["latency"]["p99_ms"].as_f64(),
    ) {
        (Some(a), Some(b)) => format!("{a:.1} / {b:.1}"),
        _ => "—".into(),
    };
    let cpu = |r: Option<&RunResult>| {
        r.and_then(|r| r.metrics["server_cpu_us_per_delivery"].as_f64())
            .map_or("—".into(), |c| format!("{c:.2}"))
    };
    for (backend, (one, two)) in by_backend {
        let status: Vec<String> = [one, two]
            .into_iter()
            .flatten()
            .filter(|r| !r.ok)
            .map(|r| {
                format!(
                    "{} FAILED: {}",
                    r.server,
                    r.errors.first().cloned().unwrap_or_default()
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "| {backend} | {} | {} | {} | {} | {} | {} / {} | {} |",
            one.map_or("—".into(), |r| r.metrics["subscribers"].to_string()),
            one.map_or("—".into(), |r| lat(&r.metrics["all"])),
            two.map_or("—".into(), |r| r.params["subscribers_per_node"]
                .to_string()),
            two.map_or("—".into(), |r| lat(&r.metrics["same_node"])),
            two.map_or("—".into(), |r| lat(&r.metrics["cross_node"])),
            cpu(one),
            cpu(two),
            if status.is_empty() {
                "ok".into()
            } else {
                status.join("; ")
            },
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(server: &str, per_node: u64, nodes: u64, ok: bool) -> RunResult {
        let g = |p50: f64| json!({"delivered": 10, "expected": 10, "latency": {"p50_ms": p50, "p99_ms": p50 * 4.0}});
        RunResult {
            mode: "twonode".into(),
            server: server.into(),
            ok,
            params: json!({"rate": 2.0, "secs": 30.0, "subscribers_per_node": per_node}),
            metrics: json!({
                "sent": 60,
                "subscribers": per_node * nodes,
                "same_node": g(1.0),
                "cross_node": if nodes > 1 { g(2.0) } else { Value::Null },
                "all": {"expected": 60 * per_node * nodes, "latency": {"p50_ms": 3.0, "p99_ms": 12.0}},
                "server_cpu_us_per_delivery": 9.5,
            }),
            errors: if ok {
                vec![]
            } else {
                vec!["5 of 60 deliveries missing".into()]
            },
        }
    }

    #[test]
    fn one_row_per_backend_with_both_figures() {
        let runs: crate::report::Runs = [
            run("onenode-redis", 18000, 1, true),
            run("twonode-redis", 9000, 2, false),
            run("onenode-memory", 18000, 1, true),
        ]
        .into_iter()
        .map(|r| ((r.server.clone(), r.mode.clone()), r))
        .collect();
        let t = report_section(&runs);
        assert!(t.contains("2.0 broadcasts/s for 30.0 s"), "{t}");
        assert!(
            t.contains("| redis | 18000 | 3.0 / 12.0 | 9000 | 1.0 / 4.0 | 2.0 / 8.0 | 9.50 / 9.50 | twonode-redis FAILED: 5 of 60 deliveries missing |"),
            "{t}"
        );
        assert!(
            t.contains("| memory | 18000 | 3.0 / 12.0 | — | — | — | 9.50 / — | ok |"),
            "{t}"
        );
        assert!(t.find("| memory").unwrap() < t.find("| redis").unwrap());
    }
}
