//! Presence on JetStream: the `<name>_presence` key-value bucket, every
//! change a publish conditional on the key's last revision, so that nodes
//! changing one record at once cannot lose each other's change (the one
//! refused reads the record again and retries).
//!
//! - `stream.<key(stream)>`: the stream's members, oldest first, each with
//!   its info and the sessions present as it.
//! - `session.<key(sid)>`: the session's deadline (Unix ms) and the streams
//!   it is present on, with the member id on each.
//!
//! A join writes the session record, then the stream's; a leave the same
//! way round. A sweep reads every session record (the bucket's last value
//! per key, one consumer), and for each whose deadline passed deletes it
//! conditionally on the revision it read: only the node whose delete is
//! stored goes on to take the session off its streams, so each leave is
//! reported once across nodes, and a session renewed or rejoined since the
//! read is not swept. The sweep reads every present session: its cost grows
//! with them (a few thousand per node and heartbeat are fine).

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::consumer::{push, DeliverPolicy};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::HeaderMap;
use cable_core::broker::{BrokerError, Join, PresenceInfo, PresenceLeft, PresenceRecord};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::broker::{get_failure, key, millis, now_ms, refused_text, NatsBroker};

/// The presence bucket's `max_age`: a record nobody renews is gone after
/// it (its leave then reported by nobody: a node sweeps long before).
/// Presence TTLs are capped at a quarter of it.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(3600);

/// Most tries of one change refused because another node changed the
/// record first.
const MAX_TRIES: usize = 64;

#[derive(Serialize, Deserialize, Default)]
struct SessionRec {
    /// Unix ms.
    deadline: u64,
    /// Stream -> member id.
    streams: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Default)]
struct StreamRec {
    /// Oldest first.
    members: Vec<MemberRec>,
}

#[derive(Serialize, Deserialize)]
struct MemberRec {
    id: String,
    info: String,
    sids: Vec<String>,
}

/// A record as read: its value (None when absent or deleted) and the
/// revision a change must name (0: the key never had a value).
struct Read<T> {
    value: Option<T>,
    revision: u64,
}

impl NatsBroker {
    fn subject_of(&self, key: &str) -> String {
        format!("$KV.{}.{key}", self.config.presence_bucket_name())
    }

    async fn read<T: DeserializeOwned>(&self, key: &str) -> Result<Read<T>, BrokerError> {
        let subject = self.subject_of(key);
        let subject = subject.as_str();
        self.conn
            .call("STREAM.MSG.GET (presence)", |js| async move {
                match js.presence.get_last_raw_message_by_subject(subject).await {
                    Ok(m) => {
                        let deleted = m
                            .headers
                            .get("KV-Operation")
                            .is_some_and(|v| v.as_str() == "DEL" || v.as_str() == "PURGE");
                        let value = if deleted || m.payload.is_empty() {
                            None
                        } else {
                            Some(serde_json::from_slice(&m.payload).map_err(|e| refused_text(&e))?)
                        };
                        Ok(Read {
                            value,
                            revision: m.sequence,
                        })
                    }
                    Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(Read {
                        value: None,
                        revision: 0,
                    }),
                    Err(e) => Err(get_failure(&e, e.kind())),
                }
            })
            .await
    }

