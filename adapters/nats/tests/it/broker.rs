//! The broker conformance suite of `cable-adapter-kit` against the shared
//! nats-server's JetStream (`NATS_URL`), and what only NATS can show: a
//! nats-server restart with its JetStream store, one without it, what is
//! written where.

use std::time::Duration;

use cable_adapter_kit::broker_conformance::{append_within_5s, unique_prefix, BrokerConformance};
use cable_core::async_trait;
use cable_core::broker::{Broker, BrokerError, HistoryPolicy};
use cable_nats::{NatsBroker, NatsBrokerConfig};

use crate::support::{own_nats, shared_nats};

/// What the suite's brokers create: `cable_it_history`, `cable_it_broker`.
const NAME: &str = "cable_it";

pub struct Nats {
    url: String,
    js: async_nats::jetstream::Context,
}

fn config(url: &str) -> NatsBrokerConfig {
    NatsBrokerConfig::new(url)
        .name(NAME)
        .connection_name("cable-it-broker")
}

#[async_trait]
impl BrokerConformance for Nats {
    type Broker = NatsBroker;

    async fn setup() -> Option<Self> {
        let (url, client) = shared_nats().await?;
        Some(Nats {
            url,
            js: async_nats::jetstream::new(client),
        })
    }

    fn broker(&self) -> NatsBroker {
        // A longer call timeout than the default 2 s: the presence sweep
        // reads every session record in the shared bucket, and with the
        // other tests of the suite running beside it on two cores it took
        // longer than 2 s on a slower machine (seen in two CI runs).
        NatsBroker::new(config(&self.url).timeout(std::time::Duration::from_secs(10)))
            .expect("valid broker config")
    }

    /// Purges the stream's subject, what a restart without its JetStream
    /// store does to it.
    async fn lose_history(&self, stream: &str) {
        let c = config(&self.url);
        let js_stream = self
            .js
            .get_stream(c.stream_name())
            .await
            .expect("the history stream");
        let purged = js_stream
            .purge()
            .filter(c.subject(stream))
            .await
            .expect("purge");
        assert!(purged.purged > 0, "{stream} had entries");
    }

    fn unreachable(&self) -> Option<NatsBroker> {
        // Nothing listens on port 1.
        Some(NatsBroker::new(config("nats://127.0.0.1:1")).expect("valid broker config"))
    }
}

cable_adapter_kit::broker_conformance_tests!(Nats);

