//! Reliable streams across nodes: two in-process nodes on one real backend
//! and one broker. A stream marked by a channel on one node keeps history
//! when the other broadcasts, and the position travels with the payload
//! through the adapter (the positioned envelope) into the first node's
//! frames.

use std::sync::Arc;

use cable_core::broker::{Broker, MemoryBroker};
use cable_core::{async_trait, Cable, Channel, ChannelError, Context};
use cable_postgres::{PostgresConfig, PostgresPubSub};
use cable_redis::{RedisConfig, RedisPubSub};
use cable_test::{Request, TestCable};
use serde_json::{json, Value};

use super::support::*;

/// Streams from its `stream` param with history.
#[derive(Default)]
struct News;

#[async_trait]
impl Channel for News {
    async fn subscribed(&mut self, ctx: &mut Context<'_>) -> Result<(), ChannelError> {
        let stream = ctx.param_str("stream").unwrap_or("news").to_owned();
        ctx.stream_from_with_history(stream);
        Ok(())
    }
}

fn node(shared: &Shared, broker: Arc<dyn Broker>) -> Cable {
    let builder = Cable::builder()
        .channel("NewsChannel", News::default)
        .shared_broker(broker);
    match shared.kind {
        Kind::Redis => {
            let config = RedisConfig::new(&shared.url).channel_prefix(&shared.prefix);
            builder
                .try_pubsub(move |d| RedisPubSub::new(config, d))
                .unwrap()
                .build()
        }
        Kind::Postgres => {
            let config = PostgresConfig::new(&shared.url).channel_prefix(&shared.prefix);
            builder
                .try_pubsub(move |d| PostgresPubSub::new(config, d))
                .unwrap()
                .build()
        }
    }
}

both!(positions_cross_nodes_through_the_adapter);

async fn positions_cross_nodes_through_the_adapter(kind: Kind) {
    let Some(shared) = kind.shared().await else {
        return;
    };
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let a = TestCable::from_cable(node(&shared, broker.clone()));
    let b = node(&shared, broker.clone());
    let stream = format!("news_{}", shared.prefix);
    let conn = a.connect(Request::new().ext()).await.unwrap();
    let sub = conn
        .subscribe("NewsChannel", json!({ "stream": stream }))
        .await;
    sub.assert_confirmed();
    for n in 1..=2 {
        b.broadcast(&stream, &json!({ "n": n })).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 2 {
        let frame: Value = serde_json::from_str(&conn.next_text().await).unwrap();
        if frame.get("message").is_some() {
            got.push(frame);
        }
    }
    assert_eq!(got[0]["message"], json!({"n": 1}));
    assert_eq!(got[0]["stream_id"], stream.as_str());
    assert_eq!(got[0]["offset"], 1);
    assert_eq!(got[1]["offset"], 2);
    assert_eq!(got[0]["epoch"], got[1]["epoch"]);
    assert_eq!(b.stats().history_appends, 2);
    // What node A's clients can ask for later is what B published.
    let h = broker.history_since(&stream, 0).await.unwrap();
    assert_eq!(h.entries.len(), 2);
    assert_eq!(h.epoch, got[0]["epoch"].as_str().unwrap());
}
