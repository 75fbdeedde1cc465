//! `cable-test`: the test kit of cable, for its own tests and for yours.
//!
//! End-to-end pieces, over real sockets, that speak to any ActionCable
//! server (cable, or Rails itself):
//! - [`Client`]: a raw `actioncable-v1-json` WebSocket client that asserts
//!   exact frames ([`Client::expect`]), skips pings, and knows Rails' close
//!   handshake ([`Client::expect_close`], [`Client::leave`]);
//! - [`frames`]: the frames Rails sends, byte for byte ([`frames::confirm`],
//!   [`frames::reject`], [`frames::message`]);
//! - [`TestServer`]: a `Cable` served in-process on a free port;
//! - [`http`]: a bare HTTP/1.1 request (operator endpoints, broadcasts);
//! - [`eventually`]: poll a condition until it holds, or fail with what was
//!   awaited.
//!
//! Every wait is bounded by [`WAIT`] and panics with what it was waiting
//! for: these are test helpers, and a panic is a failed test.
//!
//! ```
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

#![deny(missing_docs)]
#![warn(unreachable_pub)]

mod client;
pub mod frames;
mod http_client;
mod server;

use std::future::Future;
use std::time::Duration;

pub use crate::client::{request, Client, Ws, JS_CLIENT_PROTOCOLS};
pub use crate::http_client::http;
pub use crate::server::TestServer;

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