    /// Writes `value` (None: deletes) at `key` if its last revision is still
    /// `revision`; false when another change came first.
    async fn swap<T: Serialize>(
        &self,
        key: &str,
        value: Option<&T>,
        revision: u64,
    ) -> Result<bool, BrokerError> {
        let subject = self.subject_of(key);
        let payload = match value {
            Some(v) => serde_json::to_vec(v)
                .map_err(|e| BrokerError::Backend(format!("nats: presence record: {e}")))?,
            None => Vec::new(),
        };
        let payload = bytes::Bytes::from(payload);
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            revision.to_string().as_str(),
        );
        if value.is_none() {
            headers.insert("KV-Operation", "DEL");
        }
        let stored = self
            .publish_if("PUB (presence)", &subject, headers, payload)
            .await?;
        Ok(stored.is_some())
    }

    /// Reads the record at `key`, lets `change` make the new value (None:
    /// delete) and a result, and writes it conditionally, again until it is
    /// stored. `change` answering `Err` stops with that result, nothing
    /// written.
    async fn update<T, R>(
        &self,
        key: &str,
        mut change: impl FnMut(Option<T>) -> Result<(Option<T>, R), R>,
    ) -> Result<R, BrokerError>
    where
        T: Serialize + DeserializeOwned,
    {
        for _ in 0..MAX_TRIES {
            let read = self.read::<T>(key).await?;
            let (value, out) = match change(read.value) {
                Ok(v) => v,
                Err(out) => return Ok(out),
            };
            if self.swap(key, value.as_ref(), read.revision).await? {
                return Ok(out);
            }
        }
        Err(BrokerError::Unavailable(format!(
            "nats: {MAX_TRIES} presence changes in a row were refused because other nodes \
             changed the record first"
        )))
    }

    fn ttl_ms(ttl: Duration) -> u64 {
        millis(ttl.min(MAX_AGE / 4)).max(1)
    }

    pub(crate) async fn join(&self, join: Join<'_>) -> Result<bool, BrokerError> {
        let deadline = now_ms().saturating_add(Self::ttl_ms(join.ttl));
        let session_key = format!("session.{}", key(join.sid));
        let mismatch = self
            .update::<SessionRec, bool>(&session_key, |rec| {
                let mut rec = rec.unwrap_or_default();
                if rec.streams.get(join.stream).is_some_and(|id| id != join.id) {
                    return Err(true);
                }
                rec.streams
                    .insert(join.stream.to_owned(), join.id.to_owned());
                rec.deadline = deadline;
                Ok((Some(rec), false))
            })
            .await?;
        if mismatch {
            return Err(BrokerError::PresenceIdMismatch);
        }
        let stream_key = format!("stream.{}", key(join.stream));
        self.update::<StreamRec, bool>(&stream_key, |rec| {
            let mut rec = rec.unwrap_or_default();
            let new = match rec.members.iter_mut().find(|m| m.id == join.id) {
                Some(m) => {
                    if !m.sids.iter().any(|s| s == join.sid) {
                        m.sids.push(join.sid.to_owned());
                    }
                    m.info = join.info.to_owned();
                    false
                }
                None => {
                    rec.members.push(MemberRec {
                        id: join.id.to_owned(),
                        info: join.info.to_owned(),
                        sids: vec![join.sid.to_owned()],
                    });
                    true
                }
            };
            Ok((Some(rec), new))
        })
        .await
    }

    pub(crate) async fn leave(
        &self,
        stream: &str,
        sid: &str,
    ) -> Result<Option<String>, BrokerError> {
        let session_key = format!("session.{}", key(sid));
        let was = self
            .update::<SessionRec, bool>(&session_key, |rec| {
                let Some(mut rec) = rec else {
                    return Err(false);
                };
                if rec.streams.remove(stream).is_none() {
                    return Err(false);
                }
                Ok(((!rec.streams.is_empty()).then_some(rec), true))
            })
            .await?;
        if !was {
            return Ok(None);
        }
        self.off_stream(stream, sid).await
    }

    /// Takes `sid` off `stream`'s record; the member id when it was that
    /// member's last session.
    async fn off_stream(&self, stream: &str, sid: &str) -> Result<Option<String>, BrokerError> {
        let stream_key = format!("stream.{}", key(stream));
        self.update::<StreamRec, Option<String>>(&stream_key, |rec| {
            let Some(mut rec) = rec else { return Err(None) };
            let Some(at) = rec
                .members
                .iter()
                .position(|m| m.sids.iter().any(|s| s == sid))
            else {
                return Err(None);
            };
            rec.members[at].sids.retain(|s| s != sid);
            let left = rec.members[at]
                .sids
                .is_empty()
                .then(|| rec.members.remove(at).id);
            Ok(((!rec.members.is_empty()).then_some(rec), left))
        })
        .await
    }

    pub(crate) async fn info(&self, stream: &str) -> Result<PresenceInfo, BrokerError> {
        let read = self
            .read::<StreamRec>(&format!("stream.{}", key(stream)))
            .await?;
        let records: Vec<PresenceRecord> = read
            .value
            .unwrap_or_default()
            .members
            .into_iter()
            .map(|m| PresenceRecord {
                id: m.id,
                info: m.info,
            })
            .collect();
        Ok(PresenceInfo {
            total: records.len(),
            records,
        })
    }

    pub(crate) async fn touch(&self, sids: &[String], ttl: Duration) -> Result<(), BrokerError> {
        let deadline = now_ms().saturating_add(Self::ttl_ms(ttl));
        // A few at a time over the one connection.
        for batch in sids.chunks(32) {
            let renewals = batch.iter().map(|sid| async move {
                self.update::<SessionRec, ()>(&format!("session.{}", key(sid)), |rec| {
                    // A session swept (or never present) stays gone.
                    let Some(mut rec) = rec else { return Err(()) };
                    rec.deadline = deadline;
                    Ok((Some(rec), ()))
                })
                .await
            });
            for r in futures_util::future::join_all(renewals).await {
                r?;
            }
        }
        Ok(())
    }

    pub(crate) async fn expire(&self) -> Result<Vec<PresenceLeft>, BrokerError> {
        let now = now_ms();
        let mut left = Vec::new();
        for (sid_key, revision, rec) in self.sessions().await? {
            if rec.deadline > now {
                continue;
            }
            // Only the node whose delete is stored reports the leaves.
            if !self.swap::<SessionRec>(&sid_key, None, revision).await? {
                continue;
            }
            let Some(sid) = sid_of(&sid_key) else {
                continue;
            };
            for (stream, _) in rec.streams {
                if let Some(id) = self.off_stream(&stream, &sid).await? {
                    left.push(PresenceLeft { stream, id });
                }
            }
        }
        Ok(left)
    }

    /// Every session record: its key, revision and value.
    async fn sessions(&self) -> Result<Vec<(String, u64, SessionRec)>, BrokerError> {
        let bucket = self.config.presence_bucket_name();
        let prefix = format!("$KV.{bucket}.");
        let (prefix, filter) = (prefix.as_str(), format!("{prefix}session.>"));
        let filter = filter.as_str();
        self.conn
            .call("presence sweep", |js| async move {
                let consumer = js
                    .presence
                    .create_consumer(push::OrderedConfig {
                        deliver_subject: js.client_inbox(),
                        filter_subject: filter.to_owned(),
                        deliver_policy: DeliverPolicy::LastPerSubject,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| refused_text(&e))?;
                let mut out = Vec::new();
                if consumer.cached_info().num_pending == 0 {
                    return Ok(out);
                }
                let mut messages = consumer.messages().await.map_err(|e| refused_text(&e))?;
                while let Some(m) = messages.next().await {
                    let m = m.map_err(|e| refused_text(&e))?;
                    let info = m.info().map_err(|e| refused_text(&e))?;
                    let (revision, pending) = (info.stream_sequence, info.pending);
                    let deleted = m
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("KV-Operation"))
                        .is_some();
                    if !deleted && !m.payload.is_empty() {
                        if let (Some(k), Ok(rec)) = (
                            m.subject.as_str().strip_prefix(prefix),
                            serde_json::from_slice::<SessionRec>(&m.payload),
                        ) {
                            out.push((k.to_owned(), revision, rec));
                        }
                    }
                    if pending == 0 {
                        break;
                    }
                }
                Ok(out)
            })
            .await
    }
}

/// The session id of a key `session.<key(sid)>`.
fn sid_of(session_key: &str) -> Option<String> {
    use base64::Engine;
    let k = session_key.strip_prefix("session.")?;
    if k == "=" {
        return Some(String::new());
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(k)
        .ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_keys_give_back_their_sid() {
        for sid in ["", "abc-1", "sid ü"] {
            assert_eq!(
                sid_of(&format!("session.{}", key(sid))).as_deref(),
                Some(sid)
            );
        }
        assert_eq!(sid_of("stream.x"), None);
    }
}
