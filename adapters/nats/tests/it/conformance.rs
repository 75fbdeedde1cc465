//! The pub/sub conformance suite of `cable-adapter-kit`, against the shared
//! NATS (`NATS_URL`). Each node reaches it through a [`Proxy`] of its own,
//! which counts the node's subscriptions and cuts its connections.

use std::sync::Arc;

use cable_adapter_kit::conformance::Conformance;
use cable_core::async_trait;
use cable_core::pubsub::Delivery;
use cable_nats::{NatsConfig, NatsPubSub};

use crate::support::{shared_nats, subject, Proxy};

pub struct Nats {
    url: String,
    max_payload: usize,
}

#[async_trait]
impl Conformance for Nats {
    type Adapter = NatsPubSub;
    type Node = Arc<Proxy>;

    async fn setup() -> Option<Self> {
        let (url, client) = shared_nats().await?;
        Some(Nats {
            url,
            max_payload: client.server_info().max_payload,
        })
    }

    fn adapter(&self, prefix: &str, node: &str, delivery: Delivery) -> (NatsPubSub, Arc<Proxy>) {
        let proxy = Arc::new(Proxy::start(&self.url));
        let config = NatsConfig::new(proxy.url())
            .subject_prefix(prefix)
            .connection_name(node);
        let adapter = NatsPubSub::new(config, delivery).expect("valid nats config");
        (adapter, proxy)
    }

    fn unreachable(&self, prefix: &str, delivery: Delivery) -> NatsPubSub {
        // Nothing listens on port 1.
        let config = NatsConfig::new("nats://127.0.0.1:1").subject_prefix(prefix);
        NatsPubSub::new(config, delivery).expect("valid nats config")
    }

    async fn backend_subscriptions(
        &self,
        nodes: &[&Arc<Proxy>],
        prefix: &str,
        stream: &str,
    ) -> usize {
        let subject = subject(prefix, stream);
        nodes.iter().map(|p| p.subscriptions(&subject)).sum()
    }

    async fn break_connections(&self, node: &Arc<Proxy>) {
        node.cut();
    }

    /// The server's `max_payload` (1 MiB unless configured).
    fn payload_limit(&self) -> Option<usize> {
        Some(self.max_payload)
    }
}

cable_adapter_kit::conformance_tests!(Nats);
