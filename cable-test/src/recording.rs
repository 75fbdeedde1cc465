//! A pub/sub adapter that records every broadcast.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cable_core::async_trait;
use cable_core::pubsub::{Ack, Delivery, MemoryPubSub, PubSub};
use cable_core::PubSubError;
use serde_json::Value;

/// Every broadcast made through a [`RecordingPubSub`], in order: from
/// channels (`Context::broadcast`) and from the application
/// (`Cable::broadcast`, a `Broadcaster` in a task) alike. Clones share the
/// record.
///
/// ```
/// use cable_core::Cable;
/// use cable_test::{Broadcasts, RecordingPubSub};
/// use serde_json::json;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let broadcasts = Broadcasts::default();
/// let record = broadcasts.clone();
/// let cable = Cable::builder().pubsub(move |d| RecordingPubSub::new(d, record)).build();
/// cable.broadcast("chat_lobby", &json!({"body": "hi"})).await.unwrap();
/// broadcasts.assert_broadcast_on("chat_lobby", json!({"body": "hi"}));
/// broadcasts.assert_broadcasts("chat_lobby", 1);
/// broadcasts.assert_no_broadcasts("chat_other");
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct Broadcasts(Arc<Mutex<Vec<(String, String)>>>);

impl Broadcasts {
    fn lock(&self) -> MutexGuard<'_, Vec<(String, String)>> {
        // A failed assertion elsewhere must not hide the record.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every broadcast so far as (stream, message); a payload that is not
    /// JSON (`broadcast_raw`) comes back as a JSON string.
    pub fn all(&self) -> Vec<(String, Value)> {
        self.lock()
            .iter()
            .map(|(stream, payload)| (stream.clone(), decode(payload)))
            .collect()
    }

    /// The messages broadcast on `stream`, in order.
    pub fn on(&self, stream: &str) -> Vec<Value> {
        self.lock()
            .iter()
            .filter(|(s, _)| s == stream)
            .map(|(_, payload)| decode(payload))
            .collect()
    }

    /// Forgets what was recorded (Rails' assertions take a block for
    /// "during this"; here, clear before).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Panics unless `message` was broadcast on `stream` (Rails'
    /// `assert_broadcast_on`).
    #[track_caller]
    pub fn assert_broadcast_on(&self, stream: &str, message: Value) {
        let got = self.on(stream);
        if !got.contains(&message) {
            let everywhere: Vec<String> = self
                .all()
                .iter()
                .map(|(s, m)| format!("{s:?}: {m}"))
                .collect();
            panic!(
                "expected a broadcast on {stream:?} of {message}; broadcast there: {}; everywhere: [{}]",
                json_list(&got),
                everywhere.join(", ")
            );
        }
    }

    /// Panics unless exactly `n` messages were broadcast on `stream`
    /// (Rails' `assert_broadcasts`).
    #[track_caller]
    pub fn assert_broadcasts(&self, stream: &str, n: usize) {
        let got = self.on(stream);
        assert_eq!(
            got.len(),
            n,
            "expected {n} broadcasts on {stream:?}, got {}",
            json_list(&got)
        );
    }

    /// Panics if anything was broadcast on `stream` (Rails'
    /// `assert_no_broadcasts`).
    #[track_caller]
    pub fn assert_no_broadcasts(&self, stream: &str) {
        self.assert_broadcasts(stream, 0);
    }
}

/// `values` as a JSON array, for failure messages.
pub(crate) fn json_list(values: &[Value]) -> String {
    Value::Array(values.to_vec()).to_string()
}

fn decode(payload: &str) -> Value {
    // A broadcast of a stream with history travels with its position;
    // what was broadcast is the rest.
    let payload = match cable_core::pubsub::decode_with_meta(payload) {
        Ok((_, body)) => body,
        Err(_) => payload,
    };
    serde_json::from_str(payload).unwrap_or_else(|_| Value::String(payload.to_owned()))
}

/// The in-memory adapter ([`MemoryPubSub`]) that also writes every
/// broadcast into a [`Broadcasts`] record. [`TestCable`](crate::TestCable)
/// installs it; install it yourself with `CableBuilder::pubsub` to record
/// on any cable (a [`TestServer`](crate::TestServer)'s, say).
#[derive(Debug)]
pub struct RecordingPubSub {
    inner: MemoryPubSub,
    record: Broadcasts,
}

impl RecordingPubSub {
    /// An in-memory adapter delivering through `delivery` and recording
    /// into `record`.
    pub fn new(delivery: Delivery, record: Broadcasts) -> Self {
        RecordingPubSub {
            inner: MemoryPubSub::new(delivery),
            record,
        }
    }
}

#[async_trait]
impl PubSub for RecordingPubSub {
    async fn broadcast(&self, stream: &str, payload: &str) -> Result<(), PubSubError> {
        self.record
            .lock()
            .push((stream.to_owned(), payload.to_owned()));
        self.inner.broadcast(stream, payload).await
    }

    fn subscribe(&self, stream: &str) -> Ack {
        self.inner.subscribe(stream)
    }

    fn unsubscribe(&self, stream: &str) -> Ack {
        self.inner.unsubscribe(stream)
    }

    fn name(&self) -> &'static str {
        "recording"
    }
}
