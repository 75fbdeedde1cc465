//! The broker conformance suite: the contract of `cable_core::broker::Broker`
//! (see its module docs), as code, run by every broker against its real
//! backend.
//!
//! A broker's test implements [`BrokerConformance`] (make a broker instance
//! on the shared backend, lose a stream's history as a restart without
//! persistence would, make a broker pointed at nothing) and expands
//! [`broker_conformance_tests!`](crate::broker_conformance_tests), which
//! makes one `#[tokio::test]` per property; a property added here runs for
//! every broker. Two instances made by [`BrokerConformance::broker`] are two
//! nodes sharing the backend. Each test names its streams and session ids
//! with a prefix of its own ([`unique_prefix`]), so tests run in parallel
//! against one backend. Without a reachable backend
//! [`BrokerConformance::setup`] prints `SKIPPED: …` (see
//! [`skip`]) and the test passes, unless `CI` is
//! set.
//!
//! Time is real: the expiry properties use TTLs of 1 to 2 s and sleep past
//! them.
//!
//! Offsets older than the oldest entry kept are refused, the one equal to
//! it is not: `history_from(epoch, oldest)` returns the entries after the
//! oldest, `history_from(epoch, oldest - 1)` is
//! [`BrokerError::HistoryNotFound`] (AnyCable's memory broker does the
//! same), so a client is only served when the broker still holds the entry
//! it last saw.
//!
//! ```ignore
//! struct Redis { /* a plain connection for probes */ }
//! #[async_trait]
//! impl BrokerConformance for Redis { /* ... */ }
//! cable_adapter_kit::broker_conformance_tests!(Redis);
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use cable_core::broker::{Broker, BrokerError, History, HistoryPolicy, Join, Position};
use tokio::time::Instant;

pub use crate::conformance::{skip, unique_prefix};

/// What a broker's test supplies to the suite.
#[async_trait]
pub trait BrokerConformance: Sized + Send + Sync + 'static {
    /// The broker under test.
    type Broker: Broker;

    /// Connects to the real backend for probes, or None after
    /// [`skip`].
    async fn setup() -> Option<Self>;
    /// A new broker instance on the shared backend: another node.
    fn broker(&self) -> Self::Broker;
    /// Removes everything the backend keeps of `stream`'s history, as a
    /// backend restart without persistence (or an eviction) does.
    async fn lose_history(&self, stream: &str);
    /// A broker pointed at a backend that is not there (a closed port), or
    /// None for a broker that cannot be away (in memory): the outage
    /// property then passes without checking.
    fn unreachable(&self) -> Option<Self::Broker>;
}

/// Expands to one `#[tokio::test]` per property of the suite, for `$impl`
/// (a [`BrokerConformance`] type). `broker_conformance_tests!($impl;
/// without presence)` is for a broker that keeps no presence: the
/// presence properties are replaced by [`presence_is_unsupported`].
#[macro_export]
macro_rules! broker_conformance_tests {
    ($impl:ty) => {
        $crate::broker_conformance_tests!(@history $impl;
            presence_join_leave_info,
            presence_id_mismatch,
            presence_two_sessions_of_one_id,
            presence_is_shared_by_nodes,
            presence_expires_unless_touched,
            presence_expire_reports_each_leave_once,
        );
    };
    ($impl:ty; without presence) => {
        $crate::broker_conformance_tests!(@history $impl; presence_is_unsupported);
    };
    (@history $impl:ty; $($presence:ident),* $(,)?) => {
        $crate::suite_tests!(broker_conformance, $impl;
            offsets_start_at_one_and_grow_by_one,
            nodes_share_positions,
            history_from_an_offset,
            history_from_refuses_what_it_cannot_serve,
            history_since_a_timestamp,
            limit_evicts_the_oldest,
            ttl_expires_the_stream_and_starts_a_new_epoch,
            entries_older_than_the_ttl_are_not_served,
            lost_history_starts_a_new_epoch,
            sessions_are_stored_replaced_and_removed,
            sessions_expire,
            history_marks_expire,
            concurrent_appends_from_two_nodes,
            payloads_come_back_exactly,
            extreme_arguments_are_no_errors,
            unreachable_backend_fails_promptly,
            $($presence),*
        );
    };
}

/// A policy with `limit` entries and a TTL of `ttl_ms` milliseconds.
pub fn policy(limit: usize, ttl_ms: u64) -> HistoryPolicy {
    HistoryPolicy {
        limit,
        ttl: Duration::from_millis(ttl_ms),
    }
}

