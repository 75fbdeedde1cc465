//! B1: a bare tokio-tungstenite fan-out server answering websocket-shootout's
//! BenchmarkChannel frames with pre-encoded bytes and nothing else: no
//! channel objects, no registry of streams, no heartbeat, no auth, no limits.
//! It is the practical ceiling of this stack, the baseline cable is held to.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

type Subscribers = RwLock<HashMap<u64, mpsc::UnboundedSender<Message>>>;

#[derive(Deserialize)]
struct Command {
    command: String,
    identifier: String,
    data: Option<String>,
}

struct Frames {
    welcome: Utf8Bytes,
}

/// Accepts connections on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    let subs: Arc<Subscribers> = Arc::default();
    let frames = Arc::new(Frames {
        welcome: Utf8Bytes::from_static(r#"{"type":"welcome"}"#),
    });
    let ids = AtomicU64::new(0);
    loop {
        let (tcp, _) = listener.accept().await?;
        let id = ids.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(id, tcp, subs.clone(), frames.clone()));
    }
}

async fn connection(id: u64, tcp: TcpStream, subs: Arc<Subscribers>, frames: Arc<Frames>) {
    let _ = tcp.set_nodelay(true);
    // The callback's error type is tungstenite's (large) HTTP response.
    #[allow(clippy::result_large_err)]
    let choose = |req: &Request, mut resp: Response| {
        let offered = req
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if offered
            .split(',')
            .any(|p| p.trim() == "actioncable-v1-json")
        {
            resp.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static("actioncable-v1-json"),
            );
        }
        Ok(resp)
    };
    // The same socket settings as cable's defaults: frames are buffered by
    // `feed` and written by `flush`, one write per batch.
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024);
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(tcp, choose, Some(config)).await
    else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.feed(m).await.is_err() {
                return;
            }
            while let Ok(m) = rx.try_recv() {
                if sink.feed(m).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let _ = tx.send(Message::Text(frames.welcome.clone()));
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(cmd) = serde_json::from_str::<Command>(&text) else {
            continue;
        };
        // {"identifier":<identifier as a JSON string>,"message":
        let prefix = format!(
            r#"{{"identifier":{},"message":"#,
            serde_json::to_string(&cmd.identifier).unwrap_or_default()
        );
        match cmd.command.as_str() {
            "subscribe" => {
                subs.write().expect("lock").insert(id, tx.clone());
                let confirm = format!(
                    r#"{{"identifier":{},"type":"confirm_subscription"}}"#,
                    serde_json::to_string(&cmd.identifier).unwrap_or_default()
                );
                let _ = tx.send(Message::text(confirm));
            }
            "message" => {
                let Some(data) = cmd.data else { continue };
                if data.contains(r#""action":"broadcast""#) {
                    let all = Message::text(format!("{prefix}{data}}}"));
                    for s in subs.read().expect("lock").values() {
                        let _ = s.send(all.clone());
                    }
                    let result = data.replacen(
                        r#""action":"broadcast""#,
                        r#""action":"broadcastResult""#,
                        1,
                    );
                    let _ = tx.send(Message::text(format!("{prefix}{result}}}")));
                } else if data.contains(r#""action":"echo""#) {
                    let _ = tx.send(Message::text(format!("{prefix}{data}}}")));
                }
            }
            _ => {}
        }
    }
    subs.write().expect("lock").remove(&id);
    drop(tx);
    let _ = writer.await;
}
