//! The broker conformance suite against cable-core's `MemoryBroker`: the
//! embedded default keeps the contract the Redis and PostgreSQL brokers
//! keep, and the suite runs without any server. Two "nodes" are clones of
//! one broker, which share its store.

use cable_core::broker::MemoryBroker;

use crate::broker_conformance::BrokerConformance;

struct MemorySuite(MemoryBroker);

#[async_trait::async_trait]
impl BrokerConformance for MemorySuite {
    type Broker = MemoryBroker;

    async fn setup() -> Option<Self> {
        Some(MemorySuite(MemoryBroker::new()))
    }

    fn broker(&self) -> MemoryBroker {
        self.0.clone()
    }

    async fn lose_history(&self, stream: &str) {
        self.0.forget(stream);
    }

    fn unreachable(&self) -> Option<MemoryBroker> {
        None
    }
}

crate::broker_conformance_tests!(MemorySuite);
