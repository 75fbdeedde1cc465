//! The broker conformance suite of `cable-adapter-kit` against the shared
//! PostgreSQL (`DATABASE_URL`), and what only PostgreSQL can show: the
//! tables, the cleanup, a dropped schema, a cut connection.

use std::time::Duration;

use cable_adapter_kit::broker_conformance::{
    append_within_5s, member, unique_prefix, BrokerConformance,
};
use cable_core::async_trait;
use cable_core::broker::{Broker, BrokerError, HistoryPolicy, Position};
use cable_postgres::{PostgresBroker, PostgresBrokerConfig};

use crate::support::{shared_postgres, terminate, Proxy};

pub struct Postgres {
    url: String,
    plain: tokio_postgres::Client,
}

/// The suite's brokers share this schema; tests keep apart by stream and
/// session names.
const SCHEMA: &str = "cable_it_broker";

fn config(url: &str) -> PostgresBrokerConfig {
    PostgresBrokerConfig::new(url)
        .schema(SCHEMA)
        .application_name("cable-it-broker")
        // Sweeps run beside the suite's appends: they must not get in the
        // way (locks, deadlocks) of what the suite checks.
        .cleanup_interval(Some(Duration::from_millis(300)))
}

#[async_trait]
impl BrokerConformance for Postgres {
    type Broker = PostgresBroker;

    async fn setup() -> Option<Self> {
        let (url, plain) = shared_postgres().await?;
        Some(Postgres { url, plain })
    }

    fn broker(&self) -> PostgresBroker {
        PostgresBroker::new(config(&self.url)).expect("valid broker config")
    }

    /// The stream's rows deleted, what restoring a backup without them (or
    /// recreating the database) does.
    async fn lose_history(&self, stream: &str) {
        let c = config(&self.url);
        let n = self
            .plain
            .execute(
                &format!("DELETE FROM {} WHERE stream = $1", c.table("streams")),
                &[&stream],
            )
            .await
            .expect("DELETE stream");
        assert_eq!(n, 1, "{stream} had a row");
        self.plain
            .execute(
                &format!("DELETE FROM {} WHERE stream = $1", c.table("history")),
                &[&stream],
            )
            .await
            .expect("DELETE history");
    }

    fn unreachable(&self) -> Option<PostgresBroker> {
        // Nothing listens on port 1.
        Some(
            PostgresBroker::new(config("postgres://postgres@127.0.0.1:1/test"))
                .expect("valid config"),
        )
    }
}

cable_adapter_kit::broker_conformance_tests!(Postgres);

/// A schema of the test's own, dropped at the end.
struct OwnSchema<'a> {
    plain: &'a tokio_postgres::Client,
    name: String,
}

impl<'a> OwnSchema<'a> {
    fn new(plain: &'a tokio_postgres::Client) -> Self {
        OwnSchema {
            plain,
            name: unique_prefix(),
        }
    }

    /// A broker at `url` keeping its tables in this schema, cleaning up
    /// every `cleanup_interval` (None: never on its own).
    fn broker(&self, url: &str, cleanup_interval: Option<Duration>) -> PostgresBroker {
        PostgresBroker::new(
            PostgresBrokerConfig::new(url)
                .schema(&self.name)
                .cleanup_interval(cleanup_interval),
        )
        .expect("config")
    }

    async fn drop_it(&self) {
        self.plain
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name))
            .await
            .expect("DROP SCHEMA");
    }

    async fn count(&self, table: &str) -> i64 {
        let sql = format!("SELECT count(*) FROM \"{}\".\"cable_{table}\"", self.name);
        self.plain.query_one(&sql, &[]).await.expect("count").get(0)
    }
}

