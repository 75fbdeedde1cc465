//! Interop with a real Rails ActionCable server (Debian's Rails 6.1 on puma,
//! `bench/rails` in interop mode) sharing one Redis or one PostgreSQL
//! database, and one channel prefix, with a real `chat` process.
//!
//! The Rails app mirrors the chat example: `identified_by :current_user`
//! (the `user` cookie, else `?user=`) and a `ChatChannel` that streams
//! `chat_<room>` and broadcasts `{"user","body"}` on `speak`. Each test runs
//! once per adapter:
//!
//! - a `speak` on either server reaches the room's clients on both, in the
//!   same bytes on both sides;
//! - `ActionCable.server.broadcast` from a separate Ruby process (what
//!   `bin/rails runner` does) reaches our clients;
//! - remote disconnects cross both ways: `remote_connections.where(...)
//!   .disconnect` in Ruby closes the user's connection on our server, and
//!   our `POST /admin/disconnect` closes it on Rails (Rails 6.1 closes
//!   with a bare close frame, no `disconnect` message, and cannot pass
//!   `reconnect: false` on to its client);
//! - (ignored: a known divergence) numbers Ruby formats differently from
//!   serde_json (`1.0e+20`, integers past 64 bits) reach our clients in
//!   other bytes than Rails' clients get.
//!
//! Needs ruby, puma, Rails' actioncable and the adapter's gems
//! (`bench/rails/install.sh`), and Redis (`REDIS_URL`) or PostgreSQL
//! (`DATABASE_URL`); without them the tests print `SKIPPED: …` and pass,
//! unless `CI` is set.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::support::*;

/// The Rails app of `bench/rails`.
fn rails_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/rails")
}

/// One backend both servers use, with a prefix of this test's own.
struct Interop(Shared);

newtype_deref!(Interop => Shared);

impl Interop {
    /// The backend and the Ruby side, or None (after printing why) when either
    /// is missing.
    async fn get(kind: Kind) -> Option<Interop> {
        let shared = kind.shared().await?;
        ruby_ready(kind).await?;
        Some(Interop(shared))
    }

    /// The Rails app's interop settings (README.md in bench/rails).
    fn rails_env(&self) -> Vec<(&'static str, String)> {
        let adapter = match self.kind {
            Kind::Redis => "redis",
            Kind::Postgres => "postgresql",
        };
        vec![
            ("CABLE_RAILS_ADAPTER", adapter.to_owned()),
            ("CABLE_RAILS_URL", self.url.clone()),
            ("CABLE_RAILS_CHANNEL_PREFIX", self.prefix.clone()),
        ]
    }

    /// Our `chat` with admin endpoints and Rails' puma, on this adapter.
    async fn servers(&self) -> (Chat, Rails) {
        tokio::join!(self.node(), Rails::start(self.rails_env()))
    }

