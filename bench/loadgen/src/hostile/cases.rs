//! The attacks, one function per case. Each runs for a bounded time with
//! bounded counts, closes its sockets, and returns what the attackers saw
//! plus the case's own checks (the harness adds the canary, memory and
//! fresh-client checks to every case).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::sock::{
    self, chat_identifier, perform_command, subscribe_command, unsubscribe_command, wait_until,
    HalfOpen, Observed, Sock,
};
use super::{Check, Ctx};

/// What a case hands back.
pub struct Outcome {
    pub attack: Value,
    pub checks: Vec<Check>,
}

fn no_markers() -> Arc<Vec<Vec<u8>>> {
    Arc::new(Vec::new())
}

async fn attackers(ctx: &Ctx, n: usize, obs: &Arc<Observed>) -> Result<Vec<Sock>> {
    let ids = (0..n).map(|_| ctx.next_id()).collect();
    let (socks, failures) =
        sock::connect_many(&ctx.target, ids, 50, obs, no_markers(), |_| None).await;
    if socks.is_empty() && n > 0 {
        bail!(
            "no attacking socket could connect: {}",
            failures.first().cloned().unwrap_or_default()
        );
    }
    Ok(socks)
}

/// Runs one flood per socket (`frame(k, n)` is socket k's n-th frame) for
/// the case's time; returns the frames sent per socket.
async fn flood_all(
    ctx: &Ctx,
    socks: &mut [Sock],
    obs: &Arc<Observed>,
    frame: impl Fn(usize, u64) -> Message + Clone + Send + 'static,
) -> Vec<u64> {
    let deadline = Instant::now() + ctx.case_time();
    let mut tasks = Vec::new();
    for (k, s) in socks.iter_mut().enumerate() {
        let sink = s.sink.take().expect("sink is free");
        let f = frame.clone();
        let obs = obs.clone();
        let max = ctx.opts.flood_max_commands;
        tasks.push(tokio::spawn(async move {
            sock::flood(sink, deadline, max, obs, move |n| f(k, n)).await
        }));
    }
    let mut sent = Vec::new();
    for (s, t) in socks.iter_mut().zip(tasks) {
        match t.await {
            Ok((sink, n)) => {
                s.sink = sink;
                sent.push(n);
            }
            Err(_) => sent.push(0),
        }
    }
    sent
}

/// A flood's outcome once the answers to what was sent have had time to
/// arrive: what the attackers saw, the `kinds` of flood and the frames
/// `sent` per socket. Closes the sockets.
async fn flood_outcome(
    socks: Vec<Sock>,
    obs: &Arc<Observed>,
    kinds: Value,
    sent: Vec<u64>,
) -> Result<Outcome> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut attack = obs.summary();
    attack["kinds"] = kinds;
    attack["sent_per_socket"] = json!(sent);
    sock::close_all(socks, obs).await;
    Ok(Outcome {
        attack,
        checks: vec![],
    })
}

// ---------------------------------------------------------------- floods

/// Subscribe floods from several sockets at once: one subscribes to ever
/// new rooms, one repeats the same identifier, one toggles a subscription
/// on and off (adapter subscribe/unsubscribe churn).
pub async fn subscribe_flood(ctx: &Ctx) -> Result<Outcome> {
    let obs = Observed::new();
    let mut socks = attackers(ctx, ctx.opts.flood_sockets, &obs).await?;
    let nonce = ctx.nonce;
    let sent = flood_all(ctx, &mut socks, &obs, move |k, n| {
        let text = match k % 3 {
            0 => subscribe_command(&chat_identifier(&format!("sf-{nonce}-{k}-{n}"))),
            1 => subscribe_command(&chat_identifier(&format!("sf-{nonce}-{k}"))),
            _ => {
                let id = chat_identifier(&format!("sf-{nonce}-{k}"));
                if n % 2 == 0 {
                    subscribe_command(&id)
                } else {
                    unsubscribe_command(&id)
                }
            }
        };
        Message::text(text)
    })
    .await;
    flood_outcome(
        socks,
        &obs,
        json!([
            "new room per command",
            "same identifier",
            "subscribe/unsubscribe toggle"
        ]),
        sent,
    )
    .await
}

