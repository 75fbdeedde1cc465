//! `chat`: the cable chat example server.

use std::net::SocketAddr;
use std::time::Duration;

use cable_server::{serve, shutdown_signal, AllowedOrigin};
use clap::Parser;

/// A chat room on cable's in-memory adapter, with the unmodified
/// @rails/actioncable client in the page.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    bind: SocketAddr,
    /// An allowed Origin, exactly (repeatable). Same-origin requests are always allowed.
    #[arg(long = "allowed-origin")]
    allowed_origins: Vec<String>,
    /// An allowed Origin pattern, a regular expression matched anywhere (repeatable).
    #[arg(long = "allowed-origin-regex")]
    allowed_origin_regexes: Vec<String>,
    /// Skip the Origin check entirely.
    #[arg(long)]
    disable_origin_check: bool,
    /// Serve POST /admin/broadcast and /admin/disconnect (loopback clients only).
    #[arg(long)]
    admin: bool,
    /// Seconds to wait for clients to leave on shutdown.
    #[arg(long, default_value_t = 10)]
    shutdown_timeout: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let mut opts = chat_example::Options {
        admin: args.admin,
        ..Default::default()
    };
    opts.server.origins.disabled = args.disable_origin_check;
    opts.server.origins.allowed = args
        .allowed_origins
        .into_iter()
        .map(AllowedOrigin::from)
        .collect();
    for re in &args.allowed_origin_regexes {
        opts.server.origins.allowed.push(
            AllowedOrigin::pattern(re)
                .map_err(|e| format!("--allowed-origin-regex {re:?}: {e}"))?,
        );
    }
    let cable = chat_example::cable_builder().build();
    let app = chat_example::app(cable.clone(), &opts);
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.bind))?;
    tracing::info!(
        "chat example listening on http://{}",
        listener.local_addr()?
    );
    serve(
        listener,
        app,
        cable,
        shutdown_signal(),
        Duration::from_secs(args.shutdown_timeout),
    )
    .await?;
    tracing::info!("bye");
    Ok(())
}
