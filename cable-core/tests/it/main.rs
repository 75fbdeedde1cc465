//! The connection state machine driven with plain channels: no sockets.

mod prop;

use std::time::Duration;

use cable_core::transport::Outgoing;
use cable_core::{
    authenticate_with, Cable, CableConfig, ConnectRequest, Identifiers, Unauthorized,
};
use cable_test::channels::{CallLog, Recorder};
use cable_test::{frames, Connection, Request, Subscription, TestCable};
use serde_json::{json, Value};

mod hardening;
mod presence;
mod reliable;
mod whisper;

/// A connection for `?user=<user>`, welcomed.
async fn open(cable: &TestCable, user: &str) -> Connection {
    match cable.connect(Request::new().query("user", user)).await {
        Ok(c) => c,
        Err(e) => panic!("{user} was not welcomed: {e}"),
    }
}

type Log = CallLog;

fn recorder_cable(log: &Log, config: CableConfig) -> TestCable {
    let log = log.clone();
    TestCable::new(
        Cable::builder()
            .channel("RecChannel", move || Recorder::new(log.clone()))
            .authenticate(authenticate_with(|req: ConnectRequest| async move {
                match req.query("user") {
                    Some(u) => Ok(Identifiers::new().with("current_user", u)),
                    None => Err(Unauthorized::because("anonymous")),
                }
            }))
            .config(config),
    )
}

/// A recorder cable of the default config, and `a` connected and subscribed
/// to `RecChannel` with `params`.
async fn recorder_subscribed(params: Value) -> (Log, TestCable, Connection, Subscription) {
    let log = Log::default();
    let cable = recorder_cable(&log, CableConfig::default());
    let c = open(&cable, "a").await;
    let s = c.subscribe("RecChannel", params).await;
    (log, cable, c, s)
}

#[tokio::test]
async fn missing_action_dispatches_to_receive() {
    let (log, cable, c, s) = recorder_subscribed(Value::Null).await;
    s.assert_confirmed();
    let id = s.identifier().to_owned();
    c.send(json!({"command": "message", "identifier": id, "data": "{\"x\":1}"}));
    c.settle().await;
    s.assert_transmitted(json!({"received": {"x": 1}}));
    c.disconnect().await;
    assert_eq!(
        *log.lock().unwrap(),
        vec![format!("subscribed {id}"), format!("unsubscribed {id}")]
    );
    assert_eq!(
        cable.cable().stats().streams,
        0,
        "streams are released on close"
    );
    assert_eq!(cable.cable().stats().connections, 0);
}

#[tokio::test]
async fn reject_runs_unsubscribed_and_releases_streams() {
    let (log, cable, c, s) = recorder_subscribed(json!({"mode": "reject"})).await;
    s.assert_rejected();
    s.assert_no_streams();
    let id = s.identifier();
    assert_eq!(
        *log.lock().unwrap(),
        vec![format!("subscribed {id}"), format!("unsubscribed {id}")]
    );
    // Only the internal channel action_cable/a is left.
    assert_eq!(cable.cable().stats().streams, 1);
    // A failing `subscribed` sends nothing and leaks nothing.
    let failed = c.subscribe("RecChannel", json!({"mode": "fail"})).await;
    assert!(!failed.is_confirmed() && !failed.is_rejected());
    assert!(!failed.is_subscribed());
    assert_eq!(cable.cable().stats().streams, 1);
    c.disconnect().await;
}

#[tokio::test(start_paused = true)]
async fn periodic_timers_run_and_stop_on_unsubscribe() {
    let (_, _cable, c, s) = recorder_subscribed(json!({"mode": "tick"})).await;
    s.assert_confirmed();
    assert_eq!(s.timers(), 1);
    c.advance(Duration::from_millis(49)).await;
    s.assert_no_transmissions();
    for _ in 0..2 {
        c.advance(Duration::from_millis(50)).await;
    }
    assert_eq!(
        s.transmissions(),
        [json!({"timer": "tick"}), json!({"timer": "tick"})]
    );
    s.unsubscribe().await;
    assert_eq!(s.timers(), 0);
    c.advance(Duration::from_millis(500)).await;
    assert_eq!(s.transmissions().len(), 2, "no tick after unsubscribe");
    c.disconnect().await;
}

#[tokio::test]
async fn stop_stream_from_and_stream_in_actions() {
    let (_, cable, c, s) = recorder_subscribed(Value::Null).await;
    s.assert_has_stream("s1");
    s.perform("stop", Value::Null).await;
    s.assert_no_streams();
    s.perform("follow", json!({"stream": "s2"})).await;
    s.assert_has_stream("s2");
    s.assert_has_no_stream("s1");
    cable.cable().broadcast("s1", &json!(1)).await.unwrap();
    cable.cable().broadcast("s2", &json!(2)).await.unwrap();
    assert_eq!(s.transmissions(), [json!(2)]);
    assert_eq!(
        c.frames().last().map(String::as_str),
        Some(frames::message(s.identifier(), "2").as_str())
    );
    c.disconnect().await;
}

#[tokio::test]
async fn a_slow_client_is_dropped_and_nobody_else_waits() {
    let log = Log::default();
    let mut config = CableConfig::default();
    config.outbound_queue_bytes = 4096;
    let cable = recorder_cable(&log, config);
    let slow = open(&cable, "slow").await;
    let fast = open(&cable, "fast").await;
    for c in [&slow, &fast] {
        c.subscribe("RecChannel", Value::Null)
            .await
            .assert_confirmed();
        c.next_frame().await;
    }
    // `slow` is not read from now on; `fast` reads everything.
    let payload = json!({"pad": "x".repeat(500)});
    for _ in 0..20 {
        cable.cable().broadcast("s1", &payload).await.unwrap();
        let got = fast.next_text().await;
        assert!(got.contains("xxxx"));
    }
    assert_eq!(slow.next_text().await, frames::disconnect("too_slow", true));
    assert!(matches!(
        slow.next_frame().await,
        Outgoing::Close { code: 1000, .. }
    ));
    assert_eq!(cable.cable().stats().too_slow_disconnects, 1);
    slow.ended().await;
    fast.disconnect().await;
}