/// Action floods: `echo` (answered to the sender), `speak` (a broadcast to
/// the sender's room) and performs on an identifier never subscribed.
pub async fn action_flood(ctx: &Ctx) -> Result<Outcome> {
    let obs = Observed::new();
    let mut socks = attackers(ctx, ctx.opts.flood_sockets, &obs).await?;
    let nonce = ctx.nonce;
    for (k, s) in socks.iter_mut().enumerate() {
        let id = chat_identifier(&format!("af-{nonce}-{k}"));
        if !s.subscribe(&id, Duration::from_secs(5)).await? {
            bail!("action flood socket {k} could not subscribe");
        }
    }
    let sent = flood_all(ctx, &mut socks, &obs, move |k, n| {
        let id = chat_identifier(&format!("af-{nonce}-{k}"));
        let text = match k % 3 {
            0 => perform_command(&id, &json!({"action": "echo", "n": n})),
            1 => perform_command(&id, &json!({"action": "speak", "body": n})),
            _ => perform_command(
                &chat_identifier(&format!("af-{nonce}-never-subscribed")),
                &json!({"action": "echo", "n": n}),
            ),
        };
        Message::text(text)
    })
    .await;
    flood_outcome(
        socks,
        &obs,
        json!(["echo", "speak", "perform on an unsubscribed identifier"]),
        sent,
    )
    .await
}

/// WebSocket ping frames as fast as possible, empty and 125-byte payloads;
/// every other socket never reads the pongs.
pub async fn ping_flood(ctx: &Ctx) -> Result<Outcome> {
    let obs = Observed::new();
    let mut socks = attackers(ctx, ctx.opts.flood_sockets.max(2), &obs).await?;
    for (k, s) in socks.iter().enumerate() {
        if k % 2 == 1 {
            s.state.pause(true);
        }
    }
    let payload = vec![b'p'; 125];
    let sent = flood_all(ctx, &mut socks, &obs, move |k, _| {
        if k % 4 < 2 {
            Message::Ping(Vec::new().into())
        } else {
            Message::Ping(payload.clone().into())
        }
    })
    .await;
    flood_outcome(socks, &obs, json!(["reads pongs", "never reads"]), sent).await
}

// ---------------------------------------------------------------- many subscriptions

/// One socket subscribes to `subscriptions` distinct rooms, pipelined.
pub async fn subscriptions(ctx: &Ctx) -> Result<Outcome> {
    let obs = Observed::new();
    let mut socks = attackers(ctx, 1, &obs).await?;
    let n = ctx.opts.subscriptions as u64;
    let nonce = ctx.nonce;
    let started = Instant::now();
    // Sent in one go, bounded by the count (the deadline is generous).
    let deadline = Instant::now() + Duration::from_secs(60);
    let sink = socks[0].sink.take().expect("sink is free");
    let (sink, sent) = sock::flood(sink, deadline, n, obs.clone(), move |i| {
        Message::text(subscribe_command(&chat_identifier(&format!(
            "sub-{nonce}-{i}"
        ))))
    })
    .await;
    socks[0].sink = sink;
    let send_ms = crate::modes::ms(started.elapsed());
    let state = socks[0].state.clone();
    let wait = ctx.case_time().max(Duration::from_secs(20));
    let all = wait_until(wait, || state.answers() >= sent || state.is_closed()).await;
    let answer_ms = crate::modes::ms(started.elapsed());
    // Hold them a moment while the canary runs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut attack = obs.summary();
    attack["subscribes_sent"] = json!(sent);
    attack["ms_to_send"] = json!(send_ms);
    attack["ms_to_last_answer"] = if all { json!(answer_ms) } else { Value::Null };
    attack["answered"] = json!(state.answers());
    attack["socket_ending"] = json!(*state.ending.lock().expect("sock lock"));
    sock::close_all(socks, &obs).await;
    Ok(Outcome {
        attack,
        checks: vec![],
    })
}

// ---------------------------------------------------------------- big identifiers

/// The room name that makes a subscribe command exactly `bytes` long.
fn room_for_command_size(prefix: &str, bytes: usize) -> String {
    let empty = subscribe_command(&chat_identifier(prefix)).len();
    let pad = bytes.saturating_sub(empty);
    format!("{prefix}{}", "r".repeat(pad))
}

