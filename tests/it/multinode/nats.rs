//! Several `chat` processes on one nats-server through `--adapter
//! nats://…` (`NATS_URL`, default `nats://127.0.0.1:4222`): speaks and
//! remote disconnects cross, and a raw NATS client publishing on a
//! stream's subject reaches its subscribers. Skipped without NATS unless
//! `CI` is set.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::support::*;

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// `host:port` of a `nats://[user:pass@]host[:port]` URL.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    if rest.contains(':') {
        rest.to_owned()
    } else {
        format!("{rest}:4222")
    }
}

/// A raw NATS client: reads INFO, sends CONNECT, and answers `publish`
/// once the server has PONGed after the PUB (so it was routed).
struct RawNats(BufReader<TcpStream>);

impl RawNats {
    async fn connect(url: &str) -> Option<RawNats> {
        let connect = TcpStream::connect(host_port(url));
        let stream = tokio::time::timeout(Duration::from_secs(2), connect)
            .await
            .ok()?
            .ok()?;
        let mut raw = RawNats(BufReader::new(stream));
        let info = raw.line().await?;
        info.starts_with("INFO ").then_some(())?;
        raw.send(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
            .await?;
        (raw.line().await? == "PONG").then_some(raw)
    }

    async fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        let read = self.0.read_line(&mut line);
        tokio::time::timeout(Duration::from_secs(2), read)
            .await
            .ok()?
            .ok()?;
        Some(line.trim_end().to_owned())
    }

    async fn send(&mut self, bytes: &[u8]) -> Option<()> {
        self.0.get_mut().write_all(bytes).await.ok()
    }

    async fn publish(&mut self, subject: &str, payload: &str) {
        let pub_ = format!("PUB {subject} {}\r\n{payload}\r\nPING\r\n", payload.len());
        self.send(pub_.as_bytes()).await.expect("PUB sent");
        assert_eq!(self.line().await.as_deref(), Some("PONG"));
    }
}

/// The shared NATS, a raw client on it, and a prefix of this test's own;
/// None after printing why the test is skipped.
async fn shared() -> Option<(String, RawNats, String)> {
    let url = nats_url();
    let Some(raw) = RawNats::connect(&url).await else {
        return skip(&format!(
            "nats not reachable at {url} (start nats-server or set NATS_URL)"
        ));
    };
    Some((url, raw, unique_prefix()))
}

async fn node(url: &str, prefix: &str) -> Chat {
    let args = ["--admin", "--adapter", url, "--channel-prefix", prefix];
    Chat::start(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_speak_and_remote_disconnect_cross_chat_processes() {
    let Some((url, _raw, prefix)) = shared().await else {
        return;
    };
    let (a, b) = tokio::join!(node(&url, &prefix), node(&url, &prefix));
    let mut alice = Client::joined(&a, "alice", LOBBY).await;
    // A connection's internal stream is subscribed when it registers,
    // before its first subscribe: bob's is live once his lobby is confirmed.
    let mut bob = Client::joined(&b, "bob", LOBBY).await;
    let mut carol = Client::joined(&b, "carol", LOBBY).await;

    // Alice on A, then carol on B.
    let mut everyone = [&mut alice, &mut bob, &mut carol];
    for (speaker, user, body) in [(0, "alice", "hello"), (2, "carol", "from b")] {
        everyone[speaker].speak(LOBBY, body).await;
        all_hear(&mut everyone, LOBBY, user, body).await;
    }

    a.disconnect_user("bob", false).await;
    assert_eq!(
        bob.expect_close(CloseCode::Normal).await,
        vec![r#"{"type":"disconnect","reason":"remote","reconnect":false}"#]
    );
    alice.speak(LOBBY, "bye bob").await;
    all_hear(&mut [&mut alice, &mut carol], LOBBY, "alice", "bye bob").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_raw_publish_on_a_streams_subject_reaches_chat_clients() {
    let Some((url, mut raw, prefix)) = shared().await else {
        return;
    };
    let a = node(&url, &prefix).await;
    let mut alice = Client::joined(&a, "alice", LOBBY).await;
    // `nats pub <prefix>.chat_lobby '…'`, on the wire.
    raw.publish(
        &format!("{prefix}.chat_lobby"),
        r#"{"user":"nats","body":"raw"}"#,
    )
    .await;
    alice
        .expect(&message(LOBBY, r#"{"user":"nats","body":"raw"}"#))
        .await;
}