#[tokio::test]
async fn unknown_channels_can_be_rejected_by_configuration() {
    let log = Log::default();
    let mut config = CableConfig::default();
    config.reject_unknown_channels = true;
    config.max_subscriptions_per_connection = Some(1);
    let cable = recorder_cable(&log, config);
    let c = open(&cable, "a").await;
    c.subscribe("NopeChannel", Value::Null)
        .await
        .assert_rejected();
    c.subscribe("RecChannel", Value::Null)
        .await
        .assert_confirmed();
    c.subscribe("RecChannel", json!({"n": 2}))
        .await
        .assert_rejected();
    c.disconnect().await;
}

#[tokio::test]
async fn unauthorized_gets_disconnect_then_close_and_no_welcome() {
    let cable = recorder_cable(&Log::default(), CableConfig::default());
    let rejected = cable.connect(Request::new()).await.unwrap_err();
    assert_eq!(rejected.frames, [frames::disconnect("unauthorized", false)]);
    assert_eq!(rejected.close_code, Some(1000));
}

#[tokio::test]
async fn an_expired_token_gets_token_expired_without_reconnect() {
    let cable = TestCable::new(Cable::builder().authenticate(authenticate_with(
        |_req: ConnectRequest| async move { Err(Unauthorized::token_expired("exp passed")) },
    )));
    let rejected = cable.connect(Request::new()).await.unwrap_err();
    assert_eq!(
        rejected.frames,
        [frames::disconnect("token_expired", false)]
    );
    assert_eq!(rejected.close_code, Some(1000));
    assert_eq!(cable.cable().stats().unauthorized, 1);
}

#[tokio::test]
async fn heartbeat_reaches_every_welcomed_connection() {
    let cable = recorder_cable(&Log::default(), CableConfig::default());
    let a = open(&cable, "a").await;
    let b = open(&cable, "b").await;
    assert_eq!(cable_core::transport::beat(cable.cable()), 2);
    for c in [&a, &b] {
        assert!(frames::is_ping(&c.next_text().await));
    }
}

#[tokio::test]
async fn a_stubbed_connection_skips_the_connect_hook() {
    let log = Log::default();
    let cable = recorder_cable(&log, CableConfig::default());
    let c = cable
        .stub_connection(Identifiers::new().with("current_user", "stub"))
        .await;
    assert_eq!(c.identified("current_user").as_deref(), Some("stub"));
    let s = c.subscribe("RecChannel", Value::Null).await;
    s.assert_has_stream("s1");
    // A probe is not a command: it does not count against the rate.
    assert_eq!(cable.cable().stats().messages_received, 1);
    c.disconnect().await;
    s.assert_no_streams();
    assert_eq!(cable.cable().stats().streams, 0);
}

#[tokio::test]
async fn probes_are_answered_in_order_and_not_rate_limited() {
    let mut config = CableConfig::default();
    config.command_rate = Some(cable_core::CommandRate {
        burst: 3,
        per_second: 1,
    });
    let cable = recorder_cable(&Log::default(), config);
    let c = open(&cable, "a").await;
    let s = c.subscribe("RecChannel", Value::Null).await;
    for _ in 0..20 {
        c.settle().await;
    }
    assert!(!c.is_closed(), "probes took command tokens");
    // The probe after a command sees what that command did.
    s.perform("follow", json!({"stream": "s3"})).await;
    s.assert_has_stream("s3");
    assert_eq!(cable.cable().stats().rate_limited_disconnects, 0);
}

/// Transmits its params on every `perform` (and reads one in `subscribed`).
#[derive(Default)]
struct ParamsEcho;

#[async_trait::async_trait]
impl cable_core::Channel for ParamsEcho {
    async fn subscribed(&mut self, ctx: &mut cable_core::Context<'_>) -> cable_core::ChannelResult {
        if ctx.param_str("room") != Some("7") {
            ctx.reject();
        }
        Ok(())
    }

    async fn perform(
        &mut self,
        ctx: &mut cable_core::Context<'_>,
        _action: &str,
        _data: Value,
    ) -> cable_core::ChannelResult {
        ctx.transmit(ctx.params())
    }
}

#[tokio::test]
async fn params_are_the_same_after_the_subscription_is_confirmed() {
    // A confirmed subscription drops its decoded params and decodes them
    // again when channel code asks: the same map, in the same order.
    let cable = TestCable::new(Cable::builder().channel("ParamsEcho", ParamsEcho::default));
    let c = cable.connect(Request::new()).await.expect("welcomed");
    let params = json!({"room": "7", "n": [1, {"deep": true}], "a": null});
    let s = c.subscribe("ParamsEcho", params).await;
    s.assert_confirmed();
    s.perform("echo", Value::Null).await;
    s.perform("echo", Value::Null).await;
    let want = json!({"channel": "ParamsEcho", "room": "7", "n": [1, {"deep": true}], "a": null});
    let got = s.transmissions();
    assert_eq!(got, [want.clone(), want]);
    let keys: Vec<String> = got[0].as_object().unwrap().keys().cloned().collect();
    let sent: Vec<String> = serde_json::from_str::<serde_json::Map<String, Value>>(s.identifier())
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(keys, sent, "params keep the identifier's key order");
}