/// Identifiers near the inbound limit, many of a few KiB, and one past it.
pub async fn big_identifiers(ctx: &Ctx) -> Result<Outcome> {
    let o = &ctx.opts;
    let nonce = ctx.nonce;
    let obs_big = Observed::new();
    let obs_mid = Observed::new();
    let obs_over = Observed::new();
    let mut big = attackers(ctx, 1, &obs_big).await?;
    let mut mid = attackers(ctx, 1, &obs_mid).await?;
    let mut over = attackers(ctx, 1, &obs_over).await?;

    let big_bytes = o.big_identifier_bytes;
    let mid_bytes = o.medium_identifier_bytes;
    let deadline = Instant::now() + Duration::from_secs(30);
    let started = Instant::now();
    // `n` subscribes of `bytes` each, pipelined on `socks[0]`.
    let flood_rooms = |socks: &mut [Sock], obs: &Arc<Observed>, n: usize, what, bytes| {
        let sink = socks[0].sink.take().expect("sink is free");
        tokio::spawn(sock::flood(
            sink,
            deadline,
            n as u64,
            obs.clone(),
            move |i| {
                let room = room_for_command_size(&format!("{what}-{nonce}-{i}-"), bytes);
                Message::text(subscribe_command(&chat_identifier(&room)))
            },
        ))
    };
    let big_task = flood_rooms(&mut big, &obs_big, o.big_identifiers, "big", big_bytes);
    let mid_task = flood_rooms(&mut mid, &obs_mid, o.medium_identifiers, "mid", mid_bytes);
    // One command past the 64 KiB inbound limit.
    let over_room = room_for_command_size(&format!("over-{nonce}-"), 64 * 1024 + 1024);
    let over_sent = over[0]
        .send(subscribe_command(&chat_identifier(&over_room)))
        .await;
    let (big_sink, big_sent) = big_task.await.map_err(|e| anyhow!("{e}"))?;
    let (mid_sink, mid_sent) = mid_task.await.map_err(|e| anyhow!("{e}"))?;
    big[0].sink = big_sink;
    mid[0].sink = mid_sink;
    let (bs, ms, os) = (
        big[0].state.clone(),
        mid[0].state.clone(),
        over[0].state.clone(),
    );
    let wait = ctx.case_time().max(Duration::from_secs(10));
    wait_until(wait, || {
        (bs.answers() >= big_sent || bs.is_closed())
            && (ms.answers() >= mid_sent || ms.is_closed())
            && os.is_closed()
    })
    .await;
    let answer_ms = crate::modes::ms(started.elapsed());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ending = |s: &Sock| s.state.ending.lock().expect("sock lock").clone();
    let attack = json!({
        "near_limit": {
            "command_bytes": big_bytes,
            "sent": big_sent,
            "answered": bs.answers(),
            "socket_ending": ending(&big[0]),
            "observed": obs_big.summary(),
        },
        "few_kib": {
            "command_bytes": mid_bytes,
            "sent": mid_sent,
            "answered": ms.answers(),
            "socket_ending": ending(&mid[0]),
            "observed": obs_mid.summary(),
        },
        "over_limit": {
            "command_bytes": 64 * 1024 + 1024,
            "send": over_sent.err().map(|e| format!("{e:#}")),
            "socket_ending": ending(&over[0]),
        },
        "ms_to_last_answer": answer_ms,
    });
    sock::close_all(big, &obs_big).await;
    sock::close_all(mid, &obs_mid).await;
    sock::close_all(over, &obs_over).await;
    Ok(Outcome {
        attack,
        checks: vec![],
    })
}

// ---------------------------------------------------------------- big broadcast

