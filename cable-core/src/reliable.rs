//! Reliable streams on the publishing side: which streams keep history,
//! appending to the broker, and the figures of history and sessions.
//!
//! A stream keeps history when the settings say every stream does
//! ([`CableConfig::history_all_streams`](crate::CableConfig::history_all_streams)),
//! when a channel on this node streams from it with history (a local mark),
//! or when the broker holds a mark for it ([`Broker::history_policy`], set by
//! a channel on any node). The broker's answer is cached for about a second
//! per stream, so a stream without history costs a map lookup on its
//! broadcast path and at most one broker call a second.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::broker::{Broker, HistoryPolicy, Position};

/// How long the broker's answer about a stream's mark is trusted.
const MARK_CACHE_FOR: Duration = Duration::from_secs(1);
/// Past this many cached answers, stale ones are dropped on insert.
const MARK_CACHE_PRUNE_AT: usize = 4096;

#[derive(Default)]
pub(crate) struct ReliableCounters {
    pub(crate) appends: AtomicU64,
    pub(crate) append_failures: AtomicU64,
    pub(crate) history_reads: AtomicU64,
    pub(crate) history_misses: AtomicU64,
    pub(crate) restored_sessions: AtomicU64,
}

pub(crate) struct Reliable {
    pub(crate) broker: Option<Arc<dyn Broker>>,
    all_streams: bool,
    pub(crate) default_policy: HistoryPolicy,
    /// Streams a channel on this node streams from with history, with the
    /// policy and when the mark runs out (renewed while subscribed).
    local: Mutex<HashMap<String, (HistoryPolicy, Instant)>>,
    /// The broker's marks as last read, and when.
    cache: Mutex<HashMap<String, (Option<HistoryPolicy>, Instant)>>,
    pub(crate) counters: ReliableCounters,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Reliable {
    pub(crate) fn new(
        broker: Option<Arc<dyn Broker>>,
        all_streams: bool,
        default_policy: HistoryPolicy,
    ) -> Self {
        Reliable {
            broker,
            all_streams,
            default_policy,
            local: Mutex::new(HashMap::new()),
            cache: Mutex::new(HashMap::new()),
            counters: ReliableCounters::default(),
        }
    }

    /// The history policy of `stream`, or `None` when it keeps no history.
    pub(crate) async fn policy_for(&self, stream: &str) -> Option<HistoryPolicy> {
        let broker = self.broker.as_ref()?;
        if self.all_streams {
            return Some(self.default_policy);
        }
        let now = Instant::now();
        if let Some((policy, until)) = lock(&self.local).get(stream) {
            if *until > now {
                return Some(*policy);
            }
        }
        if let Some((policy, at)) = lock(&self.cache).get(stream) {
            if now.saturating_duration_since(*at) < MARK_CACHE_FOR {
                return *policy;
            }
        }
        let policy = match broker.history_policy(stream).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(stream, error = %e, "could not read the history mark of {stream:?}; broadcasting without history");
                None
            }
        };
        let mut cache = lock(&self.cache);
        if cache.len() >= MARK_CACHE_PRUNE_AT {
            cache.retain(|_, (_, at)| now.saturating_duration_since(*at) < MARK_CACHE_FOR);
        }
        cache.insert(stream.to_owned(), (policy, now));
        policy
    }

    /// Appends a broadcast of a stream with history. `None` (logged) when
    /// the broker fails: the broadcast then goes out live without a
    /// position rather than not at all.
    pub(crate) async fn append(
        &self,
        stream: &str,
        payload: &str,
        policy: HistoryPolicy,
    ) -> Option<Position> {
        use std::sync::atomic::Ordering::Relaxed;
        let broker = self.broker.as_ref()?;
        match broker.append(stream, payload, policy).await {
            Ok(p) => {
                self.counters.appends.fetch_add(1, Relaxed);
                Some(p)
            }
            Err(e) => {
                self.counters.append_failures.fetch_add(1, Relaxed);
                tracing::warn!(stream, error = %e, "could not append a broadcast on {stream:?} to the {} broker; delivered live without a position", broker.name());
                None
            }
        }
    }

    /// Marks `stream` as keeping history under `policy` on this node now,
    /// and returns the broker call that marks it for every node (`None`
    /// without a broker). Its failure is logged, not returned: live
    /// delivery does not depend on it.
    pub(crate) fn mark(
        &self,
        stream: &str,
        policy: HistoryPolicy,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let broker = self.broker.clone()?;
        lock(&self.local).insert(
            stream.to_owned(),
            (policy, later(Instant::now(), policy.ttl)),
        );
        let stream = stream.to_owned();
        Some(async move {
            if let Err(e) = broker.enable_history(&stream, policy).await {
                tracing::warn!(stream = %stream, error = %e, "could not mark {stream:?} as keeping history in the {} broker; broadcasts from other nodes may go without history", broker.name());
            }
        })
    }

    /// Renews the marks that are half run out and still have a local
    /// subscriber (`subscribed`); forgets the others once they ran out.
    /// Called from the heartbeat.
    pub(crate) fn renew(&self, subscribed: impl Fn(&str) -> bool) {
        let Some(broker) = self.broker.clone() else {
            return;
        };
        let now = Instant::now();
        let mut due = Vec::new();
        lock(&self.local).retain(|stream, (policy, until)| {
            if until.saturating_duration_since(now) > policy.ttl / 2 {
                return true;
            }
            if subscribed(stream) {
                *until = later(now, policy.ttl);
                due.push((stream.clone(), *policy));
                return true;
            }
            *until > now
        });
        if due.is_empty() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for (stream, policy) in due {
                    if let Err(e) = broker.enable_history(&stream, policy).await {
                        tracing::warn!(stream = %stream, error = %e, "could not renew the history mark of {stream:?}");
                    }
                }
            });
        }
    }
}

/// `now + d` on tokio's clock, for durations that come from settings or
/// channel code: one too long for the clock (`Duration::MAX`, say) means
/// "for ever" (a century), never a panic.
pub(crate) fn later(now: Instant, d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(d.min(CENTURY)).unwrap_or(now)
}
