//! The broker conformance suite run against a minimal in-memory broker, so
//! that the suite itself is known to ask only what the contract says (no
//! backend's quirks), and runs without any server.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use cable_core::broker::{Broker, BrokerError, Entry, History, HistoryPolicy, Position};
use tokio::time::Instant;

use crate::broker::new_epoch;
use crate::broker_conformance::BrokerConformance;

struct Stream {
    epoch: String,
    last: u64,
    ttl: Duration,
    expires: Instant,
    /// (offset, appended at in ms, payload), oldest first.
    entries: VecDeque<(u64, u64, String)>,
}

#[derive(Default)]
struct State {
    streams: HashMap<String, Stream>,
    sessions: HashMap<String, (String, Instant)>,
    marks: HashMap<String, (HistoryPolicy, Instant)>,
}

/// One "node": a handle on the shared state.
#[derive(Clone, Default)]
pub(crate) struct Reference(Arc<Mutex<State>>);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn later(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or(now + Duration::from_secs(100 * 365 * 24 * 3600))
}

impl Reference {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The living stream, with what is older than its TTL dropped.
    fn live<'a>(state: &'a mut State, stream: &str) -> Option<&'a mut Stream> {
        if state
            .streams
            .get(stream)
            .is_some_and(|s| s.expires <= Instant::now())
        {
            state.streams.remove(stream);
        }
        let s = state.streams.get_mut(stream)?;
        let cutoff = now_ms().saturating_sub(ms(s.ttl));
        while s.entries.front().is_some_and(|(_, at, _)| *at < cutoff) {
            s.entries.pop_front();
        }
        Some(s)
    }
}

fn entries<'a>(it: impl Iterator<Item = &'a (u64, u64, String)>) -> Vec<Entry> {
    it.map(|(offset, at, payload)| Entry {
        offset: *offset,
        timestamp: at / 1000,
        payload: payload.clone(),
    })
    .collect()
}

#[async_trait]
impl Broker for Reference {
    async fn append(
        &self,
        stream: &str,
        payload: &str,
        policy: HistoryPolicy,
    ) -> Result<Position, BrokerError> {
        let mut state = self.state();
        if Reference::live(&mut state, stream).is_none() {
            state.streams.insert(
                stream.to_owned(),
                Stream {
                    epoch: new_epoch(),
                    last: 0,
                    ttl: policy.ttl,
                    expires: Instant::now(),
                    entries: VecDeque::new(),
                },
            );
        }
        let s = state
            .streams
            .get_mut(stream)
            .ok_or_else(|| BrokerError::Backend("the stream was just inserted".to_owned()))?;
        s.last += 1;
        s.ttl = policy.ttl;
        s.expires = later(policy.ttl);
        s.entries.push_back((s.last, now_ms(), payload.to_owned()));
        while s.entries.len() > policy.limit.max(1) {
            s.entries.pop_front();
        }
        Ok(Position {
            epoch: s.epoch.clone(),
            offset: s.last,
        })
    }

    async fn history_from(
        &self,
        stream: &str,
        epoch: &str,
        offset: u64,
    ) -> Result<History, BrokerError> {
        let mut state = self.state();
        let refuse = |why: &str| Err(BrokerError::not_found(stream, why));
        let Some(s) = Reference::live(&mut state, stream) else {
            return refuse("unknown stream");
        };
        if s.epoch != epoch {
            return refuse("another epoch");
        }
        if offset > s.last {
            return refuse("above the latest");
        }
        let history = |entries| History {
            epoch: s.epoch.clone(),
            entries,
        };
        if offset == s.last {
            return Ok(history(Vec::new()));
        }
        if s.entries
            .front()
            .is_none_or(|(oldest, _, _)| *oldest > offset)
        {
            return refuse("evicted");
        }
        Ok(history(entries(
            s.entries.iter().filter(|(o, _, _)| *o > offset),
        )))
    }

    async fn history_since(&self, stream: &str, since: u64) -> Result<History, BrokerError> {
        let mut state = self.state();
        let Some(s) = Reference::live(&mut state, stream) else {
            return Ok(History::default());
        };
        let since_ms = since.saturating_mul(1000);
        Ok(History {
            epoch: s.epoch.clone(),
            entries: entries(s.entries.iter().filter(|(_, at, _)| *at >= since_ms)),
        })
    }

    async fn enable_history(&self, stream: &str, policy: HistoryPolicy) -> Result<(), BrokerError> {
        self.state()
            .marks
            .insert(stream.to_owned(), (policy, later(policy.ttl)));
        Ok(())
    }

    async fn history_policy(&self, stream: &str) -> Result<Option<HistoryPolicy>, BrokerError> {
        let state = self.state();
        Ok(state
            .marks
            .get(stream)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(p, _)| *p))
    }

    async fn store_session(
        &self,
        sid: &str,
        state: &str,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        self.state()
            .sessions
            .insert(sid.to_owned(), (state.to_owned(), later(ttl)));
        Ok(())
    }

    async fn fetch_session(&self, sid: &str) -> Result<Option<String>, BrokerError> {
        let state = self.state();
        Ok(state
            .sessions
            .get(sid)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(s, _)| s.clone()))
    }

    async fn remove_session(&self, sid: &str) -> Result<(), BrokerError> {
        self.state().sessions.remove(sid);
        Ok(())
    }

    fn name(&self) -> &'static str {
        "reference"
    }
}

/// The suite's view: every broker shares one state.
pub(crate) struct ReferenceSuite(Reference);

#[async_trait]
impl BrokerConformance for ReferenceSuite {
    type Broker = Reference;

    async fn setup() -> Option<Self> {
        Some(ReferenceSuite(Reference::default()))
    }

    fn broker(&self) -> Reference {
        self.0.clone()
    }

    async fn lose_history(&self, stream: &str) {
        assert!(self.0.state().streams.remove(stream).is_some());
    }

    fn unreachable(&self) -> Option<Reference> {
        None
    }
}

crate::broker_conformance_tests!(ReferenceSuite);
