//! The parts every pub/sub adapter built on the kit holds, and the glue
//! between them and [`cable_core::pubsub::PubSub`].

use cable_core::pubsub::Delivery;

use crate::{Backend, LazyPublisher, Publish, Status, Subscriber};

/// An adapter's subscriber task, its status and its lazy publisher, started
/// together by [`Wiring::spawn`].
pub struct Wiring<P: Publish> {
    /// The subscriber task's handle.
    pub subscriber: Subscriber,
    /// The subscriber connection's state (shared with the task).
    pub status: Status,
    /// The publishing connection, opened on the first broadcast.
    pub publisher: LazyPublisher<P>,
}

impl<P: Publish> Wiring<P> {
    /// Starts the subscriber task for `backend` on the current tokio runtime
    /// (see [`Subscriber::spawn`]) and wraps `publish` in a
    /// [`LazyPublisher`]. Connects nothing itself.
    ///
    /// Fails when called outside a tokio runtime.
    pub fn spawn<B: Backend>(
        backend: B,
        delivery: Delivery,
        url: String,
        publish: P,
    ) -> Result<Self, tokio::runtime::TryCurrentError> {
        let subscriber = Subscriber::spawn(backend, delivery, url)?;
        Ok(Wiring {
            status: subscriber.status(),
            subscriber,
            publisher: LazyPublisher::new(publish),
        })
    }

    /// The `Debug` output of an adapter called `name` built with `config`:
    /// its config, whether it is connected and how often it reconnected.
    pub fn fmt_adapter(
        &self,
        f: &mut std::fmt::Formatter<'_>,
        name: &str,
        config: &dyn std::fmt::Debug,
    ) -> std::fmt::Result {
        f.debug_struct(name)
            .field("config", config)
            .field("connected", &self.status.is_connected())
            .field("reconnects", &self.status.reconnects())
            .finish()
    }
}

/// `impl PubSub for $adapter` for an adapter with a `wiring:` [`Wiring`]
/// field that maps a stream to its backend channel with the method
/// `$channel`: broadcasts go through the lazy publisher, subscribes and
/// unsubscribes through the subscriber task, the status methods are the
/// subscriber's [`Status`](crate::Status), and `name` is `$name`.
#[macro_export]
macro_rules! wired_pubsub {
    ($adapter:ty, $channel:ident, $name:literal) => {
        #[$crate::async_trait]
        impl $crate::__cable_core::pubsub::PubSub for $adapter {
            async fn broadcast(
                &self,
                stream: &str,
                payload: &str,
            ) -> Result<(), $crate::__cable_core::pubsub::PubSubError> {
                self.wiring
                    .publisher
                    .publish(&self.$channel(stream), payload)
                    .await
            }

            fn subscribe(&self, stream: &str) -> $crate::__cable_core::pubsub::Ack {
                self.wiring
                    .subscriber
                    .subscribe(stream, self.$channel(stream))
            }

            fn unsubscribe(&self, stream: &str) -> $crate::__cable_core::pubsub::Ack {
                self.wiring
                    .subscriber
                    .unsubscribe(stream, self.$channel(stream))
            }

            fn reconnects(&self) -> u64 {
                self.wiring.status.reconnects()
            }

            fn is_connected(&self) -> bool {
                self.wiring.status.is_connected()
            }

            fn backlog(&self) -> u64 {
                self.wiring.status.backlog()
            }

            fn dropped(&self) -> u64 {
                self.wiring.status.dropped()
            }

            fn name(&self) -> &'static str {
                $name
            }
        }
    };
}