/// Entries are where the docs say: the subject `<name>.history.<key>` of
/// the stream `<name>_history`, the payload as given, epoch and offset in
/// the headers; sessions under `session.<key>` of the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_and_sessions_are_where_the_docs_say() {
    let Some(n) = Nats::setup().await else { return };
    let b = n.broker();
    let stream = format!("{}:chat", unique_prefix());
    let p = b
        .append(&stream, r#"{"hi":1}"#, HistoryPolicy::default())
        .await
        .expect("append");
    let c = config(&n.url);
    let js_stream = n.js.get_stream(c.stream_name()).await.expect("stream");
    let m = js_stream
        .get_last_raw_message_by_subject(&c.subject(&stream))
        .await
        .expect("the entry");
    assert_eq!(m.payload.as_ref(), br#"{"hi":1}"#);
    let header = |h: &str| m.headers.get(h).map(|v| v.as_str().to_owned());
    assert_eq!(header("Cable-Epoch"), Some(p.epoch));
    assert_eq!(header("Cable-Offset").as_deref(), Some("1"));
    let sid = format!("{}-sid", unique_prefix());
    b.store_session(&sid, "state", Duration::from_secs(60))
        .await
        .expect("store");
    let kv = n.js.get_key_value(c.bucket_name()).await.expect("bucket");
    let key = format!(
        "session.{}",
        c.subject(&sid).rsplit('.').next().expect("a key")
    );
    let value = kv.get(key).await.expect("get").expect("stored");
    let value = String::from_utf8_lossy(&value).into_owned();
    assert!(value.ends_with(" state"), "{value:?}");
}

/// A nats-server restarted with its JetStream store keeps the history and
/// the epoch; one restarted without it (a new store) starts a new epoch at
/// offset 1, and the old position is refused rather than served from the
/// new history. Calls during the outage fail with `Unavailable` and none
/// hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_restart_keeps_or_loses_history_as_its_store_does() {
    let dir = std::env::temp_dir().join(format!("{}-js", unique_prefix()));
    let dir_arg = dir.to_string_lossy().into_owned();
    let Some(mut nats) = own_nats(&["-js", "-sd", &dir_arg]).await else {
        return;
    };
    let broker = NatsBroker::new(config(&nats.url())).expect("config");
    let policy = HistoryPolicy::default();
    let mut last = None;
    for n in 1..=3 {
        last = Some(
            broker
                .append("s", &format!(r#"{{"n":{n}}}"#), policy)
                .await
                .expect("append"),
        );
    }
    let old = last.expect("appended");
    let sid = "restart-sid";
    broker
        .store_session(sid, "kept", Duration::from_secs(60))
        .await
        .expect("store");

    nats.set_up(false).await;
    let started = std::time::Instant::now();
    let err = broker
        .append("s", "{}", policy)
        .await
        .expect_err("nats is down");
    assert!(matches!(err, BrokerError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    nats.set_up(true).await;
    let kept = append_within_5s(&broker, "s", r#"{"n":4}"#, policy, |e| {
        assert!(matches!(e, BrokerError::Unavailable(_)), "{e:?}")
    })
    .await;
    assert_eq!((kept.epoch.as_str(), kept.offset), (old.epoch.as_str(), 4));
    let h = broker
        .history_from("s", &old.epoch, 2)
        .await
        .expect("history");
    assert_eq!(
        h.entries
            .iter()
            .map(|e| e.payload.as_str())
            .collect::<Vec<_>>(),
        vec![r#"{"n":3}"#, r#"{"n":4}"#]
    );
    assert_eq!(broker.fetch_session(sid).await, Ok(Some("kept".to_owned())));

    // The store wiped: everything the broker created is made again.
    nats.set_up(false).await;
    std::fs::remove_dir_all(&dir).expect("remove the store");
    nats.set_up(true).await;
    let new = append_within_5s(&broker, "s", r#"{"n":1}"#, policy, |_| {}).await;
    assert_eq!(new.offset, 1);
    assert_ne!(new.epoch, old.epoch);
    let refused = broker.history_from("s", &old.epoch, 3).await;
    assert!(
        matches!(refused, Err(BrokerError::HistoryNotFound { .. })),
        "{refused:?}"
    );
    assert_eq!(broker.fetch_session(sid).await, Ok(None));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A message on a stream's subject that is no entry (something else
/// published there) is never served and breaks nothing: the next append
/// starts a new epoch at offset 1 after it, and history reads go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_message_on_a_history_subject_starts_a_new_epoch() {
    let Some(n) = Nats::setup().await else { return };
    let b = n.broker();
    let stream = format!("{}:chat", unique_prefix());
    let policy = HistoryPolicy::default();
    b.append(&stream, "{}", policy).await.expect("append");
    let old = b.append(&stream, "{}", policy).await.expect("append");
    let subject = config(&n.url).subject(&stream);
    n.js.publish(subject, "not an entry".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let refused = b.history_from(&stream, &old.epoch, 1).await;
    assert!(
        matches!(refused, Err(BrokerError::HistoryNotFound { .. })),
        "{refused:?}"
    );
    let since = b.history_since(&stream, 0).await.expect("since");
    assert!(since.entries.is_empty(), "{since:?}");
    // Another node (no cached last entry) and this one agree.
    let other = n.broker();
    let new = other
        .append(&stream, r#"{"n":1}"#, policy)
        .await
        .expect("append");
    assert_eq!(new.offset, 1);
    assert_ne!(new.epoch, old.epoch);
    let next = b
        .append(&stream, r#"{"n":2}"#, policy)
        .await
        .expect("append");
    assert_eq!((next.epoch.as_str(), next.offset), (new.epoch.as_str(), 2));
    let h = b.history_since(&stream, 0).await.expect("since");
    assert_eq!(
        h.entries
            .iter()
            .map(|e| e.payload.as_str())
            .collect::<Vec<_>>(),
        vec![r#"{"n":1}"#, r#"{"n":2}"#]
    );
}
