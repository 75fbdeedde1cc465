//! The pub/sub conformance suite of `cable-adapter-kit`, against the shared
//! Redis (`REDIS_URL`).

use cable_adapter_kit::conformance::Conformance;
use cable_core::async_trait;
use cable_core::pubsub::Delivery;
use cable_redis::{RedisConfig, RedisPubSub};

use crate::support::{numsub, shared_redis};

pub struct Redis {
    url: String,
    conn: redis::aio::MultiplexedConnection,
}

#[async_trait]
impl Conformance for Redis {
    type Adapter = RedisPubSub;
    /// The connection name, shared by the node's two connections.
    type Node = String;

    async fn setup() -> Option<Self> {
        let (url, conn) = shared_redis().await?;
        Some(Redis { url, conn })
    }

    fn adapter(&self, prefix: &str, node: &str, delivery: Delivery) -> (RedisPubSub, String) {
        let config = RedisConfig::new(&self.url)
            .channel_prefix(prefix)
            .connection_name(node);
        let adapter = RedisPubSub::new(config, delivery).expect("valid redis config");
        (adapter, node.to_owned())
    }

    fn unreachable(&self, prefix: &str, delivery: Delivery) -> RedisPubSub {
        // Nothing listens on port 1.
        let config = RedisConfig::new("redis://127.0.0.1:1").channel_prefix(prefix);
        RedisPubSub::new(config, delivery).expect("valid redis config")
    }

    /// `PUBSUB NUMSUB` counts every node on the server at once.
    async fn backend_subscriptions(&self, _nodes: &[&String], prefix: &str, stream: &str) -> usize {
        let n = numsub(&mut self.conn.clone(), &format!("{prefix}:{stream}")).await;
        usize::try_from(n).unwrap_or(0)
    }

    /// `CLIENT KILL ID` for every connection named as the node, the
    /// other tests' connections untouched.
    async fn break_connections(&self, node: &String) {
        let mut conn = self.conn.clone();
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut conn)
            .await
            .expect("CLIENT LIST");
        let name = format!("name={node}");
        let ids: Vec<String> = list
            .lines()
            .filter(|l| l.split(' ').any(|f| f == name))
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .map(str::to_owned)
            .collect();
        assert!(!ids.is_empty(), "no connection named {node}");
        for id in ids {
            let _: redis::Value = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(&id)
                .query_async(&mut conn)
                .await
                .expect("CLIENT KILL");
        }
    }

    /// Redis takes payloads up to 512 MB.
    fn payload_limit(&self) -> Option<usize> {
        None
    }
}

cable_adapter_kit::conformance_tests!(Redis);
