//! AnyCable's NATS broadcaster received ([`NatsIntake`]): what a publisher
//! puts on `__anycable__` reaches subscribers on every node, once each.

use std::time::Duration;

use cable_nats::{NatsConfigError, NatsIntake, NatsIntakeConfig};

use cable_test::eventually;

use crate::raw_publish;
use crate::support::*;

/// Waits until `intake` has subscribed.
async fn until_up(intake: &NatsIntake) {
    eventually("nats intake subscribed", || async { intake.is_connected() }).await;
}

/// Two nodes sharing the NATS pub/sub adapter, each with an intake on one
/// subject: a single broadcast, a batch and the disconnect command reach
/// each node's subscribers once (every node receives the message and
/// delivers it to its own); what is no broadcast message is dropped and
/// the intake goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_published_on_the_subject_reaches_every_node_once() {
    let Some((plain, prefix, a, _)) = shared_node().await else {
        return;
    };
    let (b, status_b) = node(&nats_url(), &prefix);
    until_connected(&status_b).await;
    let on = format!("{prefix}.__anycable__");
    let start = |cable: &cable_core::Cable| {
        let config = NatsIntakeConfig::new(nats_url()).subject(&on);
        NatsIntake::subscribe(config, cable.broadcaster()).expect("valid intake config")
    };
    let (on_a, on_b) = (start(&a), start(&b));
    until_up(&on_a).await;
    until_up(&on_b).await;
    let (mut ann, id_a) = Client::in_lobby(&a, "ann").await;
    let (mut bob, id_b) = Client::in_lobby(&b, "bob").await;

    raw_publish(&plain, &on, r#"{"stream":"chat_lobby","data":"{\"n\":1}"}"#).await;
    for junk in ["not json", r#"{"stream":"chat_lobby"}"#, "[1,2]"] {
        raw_publish(&plain, &on, junk).await;
    }
    let batch = r#"[{"stream":"chat_lobby","data":"{\"n\":2}"},{"stream":"chat_lobby","data":"{\"n\":3}"}]"#;
    raw_publish(&plain, &on, batch).await;
    for (client, id) in [(&mut ann, &id_a), (&mut bob, &id_b)] {
        for n in 1..=3 {
            client.expect_message(id, &format!(r#"{{"n":{n}}}"#)).await;
        }
        assert!(
            client.quiet_for(Duration::from_millis(300)).await,
            "each once"
        );
    }
    eventually("every message handled on both nodes", || async {
        on_a.handled() == 5 && on_b.handled() == 5
    })
    .await;

    // What `remote_connections.where(current_user: "bob").disconnect` sends.
    let internal = subject(&prefix, "action_cable/bob");
    eventually("bob's internal subject subscribed", || async {
        let subjects = status_b.subscriptions().await.unwrap_or_default();
        subjects.contains(&internal)
    })
    .await;
    let disconnect = r#"{"command":"disconnect","payload":{"identifier":"{\"current_user\":\"bob\"}","reconnect":true}}"#;
    raw_publish(&plain, &on, disconnect).await;
    let frame = bob.next_text().await;
    assert!(frame.contains(r#""type":"disconnect""#), "{frame}");
    assert!(ann.quiet_for(Duration::from_millis(200)).await);
}

/// A nats-server restart: the intake notices, reconnects and subscribes
/// again, and a broadcast published after it arrives within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_intake_subscribes_again_after_a_nats_server_restart() {
    let Some((mut nats, _, cable, status)) = own_node(own_nats(&[]).await, node) else {
        return;
    };
    until_connected(&status).await;
    let config = NatsIntakeConfig::new(nats.url());
    let intake = NatsIntake::subscribe(config, cable.broadcaster()).expect("valid intake config");
    until_up(&intake).await;
    let (mut ann, id) = Client::in_lobby(&cable, "ann").await;

    nats.kill();
    eventually("the intake saw the outage", || async {
        !intake.is_connected()
    })
    .await;
    nats.restart().await;
    until_up(&intake).await;
    assert_eq!(intake.reconnects(), 1);
    until_connected(&status).await;
    let plain = try_plain(&nats.url()).await.expect("own nats is up");
    raw_publish(
        &plain,
        "__anycable__",
        r#"{"stream":"chat_lobby","data":"{\"back\":true}"}"#,
    )
    .await;
    ann.expect_message(&id, r#"{"back":true}"#).await;
}

#[tokio::test]
async fn subjects_with_wildcards_or_spaces_are_refused() {
    let cable = cable_core::Cable::builder().build();
    for subject in ["", "a.>", "a.*.b", "a b", "a..b"] {
        let config = NatsIntakeConfig::new("nats://127.0.0.1:4222").subject(subject);
        let err = NatsIntake::subscribe(config, cable.broadcaster()).expect_err(subject);
        assert!(
            matches!(err, NatsConfigError::InvalidSubject { .. }),
            "{err:?}"
        );
    }
}
