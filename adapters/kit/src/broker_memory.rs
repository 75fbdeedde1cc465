//! The broker conformance suite against cable-core's `MemoryBroker`: the
//! embedded default keeps the contract the Redis and PostgreSQL brokers
//! keep, and the suite runs without any server. Two "nodes" share one
//! broker, as two `Cable`s of one process can.

use std::sync::Arc;

use cable_core::broker::MemoryBroker;

use crate::broker_conformance::BrokerConformance;

struct MemorySuite(Arc<MemoryBroker>);

#[async_trait::async_trait]
impl BrokerConformance for MemorySuite {
    type Broker = Arc<MemoryBroker>;

    async fn setup() -> Option<Self> {
        Some(MemorySuite(Arc::new(MemoryBroker::new())))
    }

    fn broker(&self) -> Arc<MemoryBroker> {
        self.0.clone()
    }

    async fn lose_history(&self, stream: &str) {
        self.0.forget(stream);
    }

    fn unreachable(&self) -> Option<Arc<MemoryBroker>> {
        None
    }
}

crate::broker_conformance_tests!(MemorySuite);
