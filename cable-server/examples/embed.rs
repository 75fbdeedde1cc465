//! The README's embedding example (a test checks the README shows this file
//! as it is): a channel inside an axum app with state of its own, served by
//! the app's own `axum::serve`. `cargo run -p cable-server --example embed`;
//! a page on http://127.0.0.1:3000 subscribes with `@rails/actioncable`
//! (`createConsumer("/cable").subscriptions.create("ChatChannel", …)`), and
//! `curl -d hi 127.0.0.1:3000/announce` reaches it.
use axum::{extract::State, routing::post, Router};
use cable_core::{async_trait, Cable, Channel, ChannelResult, Context};

#[derive(Default)]
struct ChatChannel;

#[async_trait]
impl Channel for ChatChannel {
    async fn subscribed(&mut self, ctx: &mut Context<'_>) -> ChannelResult {
        ctx.stream_from("chat");
        Ok(())
    }
}

#[derive(Clone)]
struct AppState {
    cable: Cable,
}

async fn announce(State(app): State<AppState>, body: String) {
    let _ = app
        .cable
        .broadcast("chat", &serde_json::json!({ "body": body }))
        .await;
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let cable = Cable::builder()
        .channel("ChatChannel", ChatChannel::default)
        .build();
    let app = Router::new()
        .route("/announce", post(announce))
        .merge(cable_server::router(cable.clone(), Default::default()))
        .with_state(AppState {
            cable: cable.clone(),
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            cable_server::shutdown_signal().await;
            cable_server::shutdown(&cable, std::time::Duration::from_secs(10)).await;
        })
        .await
}
