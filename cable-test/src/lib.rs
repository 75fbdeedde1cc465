//! `cable-test`: the test kit of cable, for its own tests and for yours.
//!
//! **Without sockets** (Rails' `ActionCable::Channel::TestCase` and
//! `ActionCable::Connection::TestCase`), over the real session code of
//! `cable-core`:
//! - [`TestCable`]: builds your `CableBuilder` with every broadcast
//!   recorded ([`RecordingPubSub`], [`Broadcasts`]:
//!   [`assert_broadcast_on`](TestCable::assert_broadcast_on));
//! - [`TestCable::connect`] runs your connect hook on a [`Request`] (path,
//!   query, headers, cookies, peer) and gives the [`Connection`] or
//!   [`Rejected`]; [`TestCable::stub_connection`] skips the hook;
//! - [`Connection::subscribe`] gives a [`Subscription`]: confirmed or
//!   rejected, [`perform`](Subscription::perform),
//!   [`transmissions`](Subscription::transmissions),
//!   [`assert_has_stream`](Subscription::assert_has_stream),
//!   [`unsubscribe`](Subscription::unsubscribe);
//! - [`Connection::advance`] runs periodic timers on tokio's paused clock;
//! - the extended protocol: [`Request::ext`], [`Connection::sid`],
//!   [`Connection::welcome`];
//! - the wire is there too: [`Connection::send`], [`Connection::frames`],
//!   [`Connection::next_frame`], and [`frames`] (Rails' frames, byte for
//!   byte).
//!
//! Every action waits until the session has handled it (a
//! [`Probe`](cable_core::transport::Probe) sent after it is answered), so
//! assertions never race the session and tests need no sleeps.
//!
//! ```
//! use cable_core::{async_trait, authenticate_with, Cable, Channel, ChannelError, Context,
//!     Identifiers, Unauthorized};
//! use cable_test::{Request, TestCable};
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
//!         let user = ctx.identified("current_user").unwrap_or_default().to_owned();
//!         let room = ctx.param_str("room").unwrap_or("lobby").to_owned();
//!         ctx.broadcast(&format!("chat_{room}"), &json!({"user": user, "body": data["body"]})).await
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let cable = TestCable::new(
//!     Cable::builder()
//!         .channel("ChatChannel", ChatChannel::default)
//!         .authenticate(authenticate_with(|req| async move {
//!             req.cookie("user")
//!                 .map(|u| Identifiers::new().with("current_user", u))
//!                 .ok_or_else(|| Unauthorized::because("no user"))
//!         })),
//! );
//! cable.assert_reject_connection(Request::new()).await;
//! let conn = cable.connect(Request::new().cookie("user", "alice")).await.unwrap();
//! let sub = conn.subscribe("ChatChannel", json!({"room": "1"})).await;
//! sub.assert_confirmed();
//! sub.assert_has_stream("chat_1");
//! sub.perform("speak", json!({"body": "hi"})).await;
//! cable.assert_broadcast_on("chat_1", json!({"user": "alice", "body": "hi"}));
//! // The subscription streams from chat_1, so it gets the broadcast too.
//! assert_eq!(sub.transmissions(), [json!({"user": "alice", "body": "hi"})]);
//! # }
//! ```
//!
//! **Over real sockets** (feature `sockets`, on by default; it brings axum,
//! hyper and tungstenite, which the part above does not need), pieces that
//! speak to any ActionCable server (cable, or Rails itself):
//! - [`Client`]: a raw `actioncable-v1-json` WebSocket client that asserts
//!   exact frames ([`Client::expect`]), skips pings, and knows Rails' close
//!   handshake ([`Client::expect_close`], [`Client::leave`]);
//! - [`TestServer`]: a `Cable` served in-process on a free port;
//! - [`http`](fn@http): a bare HTTP/1.1 request (operator endpoints, broadcasts).
//!
//! For tests of the server itself: [`channels`] (a channel that panics,
//! sleeps or floods on request) and [`model`] (one connection driven by a
//! list of steps, held to the protocol's invariants: the property tests and
//! the fuzz target share it).
//!
//! And for both: [`eventually`] polls a condition until it holds, or fails
//! with what was awaited. Every wait is bounded by [`WAIT`] and panics with
//! what it was waiting for and what came: these are test helpers, and a
//! panic is a failed test.
//!
#![cfg_attr(feature = "sockets", doc = "```")]
#![cfg_attr(not(feature = "sockets"), doc = "```ignore")]
//! use cable_core::{async_trait, Cable, Channel, ChannelError, Context};
//! use cable_test::{frames, Client, TestServer};
//! use serde_json::{json, Value};
//!
//! #[derive(Default)]
//! struct EchoChannel;
//!
//! #[async_trait]
//! impl Channel for EchoChannel {
//!     async fn perform(&mut self, ctx: &mut Context<'_>, _action: &str, data: Value) -> Result<(), ChannelError> {
//!         ctx.transmit(&data)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)] async fn main() {
//! let server = TestServer::start(Cable::builder().channel("EchoChannel", EchoChannel::default)).await;
//! let headers = [("Origin", server.origin()), cable_test::JS_CLIENT_PROTOCOLS];
//! let mut client = Client::connect(&server.url("/cable"), &headers).await;
//! assert_eq!(client.protocol.as_deref(), Some("actioncable-v1-json"));
//! client.expect(r#"{"type":"welcome"}"#).await;
//! let id = r#"{"channel":"EchoChannel"}"#;
//! client.subscribe(id).await;
//! client.perform(id, json!({"action": "echo", "n": 1})).await;
//! client.expect(&frames::message(id, r#"{"action":"echo","n":1}"#)).await;
//! client.leave().await;
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![warn(unreachable_pub)]

pub mod channels;
#[cfg(feature = "sockets")]
mod client;
pub mod frames;
#[cfg(feature = "sockets")]
mod http_client;
pub mod model;
mod recording;
mod request;
#[cfg(feature = "sockets")]
mod server;
mod session;
#[cfg(feature = "sockets")]
mod sse_client;

use std::future::Future;
use std::time::Duration;

#[cfg(feature = "sockets")]
pub use crate::client::{request, Client, Ws, EXT_CLIENT_PROTOCOLS, JS_CLIENT_PROTOCOLS};
#[cfg(feature = "sockets")]
pub use crate::http_client::http;
pub use crate::recording::{Broadcasts, RecordingPubSub};
pub use crate::request::Request;
#[cfg(feature = "sockets")]
pub use crate::server::TestServer;
pub use crate::session::{Connection, Rejected, Subscription, TestCable};
#[cfg(feature = "sockets")]
pub use crate::sse_client::{SseClient, SseEvent};
/// WebSocket close codes, for [`Client::expect_close`].
#[cfg(feature = "sockets")]
pub use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// How long any helper waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);

/// Polls `check` every 20 ms until it holds; panics after [`WAIT`] naming
/// `what`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let started = std::time::Instant::now();
/// cable_test::eventually("50 ms to pass", || async move {
///     started.elapsed() >= std::time::Duration::from_millis(50)
/// })
/// .await;
/// # }
/// ```
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
