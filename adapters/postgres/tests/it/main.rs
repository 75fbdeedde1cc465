//! Integration tests against a real PostgreSQL: `DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`. Each test uses its own channel
//! prefix and application names. Without a reachable PostgreSQL the tests
//! print `SKIPPED: …` and pass, unless `CI` is set.
//!
//! Outages are simulated without harming the shared server: by terminating
//! the adapter's own backends (`pg_terminate_backend`, what a server restart
//! does to each session), by cutting a TCP proxy the adapter connects
//! through, and by restarting a PostgreSQL server of the test's own (initdb
//! into a temporary directory; run as `postgres` when the tests run as root).

mod broker;
mod conformance;
mod probe;
mod support;

use std::time::Duration;

use cable_core::{Identifiers, PubSubError};
use serde_json::json;
use sha1::{Digest, Sha1};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_as_rails_sends_it_reaches_subscribers_exactly() {
    let Some((_, plain, prefix, cable, _)) = shared_node().await else {
        return;
    };
    let (mut client, id) = Client::in_lobby(&cable, "ann").await;

    // What `ActionCable.server.broadcast("chat_lobby", user: "rails", body: "hi")` runs.
    rails_notify(
        &plain,
        &format!("{prefix}:chat_lobby"),
        r#"{"user":"rails","body":"hi"}"#,
    )
    .await;
    client
        .expect_message(&id, r#"{"user":"rails","body":"hi"}"#)
        .await;
    // Quotes, backslashes, ActiveSupport's escapes and non-ASCII arrive as sent.
    let tricky = r#"{"body":"it's \"quoted\" \\ \u003cb\u003e \u2028 é ✓"}"#;
    rails_notify(&plain, &format!("{prefix}:chat_lobby"), tricky).await;
    client
        .expect_message(
            &id,
            r#"{"body":"it's \"quoted\" \\ \u003cb\u003e \u2028 é ✓"}"#,
        )
        .await;
    // Without the prefix, or in another case, it is another channel.
    rails_notify(&plain, "chat_lobby", r#"{"user":"x"}"#).await;
    rails_notify(
        &plain,
        &format!("{}:chat_lobby", prefix.to_uppercase()),
        r#"{"user":"x"}"#,
    )
    .await;
    assert!(client.quiet_for(Duration::from_millis(300)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_reach_a_rails_listener() {
    let Some((url, _)) = shared_postgres().await else {
        return;
    };
    let prefix = unique_prefix();
    let mut rails = RawListener::connect(&url).await;
    rails.listen(&format!("{prefix}:chat_lobby")).await;
    let (cable, status) = node(&url, &prefix, &prefix);
    until_connected(&status).await;

    let payload = r#"{"user":"ann","body":"it's \"here\""}"#;
    cable
        .broadcaster()
        .broadcast_raw("chat_lobby", payload)
        .await
        .expect("broadcast");
    assert_eq!(
        rails.next().await,
        (format!("{prefix}:chat_lobby"), payload.to_owned())
    );
    // The internal channel of a remote disconnect, Rails 7.1+ payload.
    rails.listen(&format!("{prefix}:action_cable/ann")).await;
    cable
        .remote_disconnect(&Identifiers::new().with("current_user", "ann"), false)
        .await
        .expect("remote disconnect");
    assert_eq!(
        rails.next().await,
        (
            format!("{prefix}:action_cable/ann"),
            r#"{"type":"disconnect","reconnect":false}"#.to_owned()
        )
    );
}

/// Rails' rule, computed here independently of the adapter.
fn rails_channel(prefix: &str, stream: &str) -> String {
    let name = format!("{prefix}:{stream}");
    if name.chars().count() > 63 {
        Sha1::digest(name.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    } else {
        name
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_over_63_characters_are_sha1_both_ways() {
    let Some((url, plain, prefix, cable, status)) = shared_node().await else {
        return;
    };

    // "<prefix>:chat_" + room: exactly 63 characters stays a name, 64 is SHA1.
    let base = format!("{prefix}:chat_").len();
    let room_63 = "r".repeat(63 - base);
    let room_64 = "R".repeat(64 - base);
    let room_long = format!("{}_and_then_some_more_to_be_sure", "l".repeat(40));
    let ch_63 = rails_channel(&prefix, &format!("chat_{room_63}"));
    let ch_64 = rails_channel(&prefix, &format!("chat_{room_64}"));
    let ch_long = rails_channel(&prefix, &format!("chat_{room_long}"));
    assert_eq!(ch_63, format!("{prefix}:chat_{room_63}"));
    assert_eq!(ch_64.len(), 40);
    assert_eq!(ch_long.len(), 40);
    let internal = format!("{prefix}:action_cable/ann");

    let mut client = Client::connect(&cable, "ann").await;
    let id_63 = client.subscribe(&room_63).await;
    let id_64 = client.subscribe(&room_64).await;
    let id_long = client.subscribe(&room_long).await;
    until_listening(
        &status,
        &[ch_63.clone(), ch_64.clone(), ch_long.clone(), internal],
    )
    .await;

    // From Rails (NOTIFY on the SHA1 name) to our subscribers.
    for (channel, id) in [(&ch_63, &id_63), (&ch_64, &id_64), (&ch_long, &id_long)] {
        rails_notify(&plain, channel, r#"{"from":"rails"}"#).await;
        client.expect_message(id, r#"{"from":"rails"}"#).await;
    }

    // From us to a Rails listener on the SHA1 name.
    let mut rails = RawListener::connect(&url).await;
    rails.listen(&ch_long).await;
    cable
        .broadcast(&format!("chat_{room_long}"), &json!({"from": "cable"}))
        .await
        .expect("broadcast");
    assert_eq!(
        rails.next().await,
        (ch_long.clone(), r#"{"from":"cable"}"#.to_owned())
    );
    client.expect_message(&id_long, r#"{"from":"cable"}"#).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_of_8000_bytes_or_more_are_refused_and_the_adapter_keeps_working() {
    let Some((_, plain, prefix, cable, status)) = shared_node().await else {
        return;
    };
    let (mut client, id) = Client::in_lobby(&cable, "ann").await;

    // {"body":"xxx…"}: 11 bytes around the body.
    let payload = |size: usize| format!(r#"{{"body":"{}"}}"#, "x".repeat(size - 11));
    let err = cable
        .broadcaster()
        .broadcast_raw("chat_lobby", &payload(9000))
        .await
        .expect_err("9000 bytes");
    assert_eq!(
        err,
        PubSubError::PayloadTooLarge {
            adapter: "postgres",
            size: 9000,
            limit: 7999
        }
    );
    assert_eq!(
        err.to_string(),
        "payload of 9000 bytes is over the postgres adapter's limit of 7999 bytes"
    );
    let err = cable
        .broadcaster()
        .broadcast_raw("chat_lobby", &payload(8000))
        .await
        .expect_err("8000 bytes");
    assert!(matches!(
        err,
        PubSubError::PayloadTooLarge { size: 8000, .. }
    ));
    // Our limit is PostgreSQL's: it refuses 8000 bytes itself.
    let refused = plain
        .execute(
            "SELECT pg_notify($1, $2)",
            &[&format!("{prefix}:chat_lobby"), &payload(8000)],
        )
        .await
        .expect_err("PostgreSQL refuses 8000 bytes");
    assert!(
        refused
            .as_db_error()
            .is_some_and(|e| e.message().contains("payload string too long")),
        "{refused:?}"
    );

    // Nothing was sent, and the largest payload still goes through, whole.
    cable
        .broadcaster()
        .broadcast_raw("chat_lobby", &payload(7999))
        .await
        .expect("7999 bytes");
    client.expect_message(&id, &payload(7999)).await;
    cable
        .broadcast("chat_lobby", &json!({"after": true}))
        .await
        .expect("broadcast");
    client.expect_message(&id, r#"{"after":true}"#).await;
    assert!(status.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_postgres_restart() {
    let Some(pg) = OwnPostgres::start().await else {
        return;
    };
    let prefix = unique_prefix();
    let (cable, status) = node(&pg.url(), &prefix, &prefix);
    survives_an_outage(
        &cable,
        &status,
        &prefix,
        1,
        async |up| pg.set_up(up).await,
        async || {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_database_outage() {
    let Some((_, mut proxy, prefix, cable, status)) = proxied_node(false).await else {
        return;
    };
    survives_an_outage(
        &cable,
        &status,
        &prefix,
        2,
        async |up| proxy.set_up(up).await,
        async || {
            let err = status
                .listening_channels()
                .await
                .expect_err("not connected");
            assert!(matches!(err, PubSubError::Unavailable(_)), "{err:?}");
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_the_database_is_unreachable() {
    let Some((_, mut proxy, _, cable, status)) = proxied_node(true).await else {
        return;
    };
    starts_while_the_backend_is_away(
        &cable,
        async |up| proxy.set_up(up).await,
        // The cause is spelled out.
        |err| {
            assert!(
                err.to_string()
                    .contains("postgres: error connecting to server: Connection refused"),
                "{err}"
            )
        },
    )
    .await;
    assert_eq!(status.reconnects(), 0, "a first connection is no reconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_fails_after_five_seconds_of_outage_then_recovers() {
    let Some((plain, mut proxy, prefix, cable, status)) = proxied_node(false).await else {
        return;
    };
    subscribe_fails_during_a_long_outage(
        &cable,
        async |up| proxy.set_up(up).await,
        // The dropped subscription was unlistened, not listened again.
        async || until_listening(&status, &[format!("{prefix}:action_cable/u1")]).await,
        async |stream, payload| rails_notify(&plain, &format!("{prefix}:{stream}"), payload).await,
    )
    .await;
}

/// A burst bigger than any sane in-process queue arrives whole: the listener
/// reads one notification, delivers it and reads the next, so the rest waits
/// in the socket and in PostgreSQL's own (bounded) queue, never here.
#[tokio::test]
async fn a_burst_of_notifications_is_delivered_whole_without_a_backlog() {
    const BURST: u64 = 3000;
    let Some((_, plain, prefix, cable, _)) = shared_node().await else {
        return;
    };
    let (mut client, id) = Client::in_lobby(&cable, "u1").await;
    // One transaction: PostgreSQL sends all of them at commit.
    plain
        .execute(
            "SELECT pg_notify($1, json_build_object('n', g, 'pad', repeat('x', 64))::text) \
             FROM generate_series(1, $2::int) g",
            &[&format!("{prefix}:chat_lobby"), &(BURST as i32)],
        )
        .await
        .expect("burst");
    let pad = "x".repeat(64);
    for n in 1..=BURST {
        // The hub re-encodes PostgreSQL's `{"n" : 1, ...}` as Rails does.
        let message = format!(r#"{{"n":{n},"pad":"{pad}"}}"#);
        client.expect_message(&id, &message).await;
    }
    assert_eq!(cable.stats().broadcasts, BURST);
}