/// The tables are created where the crate docs say, rows are trimmed to the
/// limit on append, and the cleanup deletes what expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_are_as_documented_and_cleaned_up() {
    let Some((url, plain)) = shared_postgres().await else {
        return;
    };
    let schema = OwnSchema::new(&plain);
    let broker = schema.broker(&url, None);
    let keep = HistoryPolicy {
        limit: 2,
        ttl: Duration::from_secs(60),
    };
    for n in 1..=5 {
        broker
            .append("kept", &format!("{{\"n\":{n}}}"), keep)
            .await
            .expect("append");
    }
    let brief = HistoryPolicy {
        limit: 10,
        ttl: Duration::from_millis(200),
    };
    broker.append("brief", "{}", brief).await.expect("append");
    broker.enable_history("brief", brief).await.expect("mark");
    broker
        .store_session("sid", "state", Duration::from_millis(200))
        .await
        .expect("session");
    let tables: Vec<String> = plain
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
            &[&schema.name],
        )
        .await
        .expect("tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        tables,
        [
            "cable_history",
            "cable_history_marks",
            "cable_presence",
            "cable_presence_members",
            "cable_sessions",
            "cable_streams"
        ]
    );
    assert_eq!(
        schema.count("history").await,
        3,
        "kept: 2 (limit), brief: 1"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let removed = broker.cleanup().await.expect("cleanup");
    assert_eq!(removed, 4, "brief's entry, stream, mark and the session");
    assert_eq!(schema.count("history").await, 2);
    assert_eq!(schema.count("streams").await, 1);
    assert_eq!(schema.count("sessions").await, 0);
    assert_eq!(schema.count("history_marks").await, 0);
    assert_eq!(broker.cleanup().await, Ok(0));
    // More than one batch of the sweep.
    plain
        .batch_execute(&format!(
            "INSERT INTO \"{}\".cable_sessions (sid, state, expires_at)
             SELECT 'old' || n, '{{}}', now() - interval '1 second' FROM generate_series(1, 2500) n",
            schema.name
        ))
        .await
        .expect("expired sessions");
    assert_eq!(broker.cleanup().await, Ok(2500));
    assert_eq!(schema.count("sessions").await, 0);
    schema.drop_it().await;
}

/// The periodic cleanup runs on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_runs_periodically() {
    let Some((url, plain)) = shared_postgres().await else {
        return;
    };
    let schema = OwnSchema::new(&plain);
    let broker = schema.broker(&url, Some(Duration::from_millis(200)));
    broker
        .store_session("sid", "state", Duration::from_millis(100))
        .await
        .expect("session");
    assert_eq!(schema.count("sessions").await, 1);
    cable_test::eventually("the sweep deleted the session", || async {
        schema.count("sessions").await == 0
    })
    .await;
    drop(broker);
    schema.drop_it().await;
}

/// The schema dropped under a connected broker (history lost as a database
/// restored without it would lose it): the next append makes the tables
/// again and starts a new epoch at 1; the old positions are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_schema_starts_a_new_epoch() {
    let Some((url, plain)) = shared_postgres().await else {
        return;
    };
    let schema = OwnSchema::new(&plain);
    let (a, b) = (
        PostgresBroker::new(PostgresBrokerConfig::new(&url).schema(&schema.name)).expect("config"),
        PostgresBroker::new(PostgresBrokerConfig::new(&url).schema(&schema.name)).expect("config"),
    );
    let policy = HistoryPolicy::default();
    for _ in 0..2 {
        a.append("s", "{}", policy).await.expect("append");
    }
    let old = b.append("s", "{}", policy).await.expect("append");
    assert_eq!(old.offset, 3);
    a.store_session("sid", "x", Duration::from_secs(60))
        .await
        .expect("session");
    schema.drop_it().await;

    let new = a
        .append("s", r#"{"after":1}"#, policy)
        .await
        .expect("append recreates");
    assert_eq!(new.offset, 1);
    assert_ne!(new.epoch, old.epoch);
    let err = b
        .history_from("s", &old.epoch, 2)
        .await
        .expect_err("old epoch");
    assert!(
        matches!(err, BrokerError::HistoryNotFound { .. }),
        "{err:?}"
    );
    let next = b.append("s", "{}", policy).await.expect("append");
    assert_eq!(
        next,
        Position {
            epoch: new.epoch,
            offset: 2
        }
    );
    assert_eq!(b.fetch_session("sid").await, Ok(None));
    schema.drop_it().await;
}

