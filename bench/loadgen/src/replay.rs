//! `replay`: what one history replay costs the server, on each broker.
//!
//! The chat example's room gets H numbered messages through
//! `POST /admin/broadcast`. Then two waves of N clients, each on AnyCable's
//! extended protocol (`actioncable-v1-ext-json`), connect and subscribe to
//! the room, at most `--connect-concurrency` at a time:
//! - the plain wave subscribes without a `history` request and waits for
//!   `confirm_subscription`;
//! - the replay wave subscribes with `history: {since}` from before the
//!   first message, reads the H replayed messages and waits for
//!   `confirm_history`.
//!
//! A room keeps history only once an extended-protocol client has
//! subscribed to it, so one keeper client subscribes before the messages
//! and stays to the end.
//!
//! Everything but the replay is the same in both waves (the TCP and
//! WebSocket handshakes, the welcome and its session, the subscription), so
//! the server's CPU in the replay wave minus that in the plain wave is the
//! replays': the broker's read, the frames' encoding and their writes.
//! Divided by the clients it is the cost of one replay, by the replayed
//! messages that of one message. Each wave's clients close once every
//! client of the wave is done, outside the measured window. `--rounds`
//! rounds of a plain wave then a replay wave; each kind's CPU is summed
//! over its rounds (the kernel counts CPU in 10 ms ticks, and one wave of
//! 1,000 plain clients takes about 60 ms).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use futures_util::SinkExt;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{histogram, Target, Ws};
use crate::hostile::sock::http_post;
use crate::jitter::{admin_addr, connect_with, next_frame, subscribe_command, summary};
use crate::modes::{Common, RunResult};
use crate::procfs;

#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct ReplayOpts {
    /// Clients in each wave.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Messages published to the room before the waves; every client of the
    /// replay wave asks for all of them (at most the chat's
    /// `--history-limit`, 100 by default).
    #[arg(long, default_value_t = 100)]
    pub history: u64,
    /// The subscription every client makes.
    #[arg(long, default_value = r#"{"channel":"ChatChannel","room":"replay"}"#)]
    pub identifier: String,
    /// The stream that subscription streams from (the publisher's target).
    #[arg(long, default_value = "chat_replay")]
    pub stream: String,
    /// The chat's admin endpoint, http://host:port (default: --url's).
    #[arg(long)]
    pub admin_url: Option<String>,
    /// Rounds of a plain wave and a replay wave.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// The backend's process name (`redis-server`, `postgres`,
    /// `nats-server`): its processes' CPU is measured beside the server's.
    #[arg(long)]
    pub backend_comm: Option<String>,
}

/// One client's part of a wave.
#[derive(Default)]
struct Outcome {
    /// Subscribe sent to its confirmation (`confirm_history` when replaying),
    /// microseconds.
    confirmed_us: Option<u64>,
    /// The run's messages received before the confirmation.
    replayed: u64,
    error: Option<String>,
}

/// What a wave measured.
struct Wave {
    cpu_us: Option<u64>,
    /// The `--backend-comm` processes' CPU.
    backend_cpu_us: Option<u64>,
    secs: f64,
    outcomes: Vec<Outcome>,
    /// Clients still open; closed by the caller after the measurement.
    sockets: Vec<Ws>,
}

/// The run's message `seq` if `f` is one of the room's messages.
fn seq_of(f: &crate::jitter::Frame, identifier: &str) -> Option<u64> {
    if f.kind.is_some() || f.identifier.as_deref() != Some(identifier) {
        return None;
    }
    f.message.as_ref()?.get("seq")?.as_u64()
}

/// Client `i`: connect, subscribe (asking for history `since` when given),
/// read until the confirmation.
async fn one(
    target: &Target,
    o: &ReplayOpts,
    i: usize,
    since: Option<u64>,
) -> (Outcome, Option<Ws>) {
    let mut out = Outcome::default();
    let run = async {
        let (mut ws, _welcome) = connect_with(target, i, None, "actioncable-v1-ext-json").await?;
        let started = Instant::now();
        let history = since.map(|s| json!({ "since": s }));
        ws.send(Message::text(subscribe_command(&o.identifier, history)))
            .await?;
        loop {
            let f = next_frame(&mut ws).await?;
            match f.kind.as_deref() {
                Some("confirm_subscription") if since.is_none() => break,
                Some("confirm_history") => break,
                Some("reject_history") => bail!("history rejected"),
                Some("reject_subscription") => bail!("subscription rejected"),
                Some("disconnect") => bail!("disconnected by the server"),
                _ => {
                    if seq_of(&f, &o.identifier).is_some() {
                        out.replayed += 1;
                    }
                }
            }
        }
        out.confirmed_us = Some(started.elapsed().as_micros() as u64);
        Ok::<_, anyhow::Error>(ws)
    };
    match tokio::time::timeout(Duration::from_secs(60), run).await {
        Ok(Ok(ws)) => (out, Some(ws)),
        Ok(Err(e)) => {
            out.error = Some(format!("client {i}: {e:#}"));
            (out, None)
        }
        Err(_) => {
            out.error = Some(format!("client {i}: no confirmation within 60 s"));
            (out, None)
        }
    }
}

