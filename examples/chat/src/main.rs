//! `chat`: the cable chat example server (the code is `chat_example::cli`).

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    chat_example::cli::run().await
}
