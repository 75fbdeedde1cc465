//! The embedded broker: history and sessions in this process's memory.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::time::Instant;

use super::{
    Broker, BrokerError, Entry, History, HistoryPolicy, Join, MemoryPresence, Position,
    PresenceInfo, PresenceLeft,
};

/// How often, at most, a call sweeps every stream, mark and session for
/// what has run out (AnyCable's memory broker expires once a second too).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The default [`Broker`]: a ring of entries per stream, sessions and
/// history marks, all in this process's memory. Single node only: other
/// processes do not see its history or sessions (use a shared backend's
/// broker for several nodes).
///
/// - Each stream keeps at most `limit` entries, none older than `ttl`
///   (the policy of its latest append).
/// - Epochs: one random string per broker (so per process start), plus a
///   counter for each time a stream's history starts anew in it. A stream
///   whose every entry expired is forgotten; its next append starts a new
///   epoch at offset 1, so an old position is answered with
///   [`BrokerError::HistoryNotFound`], never with a silent gap.
/// - Time comes from tokio's clock (`tokio::time::Instant`, paused in
///   tests), and timestamps are the Unix time at the broker's creation plus
///   the tokio time elapsed since, so `since` and TTLs move together under a
///   paused clock.
///
/// Clones share one store, as nodes of one process sharing a backend would
/// (`Cable`s in a test, say).
#[derive(Clone, Debug)]
pub struct MemoryBroker {
    state: Arc<Mutex<State>>,
    epoch: Arc<str>,
    started: Instant,
    started_unix: u64,
    presence: MemoryPresence,
}

#[derive(Debug, Default)]
struct State {
    streams: HashMap<String, Kept>,
    marks: Expiring<HistoryPolicy>,
    sessions: Expiring<String>,
    incarnations: u64,
    last_sweep: Option<Instant>,
}

/// Values by key, each until its deadline.
#[derive(Debug)]
struct Expiring<T>(HashMap<String, (T, Instant)>);

impl<T> Default for Expiring<T> {
    fn default() -> Self {
        Expiring(HashMap::new())
    }
}

impl<T> Expiring<T> {
    /// Keeps `value` under `key` for `ttl` from `now`.
    fn put(&mut self, key: &str, value: T, now: Instant, ttl: Duration) {
        let until = crate::reliable::later(now, ttl);
        self.0.insert(key.to_owned(), (value, until));
    }

    /// The value under `key` unless it ran out by `now`.
    fn get(&self, key: &str, now: Instant) -> Option<&T> {
        self.0
            .get(key)
            .filter(|(_, until)| *until > now)
            .map(|(v, _)| v)
    }

    fn sweep(&mut self, now: Instant) {
        self.0.retain(|_, (_, until)| *until > now);
    }
}

/// One stream's history.
#[derive(Debug)]
struct Kept {
    epoch: String,
    /// The offset of the latest append.
    last: u64,
    ttl: Duration,
    entries: VecDeque<(Entry, Instant)>,
}