/// The database cut off (a proxy in front of the shared server): calls fail
/// with `Unavailable` promptly, work again when it is back, and the history
/// goes on in the same epoch (nothing was lost), never repeating a
/// position. A terminated backend is replaced as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_cut_connection() {
    let Some((url, plain)) = shared_postgres().await else {
        return;
    };
    let Some(mut proxy) = Proxy::start(&url).await else {
        return;
    };
    let app = format!("{}-b", unique_prefix());
    let broker =
        PostgresBroker::new(config(&proxy.url(&url)).application_name(&app)).expect("config");
    let stream = format!("{}:chat", unique_prefix());
    let policy = HistoryPolicy::default();
    let first = broker.append(&stream, "{}", policy).await.expect("append");

    proxy.cut().await;
    for _ in 0..3 {
        let started = tokio::time::Instant::now();
        let err = broker
            .append(&stream, "{}", policy)
            .await
            .expect_err("cut off");
        assert!(matches!(err, BrokerError::Unavailable(_)), "{err:?}");
        let err = broker.fetch_session("sid").await.expect_err("cut off");
        assert!(matches!(err, BrokerError::Unavailable(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "bounded");
    }
    proxy.restore().await;
    let back = until_appended(&broker, &stream, policy).await;
    assert_eq!(
        back,
        Position {
            epoch: first.epoch.clone(),
            offset: 2
        }
    );

    assert_eq!(terminate(&plain, &app).await, 1);
    let after = until_appended(&broker, &stream, policy).await;
    assert_eq!(
        after,
        Position {
            epoch: first.epoch.clone(),
            offset: 3
        }
    );
    let h = broker
        .history_from(&stream, &first.epoch, 1)
        .await
        .expect("history");
    assert_eq!(
        h.entries.iter().map(|e| e.offset).collect::<Vec<_>>(),
        [2, 3]
    );
}

/// Appends `{}` to `stream` until the database is back (every failure on
/// the way must be `Unavailable`).
async fn until_appended(broker: &PostgresBroker, stream: &str, policy: HistoryPolicy) -> Position {
    append_within_5s(broker, stream, "{}", policy, |e| {
        assert!(matches!(e, BrokerError::Unavailable(_)), "{e:?}")
    })
    .await
}

/// The cleanup deletes members that left, but leaves sessions that ran out
/// to the presence sweep, which reports their leaves (also when the sweep
/// comes after every node was down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_rows_are_left_to_the_sweep_and_cleaned_up() {
    let Some((url, plain)) = shared_postgres().await else {
        return;
    };
    let schema = OwnSchema::new(&plain);
    let broker = schema.broker(&url, None);
    let long = Duration::from_secs(60);
    assert_eq!(
        broker
            .presence_join(member("s", "a", "ann", "{}", long))
            .await,
        Ok(true)
    );
    assert_eq!(
        broker.presence_leave("s", "a").await,
        Ok(Some("ann".into()))
    );
    assert_eq!(schema.count("presence").await, 0);
    assert_eq!(
        schema.count("presence_members").await,
        1,
        "ann at 0 sessions"
    );
    let brief = Duration::from_millis(100);
    assert_eq!(
        broker
            .presence_join(member("s", "b", "bob", "{}", brief))
            .await,
        Ok(true)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(broker.cleanup().await, Ok(1), "ann's member row");
    assert_eq!(
        schema.count("presence").await,
        1,
        "bob's session is the sweep's"
    );
    let left = broker.presence_expire().await.expect("sweep");
    assert_eq!(
        left.iter()
            .map(|l| (l.stream.as_str(), l.id.as_str()))
            .collect::<Vec<_>>(),
        [("s", "bob")]
    );
    assert_eq!(broker.cleanup().await, Ok(1), "bob's member row");
    assert_eq!(schema.count("presence").await, 0);
    assert_eq!(schema.count("presence_members").await, 0);
    // Ann comes back: the newest member.
    assert_eq!(
        broker
            .presence_join(member("s", "c", "cy", "{}", long))
            .await,
        Ok(true)
    );
    assert_eq!(
        broker
            .presence_join(member("s", "a", "ann", "{}", long))
            .await,
        Ok(true)
    );
    let ids: Vec<String> = broker
        .presence_info("s")
        .await
        .expect("info")
        .records
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["cy", "ann"]);
    schema.drop_it().await;
}