/// A broadcast of `big_broadcast_bytes` to a room of `room_size` through the
/// admin endpoint, then a small one: every member must still be connected
/// and get the small one.
pub async fn big_broadcast(ctx: &Ctx) -> Result<Outcome> {
    let o = &ctx.opts;
    let admin = ctx
        .admin
        .ok_or_else(|| anyhow!("needs the admin endpoint (--admin-url)"))?;
    let obs = Observed::new();
    let markers = Arc::new(vec![
        br#""kind":"big""#.to_vec(),
        br#""kind":"small""#.to_vec(),
    ]);
    let ids = (0..o.room_size).map(|_| ctx.next_id()).collect();
    let (mut members, failures) =
        sock::connect_many(&ctx.target, ids, 20, &obs, markers, |_| None).await;
    if members.len() != o.room_size {
        bail!(
            "{} of {} room members connected: {:?}",
            members.len(),
            o.room_size,
            failures.first()
        );
    }
    let room = format!("big-{}", ctx.nonce);
    let id = chat_identifier(&room);
    for m in &mut members {
        if !m.subscribe(&id, Duration::from_secs(5)).await? {
            bail!("room member {} could not subscribe", m.id);
        }
    }
    let stream = format!("chat_{room}");
    let body = json!({
        "stream": stream,
        "message": {"kind": "big", "body": "x".repeat(o.big_broadcast_bytes)},
    })
    .to_string();
    let started = Instant::now();
    let big_post = sock::http_post(admin, "/admin/broadcast", body.as_bytes()).await;
    let everyone = |k: u32| {
        let members = &members;
        move || {
            members
                .iter()
                .all(|m| m.state.has_mark(k) || m.state.is_closed())
        }
    };
    let big_done = wait_until(Duration::from_secs(15), everyone(0)).await;
    let big_ms = crate::modes::ms(started.elapsed());
    let got_big = members.iter().filter(|m| m.state.has_mark(0)).count();
    let small = json!({"stream": stream, "message": {"kind": "small", "n": 1}}).to_string();
    let small_post = sock::http_post(admin, "/admin/broadcast", small.as_bytes()).await;
    wait_until(Duration::from_secs(5), everyone(1)).await;
    // Still there a moment later (a close can follow the last frame).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got_small = members.iter().filter(|m| m.state.has_mark(1)).count();
    let connected = members.iter().filter(|m| !m.state.is_closed()).count();
    let post = |r: &Result<(u16, String)>| match r {
        Ok((status, _)) => json!(status),
        Err(e) => json!(format!("{e:#}")),
    };
    let mut attack = obs.summary();
    attack["members"] = json!(o.room_size);
    attack["broadcast_bytes"] = json!(o.big_broadcast_bytes);
    attack["big_post"] = post(&big_post);
    attack["small_post"] = post(&small_post);
    attack["got_big"] = json!(got_big);
    attack["ms_to_deliver_big"] = if big_done && got_big == o.room_size {
        json!(big_ms)
    } else {
        Value::Null
    };
    attack["got_small"] = json!(got_small);
    attack["still_connected"] = json!(connected);
    let n = o.room_size;
    let checks = vec![
        Check::new(
            "members_connected",
            connected == n,
            format!("{connected} of {n} room members still connected after the big broadcast"),
        ),
        Check::new(
            "members_got_small",
            got_small == n,
            format!("{got_small} of {n} got the small broadcast that followed ({got_big} got the big one)"),
        ),
    ];
    sock::close_all(members, &obs).await;
    Ok(Outcome { attack, checks })
}

// ---------------------------------------------------------------- half-sent

/// `half_open` TCP connections that send part of a request and stall, held
/// for the case's time; a fresh client must get through meanwhile.
pub async fn half_open(ctx: &Ctx) -> Result<Outcome> {
    let first = ctx.next_ids(ctx.opts.half_open);
    let held = HalfOpen::open(&ctx.target, first, ctx.opts.half_open).await?;
    let started = Instant::now();
    tokio::time::sleep(ctx.case_time() / 2).await;
    let during = sock::fresh_client(&ctx.target, ctx.next_id(), Duration::from_secs(10)).await;
    let rest = ctx.case_time().saturating_sub(started.elapsed());
    tokio::time::sleep(rest).await;
    let mut attack = held.summary();
    attack["held_secs"] = json!(started.elapsed().as_secs_f64());
    attack["fresh_client_during"] = json!(during);
    let checks = vec![Check::new(
        "fresh_client_during_attack",
        during.ok,
        match &during.error {
            None => format!(
                "a new client got its echo in {:.1} ms with {} half-sent requests open",
                during.ms, held.opened
            ),
            Some(e) => format!("with {} half-sent requests open: {e}", held.opened),
        },
    )];
    held.close();
    Ok(Outcome { attack, checks })
}

// ---------------------------------------------------------------- slow readers

