//! The chat example's command line (`chat_example::cli`), built as a binary
//! of this package so the multi-process tests can start it by
//! `CARGO_BIN_EXE_chat-node` (cargo names only a package's own binaries).
//! It is the same code as `examples/chat`'s `chat`: both only call `run`.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    chat_example::cli::run().await
}