/// One wave of `o.clients` clients; client numbers start at `first`.
async fn wave(common: &Common, o: &ReplayOpts, first: usize, since: Option<u64>) -> Wave {
    let sem = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let backend = |o: &ReplayOpts| {
        o.backend_comm
            .as_deref()
            .and_then(|c| procfs::cpu_by_comm(c).ok())
    };
    let backend0 = backend(o);
    let cpu0 = procfs::cpu_us_all(&common.server_pids).ok();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(o.clients);
    for i in first..first + o.clients {
        let (sem, target, o) = (sem.clone(), common.target.clone(), o.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            one(&target, &o, i, since).await
        }));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    let mut sockets = Vec::with_capacity(tasks.len());
    for t in tasks {
        match t.await {
            Ok((out, ws)) => {
                outcomes.push(out);
                sockets.extend(ws);
            }
            Err(e) => outcomes.push(Outcome {
                error: Some(format!("client task: {e}")),
                ..Outcome::default()
            }),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu1 = procfs::cpu_us_all(&common.server_pids).ok();
    let backend1 = backend(o);
    let cpu_us = match (cpu0, cpu1) {
        (Some(a), Some(b)) if !common.server_pids.is_empty() => Some(b.saturating_sub(a)),
        _ => None,
    };
    let backend_cpu_us = match (backend0, backend1) {
        (Some(a), Some(b)) => Some(procfs::cpu_between(&a, &b)),
        _ => None,
    };
    Wave {
        cpu_us,
        backend_cpu_us,
        secs,
        outcomes,
        sockets,
    }
}

/// Closes a wave's sockets and waits (at most 5 s) for the server to see
/// them go, so the next wave starts on a quiet server.
async fn close_all(sockets: Vec<Ws>) {
    let closes = sockets.into_iter().map(|mut ws| async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
    });
    futures_util::future::join_all(closes).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// The replay's cost from the two waves' CPU: (per replay, per message) µs.
fn replay_cost(
    plain_us: Option<u64>,
    replay_us: Option<u64>,
    clients: usize,
    messages: u64,
) -> (Option<f64>, Option<f64>) {
    let (Some(p), Some(r)) = (plain_us, replay_us) else {
        return (None, None);
    };
    let extra = r as f64 - p as f64;
    let per_replay = extra / clients.max(1) as f64;
    let per_message = (messages > 0).then(|| extra / messages as f64);
    (Some(per_replay), per_message)
}

/// The waves of one kind: their clients' latencies merged, their CPU
/// summed (the server's, the backend's).
fn waves_json(waves: &[Wave], replaying: bool) -> (Value, Option<u64>, Option<u64>) {
    let mut h = histogram();
    for us in waves
        .iter()
        .flat_map(|w| &w.outcomes)
        .filter_map(|o| o.confirmed_us)
    {
        h.saturating_record(us.max(1));
    }
    let cpu: Option<u64> = waves.iter().map(|w| w.cpu_us).sum();
    let backend: Option<u64> = waves.iter().map(|w| w.backend_cpu_us).sum();
    let confirmed = waves
        .iter()
        .flat_map(|w| &w.outcomes)
        .filter(|o| o.confirmed_us.is_some())
        .count();
    let v = json!({
        "history": replaying,
        "waves": waves.len(),
        "clients_confirmed": confirmed,
        "replayed": waves.iter().flat_map(|w| &w.outcomes).map(|o| o.replayed).sum::<u64>(),
        "secs_per_wave": waves.iter().map(|w| w.secs).collect::<Vec<_>>(),
        "server_cpu_us_per_wave": waves.iter().map(|w| w.cpu_us).collect::<Vec<_>>(),
        "server_cpu_us": cpu,
        "backend_cpu_us": backend,
        "subscribe_to_confirm": summary(&h),
    });
    (v, cpu, backend)
}

/// The replay run; see the module docs.
pub async fn replay(common: &Common, o: &ReplayOpts) -> Result<RunResult> {
    if o.clients == 0 || o.history == 0 {
        bail!("--clients and --history must be above 0");
    }
    let admin = admin_addr(common, o.admin_url.as_deref())?;
    // `since` is in whole seconds, entries at or after it: one second back
    // so the first message is in, whatever the clocks' rounding.
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs().saturating_sub(1))
        .map_err(|e| anyhow!("clock before 1970: {e}"))?;
    if o.rounds == 0 {
        bail!("--rounds must be above 0");
    }
    // The keeper: its subscription turns the room's history on.
    let keeper_id = usize::MAX / 2;
    let (out, keeper) = one(&common.target, o, keeper_id, None).await;
    let Some(keeper) = keeper else {
        bail!("the keeper client: {}", out.error.unwrap_or_default());
    };
    let mut errors = Vec::new();
    for seq in 1..=o.history {
        let body = json!({"stream": o.stream, "message": {"seq": seq}}).to_string();
        match http_post(admin, "/admin/broadcast", body.as_bytes())
            .await
            .with_context(|| format!("broadcast {seq}"))?
        {
            (200, _) => {}
            (status, b) => bail!("broadcast {seq}: HTTP {status}: {b}"),
        }
    }
    // Let the last appends land (a backend's pub/sub echo may still be on
    // its way).
    tokio::time::sleep(Duration::from_millis(300)).await;

    let n = o.clients;
    let mut plain = Vec::new();
    let mut replays = Vec::new();
    for round in 0..o.rounds {
        let mut w = wave(common, o, 2 * round * n, None).await;
        close_all(std::mem::take(&mut w.sockets)).await;
        plain.push(w);
        let mut w = wave(common, o, (2 * round + 1) * n, Some(since)).await;
        close_all(std::mem::take(&mut w.sockets)).await;
        replays.push(w);
    }
    close_all(vec![keeper]).await;
    for (w, replaying) in plain
        .iter()
        .map(|w| (w, false))
        .chain(replays.iter().map(|w| (w, true)))
    {
        for out in &w.outcomes {
            let e = if let Some(e) = &out.error {
                e.clone()
            } else if replaying && out.replayed != o.history {
                format!(
                    "a client got {} of the {} messages replayed",
                    out.replayed, o.history
                )
            } else if !replaying && out.replayed != 0 {
                format!(
                    "a client without a history request got {} messages before its confirmation",
                    out.replayed
                )
            } else {
                continue;
            };
            if errors.len() < 200 {
                errors.push(e);
            }
        }
    }
    let (plain_json, plain_cpu, plain_backend) = waves_json(&plain, false);
    let (replay_json, replay_cpu, replay_backend) = waves_json(&replays, true);
    let clients = n * o.rounds;
    let messages = clients as u64 * o.history;
    let (per_replay, per_message) = replay_cost(plain_cpu, replay_cpu, clients, messages);
    let (backend_per_replay, backend_per_message) =
        replay_cost(plain_backend, replay_backend, clients, messages);
    let per_client = |c: Option<u64>| c.map(|c| c as f64 / clients as f64);
    let fmt = |v: Option<f64>| {
        v.map(|v| format!("{v:.1} µs"))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "replay: {n} clients a wave, {} rounds, {} messages each; server CPU per client: plain {}, replaying {}; a replay costs {}, {} per message (the backend's processes: {}, {} per message); confirm_history p50/p99 {}/{} ms",
        o.rounds,
        o.history,
        fmt(per_client(plain_cpu)),
        fmt(per_client(replay_cpu)),
        fmt(per_replay),
        fmt(per_message),
        fmt(backend_per_replay),
        fmt(backend_per_message),
        replay_json["subscribe_to_confirm"]["p50_ms"],
        replay_json["subscribe_to_confirm"]["p99_ms"],
    );
    let ok = errors.is_empty();
    Ok(RunResult {
        mode: "replay".into(),
        server: common.server.clone(),
        ok,
        params: serde_json::to_value(o)?,
        metrics: json!({
            "clients": n,
            "history": o.history,
            "connect_concurrency": common.connect_concurrency,
            "rounds": o.rounds,
            "plain": plain_json,
            "replay": replay_json,
            "server_cpu_us_per_client_plain": per_client(plain_cpu),
            "server_cpu_us_per_client_replay": per_client(replay_cpu),
            "server_cpu_us_per_replay": per_replay,
            "server_cpu_us_per_replayed_message": per_message,
            "backend": o.backend_comm,
            "backend_cpu_us_per_replay": backend_per_replay,
            "backend_cpu_us_per_replayed_message": backend_per_message,
        }),
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_is_charged_what_the_plain_wave_did_not_spend() {
        // 1,000 clients, 100 messages each: 250 ms more in the replay wave.
        let (per_replay, per_message) = replay_cost(Some(150_000), Some(400_000), 1000, 100_000);
        assert_eq!(per_replay, Some(250.0));
        assert_eq!(per_message, Some(2.5));
        assert_eq!(replay_cost(None, Some(1), 1, 1), (None, None));
    }

    #[test]
    fn only_the_rooms_numbered_messages_count() {
        let id = r#"{"channel":"ChatChannel","room":"replay"}"#;
        let frame = |s: &str| -> crate::jitter::Frame { serde_json::from_str(s).unwrap() };
        let msg = json!({"identifier": id, "message": {"seq": 7}, "offset": 7, "epoch": "e"});
        assert_eq!(seq_of(&frame(&msg.to_string()), id), Some(7));
        let other = json!({"identifier": "{}", "message": {"seq": 7}});
        assert_eq!(seq_of(&frame(&other.to_string()), id), None);
        let typed = json!({"type": "confirm_history", "identifier": id});
        assert_eq!(seq_of(&frame(&typed.to_string()), id), None);
    }
}
