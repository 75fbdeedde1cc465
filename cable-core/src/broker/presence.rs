//! Presence: who is on a stream, by member id, across a member's sessions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::{BrokerError, Join};

/// One member of a stream's presence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceRecord {
    /// The member id the client joined with.
    pub id: String,
    /// What others see of it (JSON text, as joined).
    pub info: String,
}

/// Who is present on a stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PresenceInfo {
    /// How many members (not sessions).
    pub total: usize,
    /// Every member once, oldest first.
    pub records: Vec<PresenceRecord>,
}

impl PresenceInfo {
    /// AnyCable's presence `info` message, as its REST API answers
    /// `GET /api/presence/:stream/users`:
    /// `{"type":"info","total":N,"records":[{"id":..,"info":{..}}]}`,
    /// `records` left out when empty.
    pub fn to_json(&self) -> String {
        crate::presence::info_message(self)
    }
}

/// A member that left a stream when its last session's presence ran out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceLeft {
    /// The stream it left.
    pub stream: String,
    /// Its member id.
    pub id: String,
}

/// Presence kept in this process's memory: what [`MemoryBroker`](super::MemoryBroker)
/// serves, usable by any broker that keeps presence per node. Clones share
/// one store.
#[derive(Clone, Debug, Default)]
pub struct MemoryPresence {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// stream -> member id -> member.
    streams: HashMap<String, HashMap<String, Member>>,
    /// sid -> its streams (stream -> member id) and when it runs out.
    sessions: HashMap<String, (HashMap<String, String>, Instant)>,
    joins: u64,
}

#[derive(Debug)]
struct Member {
    info: String,
    sids: Vec<String>,
    /// Join order, for oldest-first records.
    order: u64,
}

impl MemoryPresence {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// See [`Broker::presence_join`](super::Broker::presence_join).
    pub fn join(&self, join: Join<'_>) -> Result<bool, BrokerError> {
        let (stream, sid, id, info, ttl) = (join.stream, join.sid, join.id, join.info, join.ttl);
        let mut state = self.lock();
        let until = crate::reliable::later(Instant::now(), ttl);
        let (streams, deadline) = state
            .sessions
            .entry(sid.to_owned())
            .or_insert_with(|| (HashMap::new(), until));
        match streams.get(stream) {
            Some(present) if present != id => return Err(BrokerError::PresenceIdMismatch),
            Some(_) => {}
            None => {
                streams.insert(stream.to_owned(), id.to_owned());
            }
        }
        *deadline = until;
        state.joins += 1;
        let order = state.joins;
        let members = state.streams.entry(stream.to_owned()).or_default();
        match members.get_mut(id) {
            Some(member) => {
                member.info = info.to_owned();
                if !member.sids.iter().any(|s| s == sid) {
                    member.sids.push(sid.to_owned());
                }
                Ok(false)
            }
            None => {
                members.insert(
                    id.to_owned(),
                    Member {
                        info: info.to_owned(),
                        sids: vec![sid.to_owned()],
                        order,
                    },
                );
                Ok(true)
            }
        }
    }

    /// See [`Broker::presence_leave`](super::Broker::presence_leave).
    pub fn leave(&self, stream: &str, sid: &str) -> Option<String> {
        let mut state = self.lock();
        let (streams, _) = state.sessions.get_mut(sid)?;
        let id = streams.remove(stream)?;
        if streams.is_empty() {
            state.sessions.remove(sid);
        }
        remove_session(&mut state.streams, stream, &id, sid).then_some(id)
    }

    /// See [`Broker::presence_info`](super::Broker::presence_info).
    pub fn info(&self, stream: &str) -> PresenceInfo {
        let state = self.lock();
        let Some(members) = state.streams.get(stream) else {
            return PresenceInfo::default();
        };
        let mut members: Vec<(&String, &Member)> = members.iter().collect();
        members.sort_by_key(|(_, m)| m.order);
        PresenceInfo {
            total: members.len(),
            records: members
                .into_iter()
                .map(|(id, m)| PresenceRecord {
                    id: id.clone(),
                    info: m.info.clone(),
                })
                .collect(),
        }
    }

    /// See [`Broker::presence_touch`](super::Broker::presence_touch).
    pub fn touch(&self, sids: &[String], ttl: Duration) {
        let until = crate::reliable::later(Instant::now(), ttl);
        let mut state = self.lock();
        for sid in sids {
            if let Some((_, deadline)) = state.sessions.get_mut(sid) {
                *deadline = until;
            }
        }
    }

    /// See [`Broker::presence_expire`](super::Broker::presence_expire).
    pub fn expire(&self) -> Vec<PresenceLeft> {
        let now = Instant::now();
        let mut state = self.lock();
        let gone: Vec<String> = state
            .sessions
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(sid, _)| sid.clone())
            .collect();
        let mut left = Vec::new();
        for sid in gone {
            let Some((streams, _)) = state.sessions.remove(&sid) else {
                continue;
            };
            for (stream, id) in streams {
                if remove_session(&mut state.streams, &stream, &id, &sid) {
                    left.push(PresenceLeft { stream, id });
                }
            }
        }
        left
    }
}

/// Removes `sid` from member `id` of `stream`; true when that was the
/// member's last session (the member is gone, and the stream with its last
/// member).
fn remove_session(
    streams: &mut HashMap<String, HashMap<String, Member>>,
    stream: &str,
    id: &str,
    sid: &str,
) -> bool {
    let Some(members) = streams.get_mut(stream) else {
        return false;
    };
    let Some(member) = members.get_mut(id) else {
        return false;
    };
    member.sids.retain(|s| s != sid);
    if !member.sids.is_empty() {
        return false;
    }
    members.remove(id);
    if members.is_empty() {
        streams.remove(stream);
    }
    true
}
