//! `cable-b1`: the B1 baseline server (see `cable_loadgen::b1`).

use clap::Parser;

/// Bare tokio-tungstenite fan-out server for websocket-shootout's
/// BenchmarkChannel frames: the ceiling cable is measured against.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3334")]
    bind: std::net::SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.bind).await?;
    eprintln!("b1 listening on ws://{}", listener.local_addr()?);
    tokio::select! {
        r = cable_loadgen::b1::serve(listener) => r?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
