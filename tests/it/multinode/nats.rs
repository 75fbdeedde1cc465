//! Several `chat` processes on one nats-server through `--adapter
//! nats://…` (`NATS_URL`, default `nats://127.0.0.1:4222`): speaks and
//! remote disconnects cross, and a raw NATS client publishing on a
//! stream's subject reaches its subscribers. Two nodes on NATS pub/sub and
//! the JetStream broker: a client resumes on the other node and misses
//! nothing. Skipped without NATS unless `CI` is set.

use std::sync::Arc;
use std::time::Duration;

use cable_core::{authenticate_with, Cable, Identifiers, Unauthorized};
use cable_nats::{NatsBroker, NatsBrokerConfig, NatsConfig, NatsPubSub};
use cable_test::channels::Feed;
use cable_test::TestServer;
use serde_json::json;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::reliable::{ask_history, ext_client, news, positioned, typed};
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

/// A node as a deployment on NATS runs it: NATS pub/sub under `prefix`
/// and a JetStream broker of its own (on the stream `cable_it_nodes_history`
/// that every run shares: tests keep apart by stream names, and entries
/// age out), `NewsChannel`, users from `?user=`.
async fn jetstream_node(url: &str, prefix: &str) -> TestServer {
    let pubsub = NatsConfig::new(url).subject_prefix(prefix);
    let broker =
        NatsBroker::new(NatsBrokerConfig::new(url).name("cable_it_nodes")).expect("broker config");
    let builder = Cable::builder()
        .channel("NewsChannel", Feed::default)
        .authenticate(authenticate_with(|req| async move {
            req.query("user")
                .map(|u| Identifiers::new().with("current_user", u))
                .ok_or_else(|| Unauthorized::because("no user"))
        }))
        .shared_broker(Arc::new(broker))
        .try_pubsub(move |d| NatsPubSub::new(pubsub, d))
        .expect("pubsub config");
    TestServer::start(builder).await
}

/// Issue 17: the JetStream broker behind two nodes. A client on A drops;
/// what both nodes publish meanwhile is in JetStream; it comes back on B
/// with its session id and its last position, gets exactly what it missed
/// (once each, in order, with the positions the live messages had), then
/// the live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_a_client_resumes_on_the_other_node_and_misses_nothing() {
    let Some((url, _raw, prefix)) = shared().await else {
        return;
    };
    let (a, b) = tokio::join!(jetstream_node(&url, &prefix), jetstream_node(&url, &prefix));
    let stream = format!("news_{prefix}");
    let id = news(&stream);
    let publish = async |ns: std::ops::RangeInclusive<u64>| {
        for n in ns {
            let node = if n % 2 == 1 { &a } else { &b };
            node.cable
                .broadcast(&stream, &json!({ "n": n }))
                .await
                .expect("broadcast");
        }
    };
    let (mut c, welcome) = ext_client(&a, "/cable?user=ann").await;
    let sid = welcome["sid"].as_str().expect("a session id").to_owned();
    c.subscribe(&id).await;
    let mut seen = Vec::new();
    publish(1..=2).await;
    for _ in 1..=2 {
        seen.push(positioned(&mut c).await);
    }
    drop(c);
    publish(3..=5).await;

    let (mut back, welcome) = ext_client(&b, &format!("/cable?sid={sid}")).await;
    assert_eq!(welcome["restored"], true, "{welcome}");
    let (_, epoch, offset) = seen.last().cloned().expect("two seen");
    ask_history(&mut back, &id, &stream, &epoch, offset).await;
    for _ in 3..=5 {
        seen.push(positioned(&mut back).await);
    }
    back.expect(&typed("confirm_history", &id)).await;
    publish(6..=7).await;
    for _ in 6..=7 {
        seen.push(positioned(&mut back).await);
    }
    back.expect_silence(Duration::from_millis(500)).await;
    let want: Vec<_> = (1..=7).map(|n| (n, epoch.clone(), n)).collect();
    assert_eq!(seen, want, "bodies and positions, in order, once each");
}
