//! One integration-test binary (see ripgrep's layout): the chat example over
//! real sockets, driven by a raw WebSocket client, asserting exact frames.

/// `Deref` (and with `mut`, `DerefMut`) from a one-field wrapper to the
/// type it wraps: the helpers here extend `cable-test`'s types that way.
macro_rules! newtype_deref {
    ($outer:ident => $inner:ty) => {
        impl std::ops::Deref for $outer {
            type Target = $inner;
            fn deref(&self) -> &$inner {
                &self.0
            }
        }
    };
    (mut $outer:ident => $inner:ty) => {
        newtype_deref!($outer => $inner);
        impl std::ops::DerefMut for $outer {
            fn deref_mut(&mut self) -> &mut $inner {
                &mut self.0
            }
        }
    };
}

mod architecture;
mod chat_process;
mod embedding;
mod handshake;
mod hardening;
mod hostile;
mod jitter;
mod multinode;
mod process;
mod protocol;
mod reliable;
mod sse;
mod support;