    /// Runs `script` in a fresh Ruby process that loaded the Rails app with
    /// the same settings, as `bin/rails runner` would; panics unless it
    /// succeeds.
    async fn ruby(&self, script: &str) {
        let app = rails_dir().join("application.rb");
        let mut cmd = ruby_command();
        cmd.arg("-r").arg(app).arg("-e").arg(script);
        cmd.envs(self.rails_env());
        let out = run_with_timeout(cmd, START_WAIT)
            .await
            .expect("ruby on PATH (checked before)");
        assert!(
            out.status.success(),
            "ruby -e {script:?}: {:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `ruby` as `run.sh` runs it: production, Debian's gems, no bundler.
fn ruby_command() -> Command {
    let mut cmd = Command::new("ruby");
    cmd.env("RAILS_ENV", "production")
        .env("RACK_ENV", "production")
        .env_remove("BUNDLE_GEMFILE")
        .env_remove("RUBYGEMS_GEMDEPS")
        .env_remove("RUBYOPT")
        .stdin(Stdio::null());
    cmd
}

/// Checks that ruby, puma, Rails' actioncable and the adapter's gems load;
/// None (after printing why) when not.
async fn ruby_ready(kind: Kind) -> Option<()> {
    let gems = match kind {
        Kind::Redis => r#"gem "redis", ">= 3", "< 5"; require "redis""#,
        Kind::Postgres => r#"gem "pg", "~> 1.1"; require "pg"; require "active_record""#,
    };
    let script = format!(r#"require "rails"; require "action_cable/engine"; {gems}"#);
    let install = "run bench/rails/install.sh";
    let mut cmd = ruby_command();
    cmd.arg("-e").arg(&script);
    match run_with_timeout(cmd, START_WAIT).await {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return skip(&format!("ruby not found on PATH ({install})"))
        }
        Err(e) => panic!("cannot run ruby: {e}"),
        Ok(out) if !out.status.success() => {
            return skip(&format!(
                "Rails' actioncable or the {kind:?} adapter's gems do not load ({install}): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
        Ok(_) => {}
    }
    let mut puma = Command::new("puma");
    puma.arg("--version");
    match run_with_timeout(puma, START_WAIT).await {
        Ok(out) if out.status.success() => Some(()),
        Ok(out) => panic!("puma --version: {:?}", out.status),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            skip(&format!("puma not found on PATH ({install})"))
        }
        Err(e) => panic!("cannot run puma: {e}"),
    }
}

/// Rails' puma (`bench/rails/run.sh 0`, interop mode) on a free port (a
/// [`Server`]).
struct Rails(Server);

newtype_deref!(Rails => Server);

impl Rails {
    /// Starts puma with `env` and waits until it listens.
    async fn start(env: Vec<(&'static str, String)>) -> Rails {
        let mut cmd = Command::new(rails_dir().join("run.sh"));
        cmd.arg("0")
            .envs(env)
            // The banner names the port puma bound; info logs show the
            // connections, subscriptions and broadcasts on failure.
            .env("CABLE_BENCH_VERBOSE", "1")
            .env("CABLE_RAILS_LOG_LEVEL", "info");
        Rails(Server::spawn("Rails", cmd, "Listening on http://").await)
    }
}

/// A room whose stream, prefixed, is longer than PostgreSQL's 63-character
/// identifiers: both adapters LISTEN/NOTIFY on its SHA1 instead.
const LONG_ROOM: &str = "a-room-whose-name-is-long-enough-to-pass-the-63-character-limit";

/// The speaker's `speak` as every member of the room receives it, from
/// either server: ActiveSupport's escaping (`<`, `>`, `&` as `\u003c`,
/// `\u003e`, `\u0026`; other text as UTF-8).
fn spoken(identifier: &str, user: &str, body_json: &str) -> String {
    message(
        identifier,
        &format!(r#"{{"user":"{user}","body":{body_json}}}"#),
    )
}

async fn speak_crosses_both_ways(kind: Kind) {
    let Some(shared) = Interop::get(kind).await else {
        return;
    };
    let (ours, rails) = shared.servers().await;
    let long = room(LONG_ROOM);
    let attic = room("attic");
    let mut ann = Client::joined_to("rails", rails.addr, "ann", LOBBY).await;
    ann.join(&long).await;
    let mut erin = Client::joined_to("rails", rails.addr, "erin", &attic).await;
    let mut bob = Client::joined_to("cable", ours.addr, "bob", LOBBY).await;
    bob.join(&long).await;
    let mut finn = Client::joined_to("cable", ours.addr, "finn", &attic).await;

    // Ours → Rails: Rails' client gets the frame Rails builds from our
    // payload, and it is the frame we send our own client.
    bob.speak(LOBBY, "from cable <b>&é").await;
    let from_cable = spoken(LOBBY, "bob", r#""from cable \u003cb\u003e\u0026é""#);
    ann.expect(&from_cable).await;
    bob.expect(&from_cable).await;

    // Rails → ours.
    ann.speak(LOBBY, "from rails <i>&ü").await;
    let from_rails = spoken(LOBBY, "ann", r#""from rails \u003ci\u003e\u0026ü""#);
    bob.expect(&from_rails).await;
    ann.expect(&from_rails).await;

    // The same through a channel past 63 characters (SHA1 on PostgreSQL).
    // One at a time: two servers publishing at once may reach the adapter in
    // either order.
    bob.speak(&long, "long from cable").await;
    for p in [&mut ann, &mut bob] {
        p.expect(&spoken(&long, "bob", r#""long from cable""#))
            .await;
    }
    ann.speak(&long, "long from rails").await;
    for p in [&mut ann, &mut bob] {
        p.expect(&spoken(&long, "ann", r#""long from rails""#))
            .await;
    }

    // The attic heard none of it, on either server: the next frame each
    // member gets is the attic's own.
    finn.speak(&attic, "quiet here").await;
    for p in [&mut erin, &mut finn] {
        p.expect(&spoken(&attic, "finn", r#""quiet here""#)).await;
    }
}

async fn rails_runner_broadcast_reaches_cable(kind: Kind) {
    rails_broadcasts_arrive_as(
        kind,
        &[
            (
                r#"{ user: "rails", body: "from a runner <&>" }"#,
                r#"{"user":"rails","body":"from a runner \u003c\u0026\u003e"}"#,
            ),
            // A richer payload: Rails' server and ours re-encode it to the
            // same bytes (key order, numbers, null, nesting, escaping of
            // U+2028/U+2029).
            (
                r#"{ "user" => "rails", "body" => "line\u2028sep\u2029end \"q\" \\ /",
                   "n" => 42, "x" => 1.5, "neg" => -7, "ok" => true, "none" => nil,
                   "list" => [1, "two", { "three" => [] }], "empty" => {} }"#,
                r#"{"user":"rails","body":"line\u2028sep\u2029end \"q\" \\ /","n":42,"x":1.5,"neg":-7,"ok":true,"none":null,"list":[1,"two",{"three":[]}],"empty":{}}"#,
            ),
        ],
    )
    .await;
}

async fn remote_disconnect_crosses_both_ways(kind: Kind) {
    let Some(shared) = Interop::get(kind).await else {
        return;
    };
    let (ours, rails) = shared.servers().await;
    // Each server subscribes (LISTENs) to a connection's internal channel
    // action_cable/<user> when it opens, before the room's stream, and in
    // order: the room's confirmation means the internal channel is live.
    let mut bob = Client::joined_to("cable", ours.addr, "bob", LOBBY).await;
    let mut dave = Client::joined_to("cable", ours.addr, "dave", LOBBY).await;
    let mut bob_on_rails = Client::joined_to("rails", rails.addr, "bob", LOBBY).await;
    let mut carol = Client::joined_to("rails", rails.addr, "carol", LOBBY).await;
    let mut gina = Client::joined_to("rails", rails.addr, "gina", LOBBY).await;
    let mut ann = Client::joined_to("rails", rails.addr, "ann", LOBBY).await;
    if kind == Kind::Redis {
        // Redis shows it: both servers listen on bob's channel, under the
        // same name (Rails' connection identifier of a String is the string).
        for (user, n) in [("bob", 2), ("carol", 1), ("gina", 1)] {
            let channel = shared.channel(&format!("action_cable/{user}"));
            shared.until_subscribed(&channel, n).await;
        }
    }

    // Rails → both: Rails 6.1 publishes {"type":"disconnect"} on
    // action_cable/bob (no "reconnect": it means true). We send the
    // disconnect message Rails 7 sends; Rails 6.1 closes its own bob with a
    // bare close frame (1000), no disconnect message.
    shared
        .ruby(r#"ActionCable.server.remote_connections.where(current_user: "bob").disconnect"#)
        .await;
    assert_eq!(
        bob.expect_close(CloseCode::Normal).await,
        vec![r#"{"type":"disconnect","reason":"remote","reconnect":true}"#],
        "bob@cable, disconnected from Rails"
    );
    assert_eq!(
        bob_on_rails.expect_close(CloseCode::Normal).await,
        Vec::<String>::new(),
        "bob@rails, disconnected from Rails"
    );

    // Ours → Rails: we publish {"type":"disconnect","reconnect":true} on
    // action_cable/carol. Rails 6.1 answers any "disconnect" with
    // `websocket.close`: a close frame (1000) and no disconnect message.
    ours.disconnect_user("carol", true).await;
    assert_eq!(
        carol.expect_close(CloseCode::Normal).await,
        Vec::<String>::new(),
        "carol@rails, disconnected from cable"
    );
    // reconnect:false crosses, but Rails 6.1 has no way to tell its client
    // (the disconnect message with "reconnect" came with Rails 7): the same
    // bare close, after which @rails/actioncable reconnects.
    ours.disconnect_user("gina", false).await;
    assert_eq!(
        gina.expect_close(CloseCode::Normal).await,
        Vec::<String>::new(),
        "gina@rails, disconnected from cable with reconnect:false"
    );
    eventually("Rails logs Removing connection (carol), (gina)", || {
        let log = rails.log_text();
        let removed = log.contains("Removing connection (carol)")
            && log.contains("Removing connection (gina)");
        async move { removed }
    })
    .await;

    // The others stay, on both servers.
    dave.speak(LOBBY, "bye").await;
    for p in [&mut dave, &mut ann] {
        p.expect(&spoken(LOBBY, "dave", r#""bye""#)).await;
    }
}

/// Rails' broadcast of each `payload` (Ruby) on the lobby, from outside any
/// channel as a job or `bin/rails runner` makes it (a Ruby process of its
/// own, on the same adapter and prefix), reaches both servers' clients as
/// the same bytes, `expected`.
async fn rails_broadcasts_arrive_as(kind: Kind, broadcasts: &[(&str, &str)]) {
    let Some(shared) = Interop::get(kind).await else {
        return;
    };
    let (ours, rails) = shared.servers().await;
    let mut bob = Client::joined_to("cable", ours.addr, "bob", LOBBY).await;
    let mut ann = Client::joined_to("rails", rails.addr, "ann", LOBBY).await;
    for (payload, expected) in broadcasts {
        shared
            .ruby(&format!(
                r#"ActionCable.server.broadcast("chat_lobby", {payload})"#
            ))
            .await;
        let rails_frame = ann.recv().await;
        assert_eq!(rails_frame, message(LOBBY, expected), "Rails' own client");
        bob.expect(&rails_frame).await;
    }
}

/// Known divergence, hence ignored: Rails decodes a broadcast and encodes
/// it again with Ruby's number formatting, and so should we. Floats in
/// exponent form (`1e20` comes out of Ruby as `1.0e+20`, `1e-7` as
/// `1.0e-07`, `1e15` as `1.0e+15`) and integers past 64 bits (`2**64`
/// stays exact in Ruby; serde_json without `arbitrary_precision` turns it
/// into an f64) reach our clients in other bytes than Rails' clients get.
async fn numbers_reencode_as_rails_does(kind: Kind) {
    rails_broadcasts_arrive_as(
        kind,
        &[(
        r#"{ "user" => "rails", "big" => 1e20, "small" => 1e-7, "round" => 1e15,
             "plain" => 1e14, "third" => 1.0 / 3, "int" => 42, "neg" => -0.0 }"#,
        r#"{"user":"rails","big":1.0e+20,"small":1.0e-07,"round":1.0e+15,"plain":100000000000000.0,"third":0.3333333333333333,"int":42,"neg":-0.0}"#,
    )],
    )
    .await;
}

async fn bignums_reencode_as_rails_does(kind: Kind) {
    rails_broadcasts_arrive_as(
        kind,
        &[(
            r#"{ "user" => "rails", "huge" => 2**64 }"#,
            r#"{"user":"rails","huge":18446744073709551616}"#,
        )],
    )
    .await;
}

both!(
    numbers_reencode_as_rails_does,
    speak_crosses_both_ways,
    rails_runner_broadcast_reaches_cable,
    remote_disconnect_crosses_both_ways,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known divergence: integers past 64 bits lose precision (serde_json without arbitrary_precision)"]
async fn redis_bignums_reencode_as_rails_does() {
    bignums_reencode_as_rails_does(Kind::Redis).await;
}

/// How the server answers one way of ending a connection: the close code
/// and reason the client is sent; None for a reset when `retry` (the caller
/// asks again).
async fn close_answer(addr: SocketAddr, case: &str, retry: bool) -> Option<(u16, String)> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::{Error, Message};

    let mut req = format!("ws://{addr}/cable?user=closer")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "Origin",
        format!("http://{addr}").parse().expect("origin header"),
    );
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "actioncable-v1-json".parse().expect("protocol header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .unwrap_or_else(|e| panic!("{case} on {addr}: {e}"));
    // The welcome first.
    let _ = tokio::time::timeout(WAIT, ws.next()).await;
    let raw =
        |op: OpCode, payload: &[u8]| Message::Frame(Frame::message(payload.to_vec(), op, true));
    let msg = match case {
        "close 4001 bye" => Message::Close(Some(CloseFrame {
            code: CloseCode::from(4001),
            reason: "bye".into(),
        })),
        "close 1001" => Message::Close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "".into(),
        })),
        "close without code" => Message::Close(None),
        "invalid UTF-8" => raw(OpCode::Data(Data::Text), &[b'{', 0xff, 0xfe, b'}']),
        "stray continuation" => raw(OpCode::Data(Data::Continue), b"xx"),
        "unknown opcode" => raw(OpCode::Data(Data::Reserved(3)), b"xx"),
        other => panic!("unknown case {other}"),
    };
    ws.send(msg).await.expect("send");
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => {
                return Some((u16::from(f.code), f.reason.to_string()))
            }
            Ok(Some(Ok(Message::Close(None)))) => return Some((1005, String::new())),
            Ok(Some(Ok(_))) => continue,
            // Puma, busy on a loaded machine, now and then resets the
            // connection instead of answering: not an answer to compare with.
            Ok(Some(Err(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake))))
                if retry =>
            {
                return None
            }
            other => panic!("{case} on {addr}: no close frame ({other:?})"),
        }
    }
}

/// The closing handshake and protocol-error closes, side by side with Rails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rails_and_cable_close_connections_alike() {
    let Some(shared) = Interop::get(Kind::Redis).await else {
        return;
    };
    let (ours, rails) = shared.servers().await;
    for case in [
        "close 4001 bye",
        "close 1001",
        "close without code",
        "invalid UTF-8",
        "stray continuation",
        "unknown opcode",
    ] {
        let mut want = None;
        for _ in 0..3 {
            want = close_answer(rails.addr, case, true).await;
            if want.is_some() {
                break;
            }
        }
        let want = want.unwrap_or_else(|| panic!("{case}: Rails reset the connection 3 times"));
        let got = close_answer(ours.addr, case, false)
            .await
            .expect("no retry");
        assert_eq!(got, want, "{case}: cable vs Rails");
    }
}