/// Appends `payload` to `stream` until the broker's backend is back, for at
/// most 5 s (then panics); `on_error` checks each failure on the way. For
/// adapters' tests that restart or cut their backend.
pub async fn append_within_5s(
    broker: &impl Broker,
    stream: &str,
    payload: &str,
    policy: HistoryPolicy,
    on_error: impl Fn(&BrokerError),
) -> Position {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match broker.append(stream, payload, policy).await {
            Ok(p) => return p,
            Err(e) => {
                on_error(&e);
                assert!(Instant::now() < deadline, "not back within 5 s: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn append(b: &impl Broker, stream: &str, payload: &str, p: HistoryPolicy) -> Position {
    b.append(stream, payload, p)
        .await
        .unwrap_or_else(|e| panic!("append to {stream}: {e}"))
}

async fn from(b: &impl Broker, stream: &str, epoch: &str, offset: u64) -> History {
    b.history_from(stream, epoch, offset)
        .await
        .unwrap_or_else(|e| panic!("history_from({stream}, {epoch}, {offset}): {e}"))
}

async fn not_found(b: &impl Broker, stream: &str, epoch: &str, offset: u64, why: &str) {
    match b.history_from(stream, epoch, offset).await {
        Err(BrokerError::HistoryNotFound { stream: s, .. }) => assert_eq!(s, stream),
        other => panic!("history_from({stream}, {epoch}, {offset}) ({why}): {other:?}"),
    }
}

async fn since(b: &impl Broker, stream: &str, ts: u64) -> History {
    b.history_since(stream, ts)
        .await
        .unwrap_or_else(|e| panic!("history_since({stream}, {ts}): {e}"))
}

fn offsets(h: &History) -> Vec<u64> {
    h.entries.iter().map(|e| e.offset).collect()
}

fn payloads(h: &History) -> Vec<&str> {
    h.entries.iter().map(|e| e.payload.as_str()).collect()
}

/// Offsets of a stream start at 1 and grow by 1 per append, in one epoch.
pub async fn offsets_start_at_one_and_grow_by_one<C: BrokerConformance>() {
    let Some(c) = C::setup().await else { return };
    let b = c.broker();
    let stream = format!("{}:chat", unique_prefix());
    let first = append(&b, &stream, r#"{"n":1}"#, HistoryPolicy::default()).await;
    assert_eq!(first.offset, 1);
    assert!(!first.epoch.is_empty(), "an epoch names the history");
    for n in 2..=5 {
        let p = append(
            &b,
            &stream,
            &format!(r#"{{"n":{n}}}"#),
            HistoryPolicy::default(),
        )
        .await;
        assert_eq!(
            p,
            Position {
                epoch: first.epoch.clone(),
                offset: n
            }
        );
    }
    // Another stream has its own count.
    let other = append(
        &b,
        &format!("{stream}:other"),
        "{}",
        HistoryPolicy::default(),
    )
    .await;
    assert_eq!(other.offset, 1);
}

/// Two nodes on one backend: interleaved appends never repeat an offset,
/// and both read the same history.
pub async fn nodes_share_positions<C: BrokerConformance>() {
    let Some(c) = C::setup().await else { return };
    let (a, b) = (c.broker(), c.broker());
    let stream = format!("{}:chat", unique_prefix());
    let mut epoch = None;
    for n in 1..=10u64 {
        let node = if n % 2 == 1 { &a } else { &b };
        let p = append(
            node,
            &stream,
            &format!(r#"{{"n":{n}}}"#),
            HistoryPolicy::default(),
        )
        .await;
        assert_eq!(p.offset, n, "append {n}");
        assert_eq!(epoch.get_or_insert_with(|| p.epoch.clone()), &p.epoch);
    }
    let epoch = epoch.unwrap_or_default();
    let on_a = from(&a, &stream, &epoch, 1).await;
    let on_b = from(&b, &stream, &epoch, 1).await;
    assert_eq!(on_a, on_b);
    assert_eq!(on_a.epoch, epoch);
    assert_eq!(offsets(&on_a), (2..=10).collect::<Vec<_>>());
    assert_eq!(since(&a, &stream, 0).await, since(&b, &stream, 0).await);
}

/// `history_from`: the entries after the offset, oldest first, with their
/// payloads and timestamps; none at the latest.
pub async fn history_from_an_offset<C: BrokerConformance>() {
    let Some(c) = C::setup().await else { return };
    let b = c.broker();
    let stream = format!("{}:chat", unique_prefix());
    let before = now_s();
    let mut epoch = String::new();
    for n in 1..=5 {
        epoch = append(
            &b,
            &stream,
            &format!(r#"{{"n":{n}}}"#),
            HistoryPolicy::default(),
        )
        .await
        .epoch;
    }
    let after = now_s();
    let h = from(&b, &stream, &epoch, 2).await;
    assert_eq!(h.epoch, epoch);
    assert_eq!(offsets(&h), vec![3, 4, 5]);
    assert_eq!(payloads(&h), vec![r#"{"n":3}"#, r#"{"n":4}"#, r#"{"n":5}"#]);
    for e in &h.entries {
        // The backend's clock may be a little off ours.
        assert!(
            e.timestamp + 5 >= before && e.timestamp <= after + 5,
            "timestamp {} not near [{before}, {after}]",
            e.timestamp
        );
    }
    let latest = from(&b, &stream, &epoch, 5).await;
    assert_eq!(latest.epoch, epoch);
    assert!(latest.entries.is_empty(), "{latest:?}");
    assert_eq!(
        offsets(&from(&b, &stream, &epoch, 1).await),
        vec![2, 3, 4, 5]
    );
}

/// Another epoch, an offset above the latest, an unknown stream:
/// [`BrokerError::HistoryNotFound`].
pub async fn history_from_refuses_what_it_cannot_serve<C: BrokerConformance>() {
    let Some(c) = C::setup().await else { return };
    let b = c.broker();
    let stream = format!("{}:chat", unique_prefix());
    let mut epoch = String::new();
    for _ in 0..3 {
        epoch = append(&b, &stream, "{}", HistoryPolicy::default())
            .await
            .epoch;
    }
    not_found(&b, &stream, &format!("{epoch}x"), 2, "another epoch").await;
    not_found(&b, &stream, "", 2, "empty epoch").await;
    not_found(&b, &stream, &epoch, 4, "above the latest").await;
    not_found(&b, &stream, &epoch, u64::MAX, "far above the latest").await;
    not_found(
        &b,
        &format!("{stream}:unknown"),
        &epoch,
        1,
        "unknown stream",
    )
    .await;
    // Refusals change nothing.
    assert_eq!(offsets(&from(&b, &stream, &epoch, 1).await), vec![2, 3]);
}

/// `history_since`: the entries appended at or after a Unix second, oldest
/// first; none (and no error) after the latest or for an unknown stream.
pub async fn history_since_a_timestamp<C: BrokerConformance>() {
    let Some(c) = C::setup().await else { return };
    let b = c.broker();
    let stream = format!("{}:chat", unique_prefix());
    let p = append(&b, &stream, r#"{"n":1}"#, HistoryPolicy::default()).await;
    // The next entries fall in a later second than the first.
    let first_ts = since(&b, &stream, 0).await.entries[0].timestamp;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        append(&b, &stream, r#"{"n":2}"#, HistoryPolicy::default()).await;
        let all = since(&b, &stream, 0).await;
        if all.entries.last().is_some_and(|e| e.timestamp > first_ts) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backend's clock stands still"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    append(&b, &stream, r#"{"n":3}"#, HistoryPolicy::default()).await;
    let all = since(&b, &stream, 0).await;
    assert_eq!(all.epoch, p.epoch);
    let n = all.entries.len() as u64;
    assert_eq!(offsets(&all), (1..=n).collect::<Vec<_>>());
    let later = since(&b, &stream, first_ts + 1).await;
    assert_eq!(later.epoch, p.epoch);
    let want: Vec<u64> = all
        .entries
        .iter()
        .filter(|e| e.timestamp > first_ts)
        .map(|e| e.offset)
        .collect();
    assert!(!want.is_empty() && !want.contains(&1), "{all:?}");
    assert_eq!(offsets(&later), want);
    assert_eq!(
        later.entries.last().map(|e| e.payload.as_str()),
        Some(r#"{"n":3}"#)
    );
    assert_eq!(offsets(&since(&b, &stream, first_ts).await), offsets(&all));
    let future = since(&b, &stream, now_s() + 3600).await;
    assert!(future.entries.is_empty(), "{future:?}");
    let unknown = since(&b, &format!("{stream}:unknown"), 0).await;
    assert!(unknown.entries.is_empty(), "{unknown:?}");
}

/// At most `limit` entries are kept, the oldest evicted; an offset older
/// than the oldest kept is refused.
pub async fn limit_evicts_the_oldest<C: BrokerConformance>() {
    let Some(c) = C::setup().await else { return };
    let (a, b) = (c.broker(), c.broker());
    let stream = format!("{}:chat", unique_prefix());
    let p3 = policy(3, 60_000);
    let mut epoch = String::new();
    for n in 1..=7 {
        let node = if n % 2 == 0 { &a } else { &b };
        epoch = append(node, &stream, &format!(r#"{{"n":{n}}}"#), p3)
            .await
            .epoch;
    }
    let all = since(&a, &stream, 0).await;
    assert_eq!(offsets(&all), vec![5, 6, 7]);
    assert_eq!(
        payloads(&all),
        vec![r#"{"n":5}"#, r#"{"n":6}"#, r#"{"n":7}"#]
    );
    assert_eq!(offsets(&from(&b, &stream, &epoch, 5).await), vec![6, 7]);
    not_found(&a, &stream, &epoch, 4, "just before the oldest kept").await;
    not_found(&b, &stream, &epoch, 1, "evicted").await;
    // The count goes on: eviction is no new epoch.
    let p = append(&a, &stream, "{}", p3).await;
    assert_eq!(p, Position { epoch, offset: 8 });
}

/// With no append for `ttl`, the stream's history is gone and the next
/// append starts a new epoch at offset 1.
pub async fn ttl_expires_the_stream_and_starts_a_new_epoch<C: BrokerConformance>() {
    let Some(c) = C::setup().await else { return };
    let b = c.broker();
    let stream = format!("{}:chat", unique_prefix());
    let short = policy(100, 1000);
    append(&b, &stream, r#"{"n":1}"#, short).await;
    let old = append(&b, &stream, r#"{"n":2}"#, short).await;
    assert_eq!(offsets(&from(&b, &stream, &old.epoch, 1).await), vec![2]);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let gone = since(&b, &stream, 0).await;
    assert!(gone.entries.is_empty(), "{gone:?}");
    not_found(&b, &stream, &old.epoch, 1, "expired").await;
    let new = append(&b, &stream, r#"{"n":3}"#, short).await;
    assert_eq!(new.offset, 1);
    assert_ne!(new.epoch, old.epoch);
    not_found(&b, &stream, &old.epoch, 2, "the old epoch").await;
    let h = since(&b, &stream, 0).await;
    assert_eq!(
        (h.epoch.as_str(), payloads(&h)),
        (new.epoch.as_str(), vec![r#"{"n":3}"#])
    );
}

/// Entries older than the TTL are not served while the stream lives on.
pub async fn entries_older_than_the_ttl_are_not_served<C: BrokerConformance>() {
    let Some(c) = C::setup().await else { return };
    let b = c.broker();
    let stream = format!("{}:chat", unique_prefix());
    let ttl = policy(100, 2000);
    let first = append(&b, &stream, r#"{"n":1}"#, ttl).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    append(&b, &stream, r#"{"n":2}"#, ttl).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // Entry 1 is 2.6 s old, entry 2 1.3 s.
    let h = since(&b, &stream, 0).await;
    assert_eq!(payloads(&h), vec![r#"{"n":2}"#], "{h:?}");
    assert_eq!(h.epoch, first.epoch);
    not_found(&b, &stream, &first.epoch, 1, "an expired entry").await;
    assert!(from(&b, &stream, &first.epoch, 2).await.entries.is_empty());
    let p = append(&b, &stream, r#"{"n":3}"#, ttl).await;
    assert_eq!(
        p,
        Position {
            epoch: first.epoch.clone(),
            offset: 3
        }
    );
    assert_eq!(offsets(&from(&b, &stream, &first.epoch, 2).await), vec![3]);
}

/// History lost on the backend (a restart without persistence): the next
/// append starts a new epoch at 1, old positions are refused, and positions
/// never repeat within the new epoch.
pub async fn lost_history_starts_a_new_epoch<C: BrokerConformance>() {
    let Some(c) = C::setup().await else { return };
    let (a, b) = (c.broker(), c.broker());
    let stream = format!("{}:chat", unique_prefix());
    for _ in 0..3 {
        append(&a, &stream, "{}", HistoryPolicy::default()).await;
    }
    let old = append(&b, &stream, "{}", HistoryPolicy::default()).await;
    assert_eq!(old.offset, 4);
    c.lose_history(&stream).await;
    not_found(&a, &stream, &old.epoch, 2, "lost").await;
    let new = append(&b, &stream, r#"{"after":1}"#, HistoryPolicy::default()).await;
    assert_eq!(new.offset, 1);
    assert_ne!(new.epoch, old.epoch);
    let next = append(&a, &stream, r#"{"after":2}"#, HistoryPolicy::default()).await;
    assert_eq!(
        next,
        Position {
            epoch: new.epoch.clone(),
            offset: 2
        }
    );
    not_found(&a, &stream, &old.epoch, 1, "the old epoch").await;
    let h = from(&b, &stream, &new.epoch, 1).await;
    assert_eq!(payloads(&h), vec![r#"{"after":2}"#]);
}

/// Sessions: stored, replaced, fetched by any node, removed.
pub async fn sessions_are_stored_replaced_and_removed<C: BrokerConformance>() {
    let Some(c) = C::setup().await else { return };
    let (a, b) = (c.broker(), c.broker());
    let sid = format!("{}-sid", unique_prefix());
    let ttl = Duration::from_secs(60);
    assert_eq!(a.fetch_session(&sid).await, Ok(None));
    let state = r#"{"ids":"{\"user\":\"ann\"}","subs":{"x":["chat_1"]}}"#;
    a.store_session(&sid, state, ttl).await.expect("store");
    assert_eq!(b.fetch_session(&sid).await, Ok(Some(state.to_owned())));
    b.store_session(&sid, "second", ttl).await.expect("replace");
    assert_eq!(a.fetch_session(&sid).await, Ok(Some("second".to_owned())));
    // Fetching does not consume it.
    assert_eq!(a.fetch_session(&sid).await, Ok(Some("second".to_owned())));
    let other = format!("{sid}-other");
    a.store_session(&other, "other", ttl).await.expect("store");
    b.remove_session(&sid).await.expect("remove");
    assert_eq!(a.fetch_session(&sid).await, Ok(None));
    assert_eq!(a.fetch_session(&other).await, Ok(Some("other".to_owned())));
    // Removing what is not there is no error.
    b.remove_session(&sid).await.expect("remove again");
}

/// A session is gone after its TTL; storing it again renews it.
pub async fn sessions_expire<C: BrokerConformance>() {
    let Some(c) = C::setup().await else { return };
    let b = c.broker();
    let (short, long) = (
        format!("{}-short", unique_prefix()),
        format!("{}-long", unique_prefix()),
    );
    b.store_session(&short, "s", Duration::from_millis(1000))
        .await
        .expect("store");
    b.store_session(&long, "l", Duration::from_secs(60))
        .await
        .expect("store");
    assert_eq!(b.fetch_session(&short).await, Ok(Some("s".to_owned())));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(b.fetch_session(&short).await, Ok(None));
    assert_eq!(b.fetch_session(&long).await, Ok(Some("l".to_owned())));
    b.store_session(&short, "again", Duration::from_secs(60))
        .await
        .expect("store again");
    assert_eq!(b.fetch_session(&short).await, Ok(Some("again".to_owned())));
}

/// `enable_history` marks a stream with its policy for the policy's TTL,
/// seen by every node, renewed by each call.
pub async fn history_marks_expire<C: BrokerConformance>() {
    let Some(c) = C::setup().await else { return };
    let (a, b) = (c.broker(), c.broker());
    let stream = format!("{}:chat", unique_prefix());
    assert_eq!(a.history_policy(&stream).await, Ok(None));
    let p = policy(7, 1500);
    a.enable_history(&stream, p).await.expect("enable");
    assert_eq!(b.history_policy(&stream).await, Ok(Some(p)));
    tokio::time::sleep(Duration::from_millis(900)).await;
    b.enable_history(&stream, p).await.expect("renew");
    tokio::time::sleep(Duration::from_millis(900)).await;
    // 1.8 s after the first call, 0.9 s after the renewal.
    assert_eq!(a.history_policy(&stream).await, Ok(Some(p)));
    let changed = policy(9, 1000);
    a.enable_history(&stream, changed).await.expect("change");
    assert_eq!(b.history_policy(&stream).await, Ok(Some(changed)));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(a.history_policy(&stream).await, Ok(None));
    assert_eq!(b.history_policy(&format!("{stream}:other")).await, Ok(None));
}

/// 50 concurrent appends from each of two nodes: 100 distinct offsets
/// 1..=100 in one epoch, and the history holds each payload at its offset.
pub async fn concurrent_appends_from_two_nodes<C: BrokerConformance>() {
    let Some(c) = C::setup().await else { return };
    let nodes = [Arc::new(c.broker()), Arc::new(c.broker())];
    let stream = format!("{}:chat", unique_prefix());
    let mut tasks = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for n in 0..50 {
            let (node, stream) = (node.clone(), stream.clone());
            tasks.push(tokio::spawn(async move {
                let payload = format!(r#"{{"node":{i},"n":{n}}}"#);
                let p = append(&*node, &stream, &payload, HistoryPolicy::default()).await;
                (p, payload)
            }));
        }
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("append task"));
    }
    let epochs: BTreeSet<&str> = results.iter().map(|(p, _)| p.epoch.as_str()).collect();
    assert_eq!(epochs.len(), 1, "{epochs:?}");
    let got: BTreeSet<u64> = results.iter().map(|(p, _)| p.offset).collect();
    assert_eq!(got, (1..=100).collect::<BTreeSet<_>>());
    results.sort_by_key(|(p, _)| p.offset);
    let h = since(&*nodes[0], &stream, 0).await;
    assert_eq!(offsets(&h), (1..=100).collect::<Vec<_>>());
    let want: Vec<&str> = results
        .iter()
        .map(|(_, payload)| payload.as_str())
        .collect();
    assert_eq!(payloads(&h), want);
}

/// Payloads come back byte for byte: quotes, backslashes, non-ASCII,
/// newlines, 256 KiB.
pub async fn payloads_come_back_exactly<C: BrokerConformance>() {
    let Some(c) = C::setup().await else { return };
    let b = c.broker();
    let stream = format!("{}:chat/ünï \"quoted\" 'x'", unique_prefix());
    let tricky = [
        r#"{"body":"say \"hi\"\\ \u0000 'ok'"}"#.to_owned(),
        "{\"body\":\"héllo ✓ 🎉\\n\",\"raw\":\"line\nbreak\"}".to_owned(),
        format!(r#"{{"big":"{}"}}"#, "x".repeat(256 << 10)),
        String::new(),
    ];
    for t in &tricky {
        append(&b, &stream, t, HistoryPolicy::default()).await;
    }
    let h = since(&b, &stream, 0).await;
    assert_eq!(
        payloads(&h),
        tricky.iter().map(String::as_str).collect::<Vec<_>>()
    );
    let sid = format!("{}-sid ü", unique_prefix());
    b.store_session(&sid, &tricky[1], Duration::from_secs(60))
        .await
        .expect("store");
    assert_eq!(b.fetch_session(&sid).await, Ok(Some(tricky[1].clone())));
}

/// Limits, TTLs and times at the ends of their types are taken (capped
/// where the backend must), not refused.
pub async fn extreme_arguments_are_no_errors<C: BrokerConformance>() {
    let Some(c) = C::setup().await else { return };
    let b = c.broker();
    let stream = format!("{}:chat", unique_prefix());
    let huge = HistoryPolicy {
        limit: usize::MAX,
        ttl: Duration::MAX,
    };
    let p = append(&b, &stream, "{}", huge).await;
    assert_eq!(p.offset, 1);
    assert_eq!(append(&b, &stream, "{}", huge).await.offset, 2);
    assert_eq!(offsets(&from(&b, &stream, &p.epoch, 1).await), vec![2]);
    assert!(since(&b, &stream, u64::MAX).await.entries.is_empty());
    assert_eq!(since(&b, &stream, 0).await.entries.len(), 2);
    b.enable_history(&stream, huge).await.expect("enable");
    let kept = b.history_policy(&stream).await.expect("policy");
    assert!(
        kept.is_some_and(|k| k.ttl >= Duration::from_secs(3600)),
        "{kept:?}"
    );
    let sid = format!("{}-sid", unique_prefix());
    b.store_session(&sid, "s", Duration::MAX)
        .await
        .expect("store");
    assert_eq!(b.fetch_session(&sid).await, Ok(Some("s".to_owned())));
    b.remove_session(&sid).await.expect("remove");
}

/// Against a backend that is not there, every call fails with
/// [`BrokerError::Unavailable`] within 3 s, repeatedly, and nothing panics.
pub async fn unreachable_backend_fails_promptly<C: BrokerConformance>() {
    let Some(c) = C::setup().await else { return };
    let Some(b) = c.unreachable() else { return };
    for _ in 0..2 {
        let started = Instant::now();
        let results = [
            b.append("s", "{}", HistoryPolicy::default()).await.err(),
            b.history_from("s", "e", 1).await.err(),
            b.history_since("s", 0).await.err(),
            b.enable_history("s", HistoryPolicy::default()).await.err(),
            b.history_policy("s").await.err(),
            b.store_session("sid", "{}", Duration::from_secs(1))
                .await
                .err(),
            b.fetch_session("sid").await.err(),
            b.remove_session("sid").await.err(),
        ];
        let presence = if b.supports_presence() {
            vec![
                b.presence_join(member("s", "sid", "id", "{}", Duration::from_secs(1)))
                    .await
                    .err(),
                b.presence_leave("s", "sid").await.err(),
                b.presence_info("s").await.err(),
                b.presence_touch(&["sid".to_owned()], Duration::from_secs(1))
                    .await
                    .err(),
                b.presence_expire().await.err(),
            ]
        } else {
            Vec::new()
        };
        let results = results.into_iter().chain(presence);
        for r in results {
            assert!(matches!(r, Some(BrokerError::Unavailable(_))), "{r:?}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the calls took {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// The presence properties that sweep ([`Broker::presence_expire`]) take
/// turns: a sweep removes every session that ran out on the backend, so
/// two of these tests sweeping at once would take each other's leaves.
static SWEEPS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn join(
    b: &impl Broker,
    stream: &str,
    sid: &str,
    id: &str,
    info: &str,
    ttl: Duration,
) -> bool {
    b.presence_join(member(stream, sid, id, info, ttl))
        .await
        .unwrap_or_else(|e| panic!("presence_join({stream}, {sid}, {id}): {e}"))
}

/// A [`Join`] from its parts, in the order the tests read them.
pub fn member<'a>(
    stream: &'a str,
    sid: &'a str,
    id: &'a str,
    info: &'a str,
    ttl: Duration,
) -> Join<'a> {
    Join {
        stream,
        sid,
        id,
        info,
        ttl,
    }
}

async fn leave(b: &impl Broker, stream: &str, sid: &str) -> Option<String> {
    b.presence_leave(stream, sid)
        .await
        .unwrap_or_else(|e| panic!("presence_leave({stream}, {sid}): {e}"))
}

/// `(id, info)` of each member of `stream`, oldest first, checking `total`.
async fn members(b: &impl Broker, stream: &str) -> Vec<(String, String)> {
    let info = b
        .presence_info(stream)
        .await
        .unwrap_or_else(|e| panic!("presence_info({stream}): {e}"));
    assert_eq!(info.total, info.records.len(), "{info:?}");
    info.records.into_iter().map(|r| (r.id, r.info)).collect()
}

fn pairs(want: &[(&str, &str)]) -> Vec<(String, String)> {
    want.iter()
        .map(|(id, info)| (id.to_string(), info.to_string()))
        .collect()
}

/// The leaves of one sweep on `stream`s named with `prefix` (a sweep
/// returns those of every stream on the backend), as `(stream, id)`.
async fn expired(b: &impl Broker, prefix: &str) -> Vec<(String, String)> {
    let left = b
        .presence_expire()
        .await
        .unwrap_or_else(|e| panic!("presence_expire: {e}"));
    left.into_iter()
        .filter(|l| l.stream.starts_with(prefix))
        .map(|l| (l.stream, l.id))
        .collect()
}

const MINUTE: Duration = Duration::from_secs(60);

/// A broker without presence says so, and every presence call answers
/// [`BrokerError::Unsupported`] (the server then serves no presence API and
/// refuses `join`), without touching the backend.
pub async fn presence_is_unsupported<C: BrokerConformance>() {
    let Some(c) = C::setup().await else { return };
    let b = c.broker();
    assert!(!b.supports_presence(), "{} keeps no presence", b.name());
    let results = [
        b.presence_join(member("s", "sid", "id", "{}", MINUTE))
            .await
            .err(),
        b.presence_leave("s", "sid").await.err(),
        b.presence_info("s").await.err(),
        b.presence_touch(&["sid".to_owned()], MINUTE).await.err(),
        b.presence_expire().await.err(),
    ];
    for r in results {
        assert!(
            matches!(
                r,
                Some(BrokerError::Unsupported {
                    what: "presence",
                    ..
                })
            ),
            "{r:?}"
        );
    }
}

/// Join, leave and info: the first session of an id joins (true), a
/// rejoin changes the info and keeps the place, leaving returns the id
/// once, members come oldest first, streams are apart, and every
/// presence broker says it keeps presence.
pub async fn presence_join_leave_info<C: BrokerConformance>() {
    let Some(c) = C::setup().await else { return };
    let b = c.broker();
    assert!(b.supports_presence(), "{} keeps presence", b.name());
    let p = unique_prefix();
    let sid = |n: &str| format!("{p}-{n}");
    let (stream, other) = (format!("{p}:room"), format!("{p}:other"));
    assert_eq!(members(&b, &stream).await, pairs(&[]));
    assert!(join(&b, &stream, &sid("s1"), "ann", r#"{"name":"Ann"}"#, MINUTE).await);
    assert!(join(&b, &stream, &sid("s2"), "bob", r#"{"name":"Bob"}"#, MINUTE).await);
    assert!(join(&b, &stream, &sid("s3"), "cy", "{}", MINUTE).await);
    assert_eq!(
        members(&b, &stream).await,
        pairs(&[
            ("ann", r#"{"name":"Ann"}"#),
            ("bob", r#"{"name":"Bob"}"#),
            ("cy", "{}")
        ])
    );
    // Joining again as the same id: not a new member, the latest info wins.
    assert!(
        !join(
            &b,
            &stream,
            &sid("s1"),
            "ann",
            r#"{"name":"Ann B."}"#,
            MINUTE
        )
        .await
    );
    assert_eq!(
        members(&b, &stream).await,
        pairs(&[
            ("ann", r#"{"name":"Ann B."}"#),
            ("bob", r#"{"name":"Bob"}"#),
            ("cy", "{}")
        ])
    );
    assert_eq!(members(&b, &other).await, pairs(&[]));
    assert_eq!(leave(&b, &stream, &sid("s2")).await.as_deref(), Some("bob"));
    assert_eq!(leave(&b, &stream, &sid("s2")).await, None, "left already");
    assert_eq!(leave(&b, &stream, &sid("nobody")).await, None);
    assert_eq!(
        leave(&b, &other, &sid("s1")).await,
        None,
        "s1 is not on the other stream"
    );
    // A member that comes back is the newest.
    assert!(join(&b, &stream, &sid("s2"), "bob", "{}", MINUTE).await);
    assert_eq!(
        members(&b, &stream).await,
        pairs(&[("ann", r#"{"name":"Ann B."}"#), ("cy", "{}"), ("bob", "{}")])
    );
    for n in ["s1", "s2", "s3"] {
        assert!(leave(&b, &stream, &sid(n)).await.is_some(), "{n}");
    }
    assert_eq!(members(&b, &stream).await, pairs(&[]));
}

/// One id per session per stream: joining as another id is
/// [`BrokerError::PresenceIdMismatch`] and changes nothing, on any node;
/// the same session may be another id on another stream.
pub async fn presence_id_mismatch<C: BrokerConformance>() {
    let Some(c) = C::setup().await else { return };
    let (a, b) = (c.broker(), c.broker());
    let p = unique_prefix();
    let sid = |n: &str| format!("{p}-{n}");
    let (stream, other) = (format!("{p}:room"), format!("{p}:other"));
    assert!(join(&a, &stream, &sid("s1"), "ann", "{}", MINUTE).await);
    for node in [&a, &b] {
        assert_eq!(
            node.presence_join(member(&stream, &sid("s1"), "bob", "{}", MINUTE))
                .await,
            Err(BrokerError::PresenceIdMismatch)
        );
    }
    assert_eq!(members(&b, &stream).await, pairs(&[("ann", "{}")]));
    assert!(join(&b, &other, &sid("s1"), "bob", "{}", MINUTE).await);
    assert_eq!(members(&a, &other).await, pairs(&[("bob", "{}")]));
    assert_eq!(leave(&b, &stream, &sid("s1")).await.as_deref(), Some("ann"));
    // Once it left, the session may come back as anyone.
    assert!(join(&a, &stream, &sid("s1"), "bob", "{}", MINUTE).await);
    assert_eq!(members(&a, &stream).await, pairs(&[("bob", "{}")]));
}

/// Two sessions of one id (two tabs, two nodes): one member; it joins with
/// the first and leaves with the last.
pub async fn presence_two_sessions_of_one_id<C: BrokerConformance>() {
    let Some(c) = C::setup().await else { return };
    let (a, b) = (c.broker(), c.broker());
    let p = unique_prefix();
    let sid = |n: &str| format!("{p}-{n}");
    let stream = format!("{p}:room");
    assert!(join(&a, &stream, &sid("tab1"), "ann", r#"{"tab":1}"#, MINUTE).await);
    assert!(!join(&b, &stream, &sid("tab2"), "ann", r#"{"tab":2}"#, MINUTE).await);
    assert_eq!(
        members(&a, &stream).await,
        pairs(&[("ann", r#"{"tab":2}"#)])
    );
    assert_eq!(leave(&a, &stream, &sid("tab1")).await, None, "tab2 stays");
    assert_eq!(
        members(&b, &stream).await,
        pairs(&[("ann", r#"{"tab":2}"#)])
    );
    assert_eq!(
        leave(&a, &stream, &sid("tab2")).await.as_deref(),
        Some("ann")
    );
    assert_eq!(members(&b, &stream).await, pairs(&[]));
}

/// What one node writes, every node sees: a join on one is in the other's
/// info, a session joined on one is renewed and removed by the other.
pub async fn presence_is_shared_by_nodes<C: BrokerConformance>() {
    let Some(c) = C::setup().await else { return };
    let (a, b) = (c.broker(), c.broker());
    let p = unique_prefix();
    let sid = |n: &str| format!("{p}-{n}");
    let stream = format!("{p}:room");
    assert!(join(&a, &stream, &sid("s1"), "ann", r#"{"on":"a"}"#, MINUTE).await);
    assert_eq!(
        members(&b, &stream).await,
        pairs(&[("ann", r#"{"on":"a"}"#)])
    );
    assert!(join(&b, &stream, &sid("s2"), "bob", r#"{"on":"b"}"#, MINUTE).await);
    assert_eq!(members(&a, &stream).await, members(&b, &stream).await);
    b.presence_touch(&[sid("s1")], MINUTE)
        .await
        .expect("touch from the other node");
    assert_eq!(leave(&b, &stream, &sid("s1")).await.as_deref(), Some("ann"));
    assert_eq!(
        members(&a, &stream).await,
        pairs(&[("bob", r#"{"on":"b"}"#)])
    );
    assert_eq!(leave(&a, &stream, &sid("s2")).await.as_deref(), Some("bob"));
}

/// A session not renewed within its TTL is removed by the sweep, with a
/// leave for each member it was the last session of (on every stream it
/// was on); one renewed by `presence_touch` stays. Sweeping again reports
/// nothing, and a touch brings nothing swept back.
pub async fn presence_expires_unless_touched<C: BrokerConformance>() {
    let Some(c) = C::setup().await else { return };
    let _turn = SWEEPS.lock().await;
    let (a, b) = (c.broker(), c.broker());
    let p = unique_prefix();
    let (room, lobby) = (format!("{p}:room"), format!("{p}:lobby"));
    let ttl = Duration::from_millis(1000);
    let kept = format!("{p}-kept");
    let gone = format!("{p}-gone");
    let second = format!("{p}-second");
    assert!(join(&a, &room, &kept, "ann", "{}", ttl).await);
    assert!(join(&a, &room, &gone, "bob", "{}", ttl).await);
    assert!(join(&a, &lobby, &gone, "bob", "{}", ttl).await);
    // Bob's second session on the lobby is renewed: bob stays there.
    assert!(!join(&b, &lobby, &second, "bob", "{}", ttl).await);
    assert_eq!(expired(&a, &p).await, vec![], "nothing ran out yet");
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        a.presence_touch(std::slice::from_ref(&kept), ttl)
            .await
            .expect("touch");
        b.presence_touch(&[second.clone(), format!("{p}-unknown")], ttl)
            .await
            .expect("touch");
    }
    // 1.6 s since the joins: `gone` ran out, the others were renewed.
    let mut left = expired(&b, &p).await;
    left.extend(expired(&a, &p).await);
    assert_eq!(left, vec![(room.clone(), "bob".to_owned())]);
    assert_eq!(members(&a, &room).await, pairs(&[("ann", "{}")]));
    assert_eq!(members(&b, &lobby).await, pairs(&[("bob", "{}")]));
    a.presence_touch(std::slice::from_ref(&gone), MINUTE)
        .await
        .expect("touch");
    assert_eq!(leave(&a, &room, &gone).await, None, "swept already");
    assert_eq!(members(&a, &room).await, pairs(&[("ann", "{}")]));
    // Nothing renewed any more: the rest runs out.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let mut left = expired(&a, &p).await;
    left.sort();
    assert_eq!(
        left,
        vec![
            (lobby.clone(), "bob".to_owned()),
            (room.clone(), "ann".to_owned())
        ]
    );
    assert_eq!(members(&b, &room).await, pairs(&[]));
    assert_eq!(members(&b, &lobby).await, pairs(&[]));
    assert_eq!(expired(&b, &p).await, vec![]);
    a.presence_touch(&[], ttl).await.expect("an empty touch");
}

/// Two nodes sweeping at once, again and again: every member that ran out
/// is reported exactly once in all, also ids with sessions on both nodes.
pub async fn presence_expire_reports_each_leave_once<C: BrokerConformance>() {
    let Some(c) = C::setup().await else { return };
    let _turn = SWEEPS.lock().await;
    let nodes = [Arc::new(c.broker()), Arc::new(c.broker())];
    let p = unique_prefix();
    let ttl = Duration::from_millis(800);
    let mut want = Vec::new();
    for s in 0..3 {
        let stream = format!("{p}:room{s}");
        for n in 0..10 {
            let id = format!("user{n}");
            // Every id has a session on each node; half of them two on one.
            for (i, node) in nodes.iter().enumerate() {
                join(
                    &**node,
                    &stream,
                    &format!("{p}-{s}-{n}-{i}"),
                    &id,
                    "{}",
                    ttl,
                )
                .await;
            }
            if n % 2 == 0 {
                join(
                    &*nodes[0],
                    &stream,
                    &format!("{p}-{s}-{n}-x"),
                    &id,
                    "{}",
                    ttl,
                )
                .await;
            }
            want.push((stream.clone(), id));
        }
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut sweeps = Vec::new();
    for round in 0..4 {
        for node in &nodes {
            let (node, p) = (node.clone(), p.clone());
            sweeps.push(tokio::spawn(async move {
                if round > 0 {
                    tokio::task::yield_now().await;
                }
                expired(&*node, &p).await
            }));
        }
    }
    let mut left = Vec::new();
    for s in sweeps {
        left.extend(s.await.expect("sweep task"));
    }
    left.sort();
    want.sort();
    assert_eq!(left, want, "each leave exactly once");
    for s in 0..3 {
        assert_eq!(
            members(&*nodes[1], &format!("{p}:room{s}")).await,
            pairs(&[])
        );
    }
}
