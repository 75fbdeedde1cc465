//! This node's side of presence (AnyCable's wire format): the sessions it
//! keeps present, renewed on every heartbeat, and the events and replies
//! it sends. What is kept lives in the broker ([`Broker::presence_join`]
//! and the rest), shared by every node on the same backend.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};

use crate::broker::{Broker, PresenceInfo};
use crate::cable::{Broadcaster, Publication};

/// The sessions of this node that are present somewhere, and how long a
/// session stays present without being renewed.
pub(crate) struct Local {
    /// sid -> how many of its subscriptions have joined.
    sessions: Mutex<HashMap<String, usize>>,
    pub(crate) ttl: Duration,
    /// Set while a heartbeat's renewal and sweep runs: one at a time.
    busy: Arc<AtomicBool>,
}

impl Local {
    pub(crate) fn new(ttl: Duration) -> Self {
        Local {
            sessions: Mutex::new(HashMap::new()),
            ttl,
            busy: Arc::new(AtomicBool::new(false)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A subscription of session `sid` joined.
    pub(crate) fn add(&self, sid: &str) {
        *self.lock().entry(sid.to_owned()).or_default() += 1;
    }

    /// A subscription of session `sid` left, or ended with its connection:
    /// once none is left the session is no longer renewed, and its presence
    /// runs out `ttl` later unless it joins again (a resumed session).
    pub(crate) fn remove(&self, sid: &str) {
        let mut sessions = self.lock();
        if let Some(n) = sessions.get_mut(sid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                sessions.remove(sid);
            }
        }
    }

    /// On a heartbeat: renews this node's present sessions, sweeps what ran
    /// out (on any node) and tells the streams who left. In the background,
    /// one at a time; a broker without presence costs nothing.
    pub(crate) fn on_beat(&self, broker: Option<&Arc<dyn Broker>>, broadcaster: Broadcaster) {
        let Some(broker) = broker.filter(|b| b.supports_presence()).cloned() else {
            return;
        };
        if self.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let sids: Vec<String> = self.lock().keys().cloned().collect();
        let (ttl, busy) = (self.ttl, self.busy.clone());
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            busy.store(false, Ordering::Release);
            return;
        };
        rt.spawn(async move {
            if !sids.is_empty() {
                if let Err(e) = broker.presence_touch(&sids, ttl).await {
                    tracing::warn!(error = %e, sessions = sids.len(), "could not renew presence");
                }
            }
            match broker.presence_expire().await {
                Ok(left) => {
                    for l in left {
                        tracing::debug!(stream = %l.stream, id = %l.id, "presence ran out");
                        publish(&broadcaster, &l.stream, &leave_event(&l.id)).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not sweep presence"),
            }
            busy.store(false, Ordering::Release);
        });
    }
}

/// `{"type":"join","id":…,"info":…}`.
pub(crate) fn join_event(id: &str, info: &Value) -> String {
    json!({"type": "join", "id": id, "info": info}).to_string()
}

/// `{"type":"leave","id":…}`.
pub(crate) fn leave_event(id: &str) -> String {
    json!({"type": "leave", "id": id}).to_string()
}

/// The `info` reply: `{"type":"info","total":N,"records":[{"id","info"}…]}`,
/// `records` left out when there are none (as AnyCable). An `info` that is
/// not JSON (a broker's corruption) is sent as `null`.
pub(crate) fn info_message(info: &PresenceInfo) -> String {
    let mut message = json!({"type": "info", "total": info.total});
    if !info.records.is_empty() {
        let records: Vec<Value> = info
            .records
            .iter()
            .map(|r| {
                let parsed = serde_json::from_str::<Value>(&r.info).unwrap_or(Value::Null);
                json!({"id": r.id, "info": parsed})
            })
            .collect();
        message["records"] = Value::Array(records);
    }
    message.to_string()
}

/// The reply when presence cannot be read: `{"type":"error"}`, on which
/// `@anycable/web` rejects its pending `info()`.
pub(crate) const INFO_ERROR: &str = r#"{"type":"error"}"#;

/// Publishes presence event `event` on `stream` to every subscriber, on
/// every node, never into history; a failure is logged.
pub(crate) async fn publish(broadcaster: &Broadcaster, stream: &str, event: &str) {
    let publication = Publication {
        presence: true,
        ..Publication::default()
    };
    if let Err(e) = broadcaster
        .broadcast_with(stream, event, &publication)
        .await
    {
        tracing::warn!(stream, error = %e, "could not publish a presence event");
    }
}
