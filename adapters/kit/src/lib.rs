//! `cable-adapter-kit`: the skeleton every cable pub/sub adapter is built on,
//! and (feature `conformance`) the suite each adapter runs against its real
//! server.
//!
//! An adapter supplies a [`Backend`] (open a subscriber connection: a
//! [`Session`] that (un)subscribes batches of backend channels and pings)
//! and a [`Publish`] (open a publishing connection, publish one message).
//! The kit supplies the rest, once for every backend:
//!
//! - [`Subscriber`]: one task owning the subscriber connection. `subscribe`
//!   and `unsubscribe` are queued before they return, so they take effect in
//!   call order; whatever is queued when the task wakes goes as one batch;
//!   each [`Ack`](cable_core::pubsub::Ack) is bounded by [`ACK_TIMEOUT`] from
//!   the call. The channels wanted (and which streams each carries) are kept
//!   whether or not the backend is up; a new connection subscribes them all.
//!   The connection is pinged every [`PING_INTERVAL`]; when it is lost the
//!   task reconnects with jittered [`Backoff`](cable_core::pubsub::Backoff),
//!   counts the reconnection and logs the outage once, not per retry.
//! - [`Incoming`]: where the driver puts messages, either delivered at once
//!   (the backend holds the rest back) or through an [`Inbox`] bounded in
//!   bytes (drivers that must not wait), drained by a task of its own so
//!   messages flow while a subscribe waits for its reply.
//! - [`LazyPublisher`]: the publishing connection, opened on first use,
//!   replaced after a failure, every broadcast bounded by [`PUBLISH_TIMEOUT`].
//!
//! - [`broker::LazyConnection`]: the same for a history broker
//!   (`cable_core::broker::Broker`): one connection for every call, opened
//!   on first use, replaced after a failure, every call bounded by
//!   [`broker::BROKER_TIMEOUT`] and failing with `BrokerError::Unavailable`
//!   while the backend is away.
//!
//! The contract all of this implements is `cable_core::pubsub::PubSub`'s;
//! the conformance suite (module `conformance`, feature `conformance`) checks it
//! against each adapter's real server. The broker conformance suite
//! (module `broker_conformance`, same feature) does the same for
//! `cable_core::broker::Broker`.
//!
//! # Example
//! A backend whose sessions subscribe anything at once (a real one talks to
//! a server and hands what it receives to [`Incoming`]):
//!
//! ```
//! use cable_adapter_kit::{async_trait, Backend, Incoming, Op, Session, Subscriber};
//! use cable_core::pubsub::Delivery;
//! use cable_core::PubSubError;
//!
//! struct Loopback;
//! struct LoopbackSession(Incoming);
//!
//! #[async_trait]
//! impl Backend for Loopback {
//!     type Session = LoopbackSession;
//!     const NAME: &'static str = "loopback";
//!     async fn connect(&self, incoming: Incoming) -> Result<LoopbackSession, String> {
//!         Ok(LoopbackSession(incoming))
//!     }
//! }
//!
//! #[async_trait]
//! impl Session for LoopbackSession {
//!     async fn apply(&mut self, ops: &[(Op, &str)]) -> Result<Vec<Result<(), PubSubError>>, String> {
//!         Ok(ops.iter().map(|_| Ok(())).collect())
//!     }
//!     async fn ping(&mut self) -> Result<(), String> {
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let subscriber = Subscriber::spawn(Loopback, Delivery::detached(), "loopback://".into())
//!     .expect("inside a runtime");
//! // Applied in call order; the Ack resolves once the backend has replied.
//! subscriber.subscribe("chat_lobby", "app:chat_lobby".into()).await.expect("subscribed");
//! assert!(subscriber.status().is_connected());
//! subscriber.unsubscribe("chat_lobby", "app:chat_lobby".into()).await.expect("unsubscribed");
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![warn(unreachable_pub)]

mod adapter;
mod inbox;
pub mod intake;
mod publisher;
mod slot;
mod state;
mod subscriber;

pub mod broker;
#[cfg(feature = "conformance")]
pub mod broker_conformance;
#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "conformance")]
mod own;

use std::time::Duration;

pub use async_trait::async_trait;
#[doc(hidden)]
pub use cable_core as __cable_core;
use cable_core::PubSubError;

pub use crate::adapter::Wiring;
pub use crate::inbox::Inbox;
pub use crate::publisher::{LazyPublisher, Publish, PublishFailure, RETRY_HOLDOFF};
pub use crate::slot::Failure;
pub use crate::subscriber::{Incoming, Status, Subscriber};