impl Kept {
    /// Drops entries older than the stream's ttl.
    fn expire(&mut self, now: Instant) {
        while let Some((_, at)) = self.entries.front() {
            if now.saturating_duration_since(*at) >= self.ttl {
                self.entries.pop_front();
            } else {
                break;
            }
        }
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBroker {
    /// An empty broker with a fresh epoch.
    pub fn new() -> Self {
        let started_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        MemoryBroker {
            state: Arc::new(Mutex::new(State::default())),
            epoch: crate::ids::random_id(4).into(),
            started: Instant::now(),
            started_unix,
            presence: MemoryPresence::new(),
        }
    }

    /// This broker's epoch prefix (every stream's epoch starts with it).
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Forgets `stream`'s history, as its expiry or a restart of this
    /// process does: its next append starts a new epoch at offset 1.
    pub fn forget(&self, stream: &str) {
        self.lock(Instant::now()).streams.remove(stream);
    }

    fn unix_now(&self, now: Instant) -> u64 {
        self.started_unix + now.saturating_duration_since(self.started).as_secs()
    }

    /// The state, swept of what ran out when the last sweep is a second old.
    fn lock(&self, now: Instant) -> MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let due = state
            .last_sweep
            .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY);
        if due {
            state.last_sweep = Some(now);
            state.streams.retain(|_, kept| {
                kept.expire(now);
                !kept.entries.is_empty()
            });
            state.marks.sweep(now);
            state.sessions.sweep(now);
        }
        state
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn append(
        &self,
        stream: &str,
        payload: &str,
        policy: HistoryPolicy,
    ) -> Result<Position, BrokerError> {
        let now = Instant::now();
        let timestamp = self.unix_now(now);
        let mut state = self.lock(now);
        let state = &mut *state;
        let kept = state.streams.entry(stream.to_owned()).or_insert_with(|| {
            let n = state.incarnations;
            state.incarnations += 1;
            Kept {
                epoch: format!("{}{n}", self.epoch),
                last: 0,
                ttl: policy.ttl,
                entries: VecDeque::new(),
            }
        });
        kept.ttl = policy.ttl;
        kept.last += 1;
        kept.entries.push_back((
            Entry {
                offset: kept.last,
                timestamp,
                payload: payload.to_owned(),
            },
            now,
        ));
        while kept.entries.len() > policy.limit.max(1) {
            kept.entries.pop_front();
        }
        kept.expire(now);
        Ok(Position {
            epoch: kept.epoch.clone(),
            offset: kept.last,
        })
    }

    async fn history_from(
        &self,
        stream: &str,
        epoch: &str,
        offset: u64,
    ) -> Result<History, BrokerError> {
        let now = Instant::now();
        let mut state = self.lock(now);
        let Some(kept) = state.streams.get_mut(stream) else {
            return Err(BrokerError::not_found(stream, "no history kept"));
        };
        if kept.epoch != epoch {
            return Err(BrokerError::not_found(
                stream,
                format!("epoch {epoch:?} is not the current one"),
            ));
        }
        kept.expire(now);
        if offset > kept.last {
            return Err(BrokerError::not_found(
                stream,
                format!("offset {offset} is past the latest ({})", kept.last),
            ));
        }
        let oldest = kept
            .entries
            .front()
            .map_or(kept.last + 1, |(e, _)| e.offset);
        // The entry at `offset` itself must still be kept (the client's
        // last one: what follows it is then all here), unless `offset` is
        // the latest and there is nothing to send.
        if offset < oldest && offset != kept.last {
            return Err(BrokerError::not_found(
                stream,
                format!("offset {offset} was evicted (oldest kept: {oldest})"),
            ));
        }
        Ok(History {
            epoch: kept.epoch.clone(),
            entries: kept
                .entries
                .iter()
                .filter(|(e, _)| e.offset > offset)
                .map(|(e, _)| e.clone())
                .collect(),
        })
    }

    async fn history_since(&self, stream: &str, since: u64) -> Result<History, BrokerError> {
        let now = Instant::now();
        let mut state = self.lock(now);
        let Some(kept) = state.streams.get_mut(stream) else {
            return Ok(History::default());
        };
        kept.expire(now);
        Ok(History {
            epoch: kept.epoch.clone(),
            entries: kept
                .entries
                .iter()
                .filter(|(e, _)| e.timestamp >= since)
                .map(|(e, _)| e.clone())
                .collect(),
        })
    }

    async fn enable_history(&self, stream: &str, policy: HistoryPolicy) -> Result<(), BrokerError> {
        let now = Instant::now();
        self.lock(now).marks.put(stream, policy, now, policy.ttl);
        Ok(())
    }

    async fn history_policy(&self, stream: &str) -> Result<Option<HistoryPolicy>, BrokerError> {
        let now = Instant::now();
        Ok(self.lock(now).marks.get(stream, now).copied())
    }

    async fn store_session(
        &self,
        sid: &str,
        state: &str,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        let now = Instant::now();
        self.lock(now).sessions.put(sid, state.to_owned(), now, ttl);
        Ok(())
    }

    async fn fetch_session(&self, sid: &str) -> Result<Option<String>, BrokerError> {
        let now = Instant::now();
        Ok(self.lock(now).sessions.get(sid, now).cloned())
    }

    async fn remove_session(&self, sid: &str) -> Result<(), BrokerError> {
        self.lock(Instant::now()).sessions.0.remove(sid);
        Ok(())
    }

    async fn presence_join(&self, join: Join<'_>) -> Result<bool, BrokerError> {
        self.presence.join(join)
    }

    async fn presence_leave(&self, stream: &str, sid: &str) -> Result<Option<String>, BrokerError> {
        Ok(self.presence.leave(stream, sid))
    }

    async fn presence_info(&self, stream: &str) -> Result<PresenceInfo, BrokerError> {
        Ok(self.presence.info(stream))
    }

    async fn presence_touch(&self, sids: &[String], ttl: Duration) -> Result<(), BrokerError> {
        self.presence.touch(sids, ttl);
        Ok(())
    }

    async fn presence_expire(&self) -> Result<Vec<PresenceLeft>, BrokerError> {
        Ok(self.presence.expire())
    }

    fn supports_presence(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(limit: usize, ttl_secs: u64) -> HistoryPolicy {
        HistoryPolicy {
            limit,
            ttl: Duration::from_secs(ttl_secs),
        }
    }

    fn offsets(h: &History) -> Vec<u64> {
        h.entries.iter().map(|e| e.offset).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn offsets_start_at_one_and_grow_by_one_per_stream() {
        let b = MemoryBroker::new();
        let p = HistoryPolicy::default();
        let a1 = b.append("a", "1", p).await.unwrap();
        let a2 = b.append("a", "2", p).await.unwrap();
        let c1 = b.append("c", "x", p).await.unwrap();
        assert_eq!((a1.offset, a2.offset, c1.offset), (1, 2, 1));
        assert_eq!(a1.epoch, a2.epoch);
        assert!(a1.epoch.starts_with(b.epoch()));
        let h = b.history_from("a", &a1.epoch, 1).await.unwrap();
        assert_eq!(offsets(&h), [2]);
        assert_eq!(h.entries[0].payload, "2");
        // Offset 0 was never an entry: not servable (as AnyCable).
        assert!(b.history_from("a", &a1.epoch, 0).await.is_err());
        // The latest offset: nothing to send, and no error.
        assert!(b
            .history_from("a", &a1.epoch, 2)
            .await
            .unwrap()
            .entries
            .is_empty());
        // Past the latest: not found.
        assert!(matches!(
            b.history_from("a", &a1.epoch, 3).await,
            Err(BrokerError::HistoryNotFound { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn evicted_offsets_unknown_streams_and_other_epochs_are_not_found() {
        let b = MemoryBroker::new();
        let mut epoch = String::new();
        for n in 0..5 {
            epoch = b
                .append("s", &n.to_string(), policy(3, 300))
                .await
                .unwrap()
                .epoch;
        }
        // Kept: 3, 4, 5. From 3 on is servable; from 2 on is not: the
        // client's last entry must still be kept (as AnyCable).
        assert_eq!(
            offsets(&b.history_from("s", &epoch, 3).await.unwrap()),
            [4, 5]
        );
        let evicted = b.history_from("s", &epoch, 2).await;
        assert!(
            matches!(evicted, Err(BrokerError::HistoryNotFound { .. })),
            "{evicted:?}"
        );
        assert!(b.history_from("s", "other", 4).await.is_err());
        assert!(b.history_from("nope", &epoch, 0).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_and_a_lost_history_starts_a_new_epoch() {
        let b = MemoryBroker::new();
        let first = b.append("s", "1", policy(10, 5)).await.unwrap();
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(b.history_since("s", 0).await.unwrap().entries.is_empty());
        assert!(b.history_from("s", &first.epoch, 0).await.is_err());
        let again = b.append("s", "2", policy(10, 5)).await.unwrap();
        assert_eq!(again.offset, 1);
        assert_ne!(again.epoch, first.epoch);
    }

    #[tokio::test(start_paused = true)]
    async fn since_returns_entries_at_or_after_a_unix_second() {
        let b = MemoryBroker::new();
        let p = HistoryPolicy::default();
        b.append("s", "old", p).await.unwrap();
        tokio::time::advance(Duration::from_secs(10)).await;
        let t = b.unix_now(Instant::now());
        b.append("s", "new", p).await.unwrap();
        let h = b.history_since("s", t).await.unwrap();
        assert_eq!(h.entries.len(), 1);
        assert_eq!(h.entries[0].payload, "new");
        assert_eq!(h.entries[0].timestamp, t);
        assert_eq!(b.history_since("s", t - 10).await.unwrap().entries.len(), 2);
        assert!(b.history_since("none", 0).await.unwrap().entries.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_and_marks_run_out_after_their_ttl() {
        let b = MemoryBroker::new();
        b.store_session("sid", "state", Duration::from_secs(30))
            .await
            .unwrap();
        b.enable_history("s", policy(7, 20)).await.unwrap();
        assert_eq!(
            b.fetch_session("sid").await.unwrap().as_deref(),
            Some("state")
        );
        assert_eq!(b.history_policy("s").await.unwrap(), Some(policy(7, 20)));
        tokio::time::advance(Duration::from_secs(21)).await;
        assert_eq!(b.history_policy("s").await.unwrap(), None);
        assert!(b.fetch_session("sid").await.unwrap().is_some());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.fetch_session("sid").await.unwrap(), None);
        b.store_session("x", "1", Duration::from_secs(30))
            .await
            .unwrap();
        b.remove_session("x").await.unwrap();
        assert_eq!(b.fetch_session("x").await.unwrap(), None);
    }
}
