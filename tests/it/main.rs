//! One integration-test binary (see ripgrep's layout): the chat example over
//! real sockets, driven by a raw WebSocket client, asserting exact frames.

mod architecture;
mod handshake;
mod hardening;
mod hostile;
mod protocol;
mod support;
