//! `cable-core`: the socket-free heart of cable, an ActionCable-compatible
//! channel server.
//!
//! It speaks Rails' `actioncable-v1-json` protocol (and AnyCable's
//! `actioncable-v1-ext-json` beside it: session ids and resume, stream
//! positions and history, pongs) as frames in and frames out: a transport (see the `cable-server` crate) hands a connection's text
//! frames to [`transport::run_connection`] and writes out whatever appears
//! in the connection's [`transport::Outbox`]. Nothing here opens a socket or
//! parses HTTP, which is what makes the protocol testable end to end with
//! plain channels.
//!
//! The pieces mirror Rails: a [`Cable`] server holds the registered
//! [`Channel`]s, the connection hook ([`Authenticate`], Rails' `connect` and
//! `identified_by`) and a [`pubsub::PubSub`] adapter (Rails' subscription
//! adapter; the in-memory [`pubsub::MemoryPubSub`] is the default). Each
//! subscription gets its own channel instance and a [`Context`] to stream,
//! transmit and reject.
//!
//! The API is grouped by who uses it:
//! - the crate root, for application authors: [`Cable`], [`CableBuilder`],
//!   [`Channel`], [`Context`], [`Broadcaster`], the connection hook
//!   ([`Authenticate`], [`ConnectRequest`], [`Identifiers`]) and settings;
//! - [`transport`], for transports (the WebSocket server, a test driver):
//!   [`Inbound`](transport::Inbound), [`Outbox`](transport::Outbox),
//!   [`run_connection`](transport::run_connection), heartbeat, shutdown;
//! - [`pubsub`], for adapter authors: [`PubSub`](pubsub::PubSub),
//!   [`Delivery`](pubsub::Delivery), [`Ack`](pubsub::Ack),
//!   [`Backoff`](pubsub::Backoff);
//! - [`broker`], for broker authors: [`Broker`](broker::Broker), the history
//!   and session store behind reliable streams, and
//!   [`MemoryBroker`](broker::MemoryBroker), the default (set another with
//!   [`CableBuilder::broker`]);
//! - [`intake`], for broadcast intakes (HTTP, Redis): AnyCable's broadcast
//!   messages, parsed and applied;
//! - [`protocol`] and [`json`]: the wire format.
//!
//! ```
//! use cable_core::{async_trait, authenticate_with, Cable, Channel, ChannelError, Context,
//!     ConnectRequest, Identifiers, Unauthorized};
//! use cable_core::transport::{self, Inbound};
//! use serde_json::{json, Value};
//!
//! #[derive(Default)]
//! struct ChatChannel;
//!
//! #[async_trait]
//! impl Channel for ChatChannel {
//!     async fn subscribed(&mut self, ctx: &mut Context<'_>) -> Result<(), ChannelError> {
//!         let room = ctx.param_str("room").unwrap_or("lobby").to_owned();
//!         ctx.stream_from(format!("chat_{room}"));
//!         Ok(())
//!     }
//!     async fn perform(&mut self, ctx: &mut Context<'_>, action: &str, data: Value) -> Result<(), ChannelError> {
//!         match action {
//!             "speak" => {
//!                 let user = ctx.identified("current_user").unwrap_or("anon").to_owned();
//!                 let room = ctx.param_str("room").unwrap_or("lobby").to_owned();
//!                 ctx.broadcast(&format!("chat_{room}"), &json!({"user": user, "body": data["body"]})).await
//!             }
//!             _ => Err(ChannelError::UnknownAction(action.into())),
//!         }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let cable = Cable::builder()
//!     .channel("ChatChannel", ChatChannel::default)
//!     .authenticate(authenticate_with(|req: ConnectRequest| async move {
//!         req.query("user")
//!             .map(|u| Identifiers::new().with("current_user", u))
//!             .ok_or_else(|| Unauthorized::because("no user"))
//!     }))
//!     .build();
//!
//! // A connection driven by hand: frames in through a channel, frames out of the outbox.
//! let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
//! let inbound = tokio_stream_shim(rx);
//! let outbox = transport::new_outbox(&cable);
//! let request = ConnectRequest::new("/cable", Some("user=alice"), vec![], None);
//! let id = r#"{"channel":"ChatChannel","room":"1"}"#;
//! tx.send(Inbound::Text(json!({"command": "subscribe", "identifier": id}).to_string())).unwrap();
//! drop(tx);
//! transport::run_connection(&cable, request, inbound, outbox.clone()).await;
//! let mut out = Vec::new();
//! outbox.pop_batch(&mut out, 16).await;
//! assert_eq!(format!("{:?}", out[0]), r#"Text(Frame("{\"type\":\"welcome\"}"))"#);
//! # }
//! # fn tokio_stream_shim(mut rx: tokio::sync::mpsc::UnboundedReceiver<Inbound>) -> impl futures_util::Stream<Item = Inbound> + Unpin {
//! #     Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
//! # }
//! ```

#![deny(missing_docs)]
#![warn(unreachable_pub)]

mod auth;
mod backoff;
pub mod broker;
mod cable;
mod channel;
mod connection;
mod extensions;
mod hub;
mod ids;
pub mod intake;
pub mod json;
mod logging;
mod mailbox;
mod naming;
mod outbox;
mod presence;
pub mod protocol;
pub mod pubsub;
mod redact;
mod reliable;
mod small_map;
pub mod transport;

pub use async_trait::async_trait;
/// Typed actions: `#[channel]` on `impl Channel for …` makes its `#[action]`
/// methods the channel's actions, each with its data decoded by serde (see
/// [`ActionData`]). Feature `macros` (on by default).
#[cfg(feature = "macros")]
pub use cable_macros::{action, channel};

/// What the macros' expansions name; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use serde_json::Value;

    use crate::{ActionData, ChannelError};

    /// Decodes an action's data into `T`, its `action` key taken out.
    pub fn action_data<T: ActionData>(action: &str, mut data: Value) -> Result<T, ChannelError> {
        if let Value::Object(map) = &mut data {
            map.remove("action");
        }
        serde_json::from_value(data).map_err(|e| {
            let ty = std::any::type_name::<T>();
            let ty = ty.rsplit("::").next().unwrap_or(ty);
            ChannelError::InvalidData(format!("{e} (action `{action}` takes {ty})"))
        })
    }
}

#[doc(inline)]
pub use crate::{
    auth::{
        authenticate_with, AllowAll, AuthFn, Authenticate, ConnectRequest, Identifiers,
        IdentifiersJsonError, Unauthorized,
    },
    cable::{Broadcaster, Cable, CableBuilder, CableConfig, CommandRate, Publication, Stats},
    channel::{ActionData, Channel, ChannelError, ChannelResult, Context, Params, StreamOptions},
    extensions::Extensions,
    naming::{broadcasting_for, channel_name, ToParam},
    pubsub::PubSubError,
    redact::redact_url,
};
