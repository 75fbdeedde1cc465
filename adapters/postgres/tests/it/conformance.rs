//! The pub/sub conformance suite of `cable-adapter-kit`, against the shared
//! PostgreSQL (`DATABASE_URL`).

use cable_adapter_kit::conformance::Conformance;
use cable_core::async_trait;
use cable_core::pubsub::Delivery;
use cable_postgres::{PostgresConfig, PostgresPubSub, PostgresStatus, MAX_PAYLOAD_BYTES};

use crate::support::{shared_postgres, terminate};

pub struct Postgres {
    url: String,
    plain: tokio_postgres::Client,
}

#[async_trait]
impl Conformance for Postgres {
    type Adapter = PostgresPubSub;
    /// The application name and the listener's status.
    type Node = (String, PostgresStatus);

    async fn setup() -> Option<Self> {
        let (url, plain) = shared_postgres().await?;
        Some(Postgres { url, plain })
    }

    fn adapter(
        &self,
        prefix: &str,
        node: &str,
        delivery: Delivery,
    ) -> (PostgresPubSub, Self::Node) {
        let config = PostgresConfig::new(&self.url)
            .channel_prefix(prefix)
            .application_name(node);
        let adapter = PostgresPubSub::new(config, delivery).expect("valid postgres config");
        let status = adapter.status();
        (adapter, (node.to_owned(), status))
    }

    fn unreachable(&self, prefix: &str, delivery: Delivery) -> PostgresPubSub {
        // Nothing listens on port 1.
        let config =
            PostgresConfig::new("postgres://postgres@127.0.0.1:1/test").channel_prefix(prefix);
        PostgresPubSub::new(config, delivery).expect("valid postgres config")
    }

    /// PostgreSQL shows LISTENs only to the session itself: each node's
    /// listener runs `pg_listening_channels()`.
    async fn backend_subscriptions(
        &self,
        nodes: &[&Self::Node],
        prefix: &str,
        stream: &str,
    ) -> usize {
        let channel = PostgresConfig::new(&self.url)
            .channel_prefix(prefix)
            .pg_channel(stream);
        let mut n = 0;
        for (_, status) in nodes {
            if let Ok(channels) = status.listening_channels().await {
                n += channels.iter().filter(|c| **c == channel).count();
            }
        }
        n
    }

    /// `pg_terminate_backend` of the node's listening and publishing
    /// sessions, what a server restart does to each.
    async fn break_connections(&self, (app, _): &Self::Node) {
        assert_eq!(terminate(&self.plain, app).await, 1);
        terminate(&self.plain, &format!("{app}-publisher")).await;
    }

    fn payload_limit(&self) -> Option<usize> {
        Some(MAX_PAYLOAD_BYTES)
    }
}

cable_adapter_kit::conformance_tests!(Postgres);
