//! One integration-test binary (see ripgrep's layout): the chat example over
//! real sockets, driven by a raw WebSocket client, asserting exact frames.

mod architecture;
mod chat_process;
mod handshake;
mod hardening;
mod hostile;
mod multinode;
mod process;
mod protocol;
mod support;