/// A busy room: one publisher speaks `slow_rate` times a second while
/// `slow_readers` members stop reading and a few others read everything.
pub async fn slow_readers(ctx: &Ctx) -> Result<Outcome> {
    let o = &ctx.opts;
    let obs_pub = Observed::new();
    let obs_read = Observed::new();
    let obs_slow = Observed::new();
    let readers_n = 4;
    // The room's traffic comes from several members, each well under the
    // server's per-connection command rate (100/s sustained by default):
    // this case is about readers that stall, not about a flooding sender.
    let publishers_n = ((o.slow_rate / 50.0).ceil() as usize).max(1);
    let mut publisher = attackers(ctx, publishers_n, &obs_pub).await?;
    let publishers_n = publisher.len();
    let ids = (0..readers_n).map(|_| ctx.next_id()).collect();
    let (mut readers, f1) =
        sock::connect_many(&ctx.target, ids, 20, &obs_read, no_markers(), |_| None).await;
    let ids = (0..o.slow_readers).map(|_| ctx.next_id()).collect();
    // A small receive window: a stalled reader backs the server up within
    // the case instead of parking megabytes in the kernel.
    let (mut slow, f2) = sock::connect_many(&ctx.target, ids, 20, &obs_slow, no_markers(), |_| {
        Some(4096)
    })
    .await;
    if readers.len() != readers_n || slow.len() != o.slow_readers {
        bail!(
            "busy room members failed to connect: {:?}",
            f1.iter().chain(&f2).next()
        );
    }
    let room = format!("busy-{}", ctx.nonce);
    let id = chat_identifier(&room);
    for s in publisher.iter_mut().chain(&mut readers).chain(&mut slow) {
        if !s.subscribe(&id, Duration::from_secs(5)).await? {
            bail!("busy room member {} could not subscribe", s.id);
        }
    }
    for s in &slow {
        s.state.pause(true);
    }
    let body = crate::client::padding(o.slow_payload);
    let started = Instant::now();
    let total = (o.slow_rate * ctx.case_time().as_secs_f64()).round() as u64;
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut send_error = None;
    while sent < total && started.elapsed() < ctx.case_time() + Duration::from_secs(2) {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * o.slow_rate) as u64 + 1).min(total);
        while sent < due {
            let frame = perform_command(&id, &json!({"action": "speak", "body": body}));
            if let Err(e) = publisher[sent as usize % publishers_n].send(frame).await {
                send_error = Some(format!("{e:#}"));
                break;
            }
            obs_pub.sent.fetch_add(1, Ordering::Relaxed);
            sent += 1;
        }
        if send_error.is_some() {
            break;
        }
    }
    let drained = wait_until(Duration::from_secs(5), || {
        readers
            .iter()
            .all(|r| r.state.messages.load(Ordering::Relaxed) >= sent || r.state.is_closed())
    })
    .await;
    // The stalled ones read again: what reached them ends in a too_slow
    // disconnect or a plain close, or they are still there.
    for s in &slow {
        s.state.pause(false);
    }
    wait_until(Duration::from_secs(3), || {
        slow.iter().all(|s| s.state.is_closed())
    })
    .await;
    let received: Vec<u64> = readers
        .iter()
        .map(|r| r.state.messages.load(Ordering::Relaxed))
        .collect();
    let readers_closed = readers.iter().filter(|r| r.state.is_closed()).count();
    let slow_dropped = slow.iter().filter(|s| s.state.is_closed()).count();
    let told = slow
        .iter()
        .filter(|s| s.state.too_slow.load(Ordering::SeqCst))
        .count();
    let attack = json!({
        "broadcasts_sent": sent,
        "publishers": publishers_n,
        "publisher_send_error": send_error,
        "publishers_observed": obs_pub.summary(),
        "rate": o.slow_rate,
        "payload_bytes": o.slow_payload,
        "readers": readers_n,
        "readers_received": received,
        "readers_dropped": readers_closed,
        "readers_drained": drained,
        "slow_readers": o.slow_readers,
        "slow_dropped": slow_dropped,
        "slow_told_too_slow": told,
        "slow_observed": obs_slow.summary(),
    });
    let short: u64 = received.iter().map(|&r| sent.saturating_sub(r)).sum();
    let checks = vec![Check::new(
        "readers_got_everything",
        short == 0 && readers_closed == 0,
        format!(
            "{readers_n} reading members: {short} broadcasts missing of {sent} each, {readers_closed} dropped"
        ),
    )];
    sock::close_all(publisher, &obs_pub).await;
    sock::close_all(readers, &obs_read).await;
    sock::close_all(slow, &obs_slow).await;
    Ok(Outcome { attack, checks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_padding_hits_the_command_size() {
        for bytes in [100, 4096, 65_000] {
            let room = room_for_command_size("p-", bytes);
            assert_eq!(subscribe_command(&chat_identifier(&room)).len(), bytes);
        }
    }
}