/// How long a broadcast may take, connecting included, before it fails.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a subscribe or unsubscribe may wait for the backend's reply
/// (including for the connection to come back) before its `Ack` fails.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one connection attempt of the subscriber.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the backend's reply to one batch or one ping; past it the
/// connection is considered dead.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an otherwise quiet subscriber connection is pinged: a peer that
/// vanished without closing TCP (network partition, VM pause) is noticed
/// within `PING_INTERVAL + REPLY_TIMEOUT`.
pub const PING_INTERVAL: Duration = Duration::from_secs(15);

/// Builder methods of a settings struct, each taking `self` and returning
/// it with one field set: `$(#[doc])* name(arg: Type) => field = value;`,
/// written inside the struct's `impl` block.
///
/// ```
/// pub struct Config { pub name: String, pub prefix: Option<String> }
/// impl Config {
///     cable_adapter_kit::setters! {
///         /// Sets the name.
///         name(name: impl Into<String>) => name = name.into();
///         /// Sets the prefix.
///         prefix(prefix: impl Into<String>) => prefix = Some(prefix.into());
///     }
/// }
/// let c = Config { name: String::new(), prefix: None }.name("a").prefix("p");
/// assert_eq!((c.name.as_str(), c.prefix.as_deref()), ("a", Some("p")));
/// ```
#[macro_export]
macro_rules! setters {
    ($($(#[$meta:meta])* $name:ident($arg:ident: $ty:ty) => $field:ident = $value:expr;)*) => {
        $(
            $(#[$meta])*
            pub fn $name(mut self, $arg: $ty) -> Self {
                self.$field = $value;
                self
            }
        )*
    };
}

/// `impl Debug` for a settings struct with a `url` field, shown with its
/// secrets masked ([`cable_core::redact_url`]), and the other `$field`s as
/// they are.
///
/// ```
/// pub struct Config { pub url: String, pub name: String }
/// cable_adapter_kit::debug_redacting_url!(Config, name);
/// let c = Config { url: "redis://:hunter2@h".into(), name: "a".into() };
/// assert!(!format!("{c:?}").contains("hunter2"));
/// ```
#[macro_export]
macro_rules! debug_redacting_url {
    ($type:ident, $($field:ident),* $(,)?) => {
        impl ::std::fmt::Debug for $type {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(stringify!($type))
                    .field("url", &$crate::redact_url(&self.url))
                    $(.field(stringify!($field), &self.$field))*
                    .finish()
            }
        }
    };
}

#[doc(hidden)]
pub use cable_core::redact_url;

/// What a batch entry asks of the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Start receiving a channel (SUBSCRIBE, LISTEN).
    Subscribe = 0,
    /// Stop receiving a channel (UNSUBSCRIBE, UNLISTEN).
    Unsubscribe = 1,
}

/// A backend's subscriber side: how to open one connection.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// One open subscriber connection.
    type Session: Session;
    /// The backend's name for logs and errors ("redis", "postgres").
    const NAME: &'static str;
    /// What logs call the subscriber connection ("listener" for PostgreSQL).
    const ROLE: &'static str = "subscriber";
    /// Most operations sent in one [`Session::apply`].
    const MAX_BATCH: usize = 512;
    /// The backend's words for [`Op::Subscribe`] and [`Op::Unsubscribe`].
    const VERBS: [&'static str; 2] = ["SUBSCRIBE", "UNSUBSCRIBE"];
    /// The backend's word for `op`, for logs and errors.
    fn verb(op: Op) -> &'static str {
        Self::VERBS[op as usize]
    }
    /// Opens a subscriber connection whose messages go to `incoming` (and
    /// which calls [`Incoming::lost`] when it ends). Bounded by
    /// [`CONNECT_TIMEOUT`] by the kit. Err with the reason, for logs.
    async fn connect(&self, incoming: Incoming) -> Result<Self::Session, String>;
}

/// One subscriber connection. Dropping it closes the connection.
#[async_trait]
pub trait Session: Send + 'static {
    /// Applies `ops` in order: one result per op (the backend may refuse one
    /// channel, say by ACL, and the rest still apply), or Err(reason) when
    /// the connection is unusable. Bounded by [`REPLY_TIMEOUT`] by the kit.
    async fn apply(&mut self, ops: &[(Op, &str)]) -> Result<Vec<Result<(), PubSubError>>, String>;
    /// Checks that the connection is alive; Err(reason) when it is not.
    async fn ping(&mut self) -> Result<(), String>;
    /// The channels the backend says this connection is subscribed to, for
    /// diagnostics and tests. On failure: the error, and Some(reason) when
    /// the connection is unusable.
    async fn subscriptions(&mut self) -> Result<Vec<String>, (PubSubError, Option<String>)> {
        Err((
            PubSubError::Backend("this backend cannot list a connection's subscriptions".into()),
            None,
        ))
    }
}

#[cfg(test)]
mod tests;
// The broker suite against cable-core's MemoryBroker.
#[cfg(all(test, feature = "conformance"))]
mod broker_memory;
