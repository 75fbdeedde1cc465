//! The connection state machine driven with plain channels: no sockets.

mod prop;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cable_core::transport::{Inbound, Outbox, Outgoing};
use cable_core::{
    async_trait, authenticate_with, Cable, CableConfig, Channel, ChannelError, ConnectRequest,
    Context, Identifiers, Unauthorized,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

mod hardening;

/// A client connection without a socket.
struct Conn {
    tx: Option<mpsc::UnboundedSender<Inbound>>,
    outbox: Arc<Outbox>,
    task: JoinHandle<()>,
    buf: Vec<Outgoing>,
}

impl Conn {
    fn open(cable: &Cable, query: &str) -> Conn {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let inbound = Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        let outbox = cable_core::transport::new_outbox(cable);
        let req = ConnectRequest::new("/cable", Some(query), vec![], None);
        let c = cable.clone();
        let ob = outbox.clone();
        let task = tokio::spawn(async move {
            cable_core::transport::run_connection(&c, req, inbound, ob).await
        });
        Conn {
            tx: Some(tx),
            outbox,
            task,
            buf: Vec::new(),
        }
    }

    fn send(&self, v: Value) {
        self.send_inbound(Inbound::Text(v.to_string()));
    }

    fn send_inbound(&self, item: Inbound) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(item);
        }
    }

    async fn next(&mut self) -> Outgoing {
        if self.buf.is_empty() {
            let got = tokio::time::timeout(
                Duration::from_secs(5),
                self.outbox.pop_batch(&mut self.buf, 1),
            )
            .await
            .expect("no frame within 5 s");
            assert!(got, "outbox finished");
        }
        self.buf.remove(0)
    }

    async fn text(&mut self) -> String {
        match self.next().await {
            Outgoing::Text(f) => f.as_str().to_owned(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    async fn nothing_for(&mut self, ms: u64) {
        let r = tokio::time::timeout(
            Duration::from_millis(ms),
            self.outbox.pop_batch(&mut self.buf, 1),
        )
        .await;
        assert!(r.is_err(), "unexpected frame {:?}", self.buf);
    }

    async fn hang_up(mut self) {
        self.tx.take();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("session did not end")
            .unwrap();
    }
}

fn sub(id: &str) -> Value {
    json!({"command": "subscribe", "identifier": id})
}

type Log = Arc<Mutex<Vec<String>>>;

struct Recorder {
    log: Log,
}

#[async_trait]
impl Channel for Recorder {
    async fn subscribed(&mut self, ctx: &mut Context<'_>) -> Result<(), ChannelError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("subscribed {}", ctx.identifier()));
        match ctx.param_str("mode") {
            Some("reject") => {
                ctx.stream_from("doomed");
                ctx.reject();
            }
            Some("fail") => {
                ctx.stream_from("doomed");
                return Err(ChannelError::other("boom"));
            }
            Some("tick") => {
                ctx.periodically("tick", Duration::from_millis(50))?;
            }
            _ => ctx.stream_from("s1"),
        }
        Ok(())
    }

    async fn unsubscribed(&mut self, ctx: &mut Context<'_>) {
        self.log
            .lock()
            .unwrap()
            .push(format!("unsubscribed {}", ctx.identifier()));
    }

    async fn perform(
        &mut self,
        ctx: &mut Context<'_>,
        action: &str,
        data: Value,
    ) -> Result<(), ChannelError> {
        match action {
            "receive" => ctx.transmit(&json!({"received": data})),
            "stop" => {
                ctx.stop_stream_from("s1");
                Ok(())
            }
            "follow" => {
                ctx.stream_from(data["stream"].as_str().unwrap_or("x").to_owned());
                Ok(())
            }
            _ => Err(ChannelError::UnknownAction(action.into())),
        }
    }

    async fn timer(&mut self, ctx: &mut Context<'_>, name: &str) -> Result<(), ChannelError> {
        self.log.lock().unwrap().push(format!("timer {name}"));
        ctx.transmit(&json!({"timer": name}))
    }
}

fn recorder_cable(log: &Log, config: CableConfig) -> Cable {
    let log = log.clone();
    Cable::builder()
        .channel("RecChannel", move || Recorder { log: log.clone() })
        .authenticate(authenticate_with(|req: ConnectRequest| async move {
            match req.query("user") {
                Some(u) => Ok(Identifiers::new().with("current_user", u)),
                None => Err(Unauthorized::because("anonymous")),
            }
        }))
        .config(config)
        .build()
}

#[tokio::test]
async fn missing_action_dispatches_to_receive() {
    let log = Log::default();
    let cable = recorder_cable(&log, CableConfig::default());
    let mut c = Conn::open(&cable, "user=a");
    let id = r#"{"channel":"RecChannel"}"#;
    assert_eq!(c.text().await, r#"{"type":"welcome"}"#);
    c.send(sub(id));
    c.text().await;
    c.send(json!({"command": "message", "identifier": id, "data": "{\"x\":1}"}));
    assert_eq!(
        c.text().await,
        r#"{"identifier":"{\"channel\":\"RecChannel\"}","message":{"received":{"x":1}}}"#
    );
    c.hang_up().await;
    assert_eq!(
        *log.lock().unwrap(),
        vec![format!("subscribed {id}"), format!("unsubscribed {id}")]
    );
    assert_eq!(cable.stats().streams, 0, "streams are released on close");
    assert_eq!(cable.stats().connections, 0);
}

#[tokio::test]
async fn reject_runs_unsubscribed_and_releases_streams() {
    let log = Log::default();
    let cable = recorder_cable(&log, CableConfig::default());
    let mut c = Conn::open(&cable, "user=a");
    c.text().await;
    let id = r#"{"channel":"RecChannel","mode":"reject"}"#;
    c.send(sub(id));
    assert_eq!(
        c.text().await,
        r#"{"identifier":"{\"channel\":\"RecChannel\",\"mode\":\"reject\"}","type":"reject_subscription"}"#
    );
    assert_eq!(
        *log.lock().unwrap(),
        vec![format!("subscribed {id}"), format!("unsubscribed {id}")]
    );
    // Only the internal channel action_cable/a is left.
    assert_eq!(cable.stats().streams, 1);
    // A failing `subscribed` sends nothing and leaks nothing.
    c.send(sub(r#"{"channel":"RecChannel","mode":"fail"}"#));
    c.nothing_for(200).await;
    assert_eq!(cable.stats().streams, 1);
    c.hang_up().await;
}

#[tokio::test]
async fn periodic_timers_run_and_stop_on_unsubscribe() {
    let log = Log::default();
    let cable = recorder_cable(&log, CableConfig::default());
    let mut c = Conn::open(&cable, "user=a");
    c.text().await;
    let id = r#"{"channel":"RecChannel","mode":"tick"}"#;
    c.send(sub(id));
    c.text().await; // confirm
    let tick = r#"{"identifier":"{\"channel\":\"RecChannel\",\"mode\":\"tick\"}","message":{"timer":"tick"}}"#;
    assert_eq!(c.text().await, tick);
    assert_eq!(c.text().await, tick);
    c.send(json!({"command": "unsubscribe", "identifier": id}));
    // At most one tick may already be queued when the unsubscribe lands.
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.buf.clear();
    while tokio::time::timeout(Duration::from_millis(10), c.outbox.pop_batch(&mut c.buf, 8))
        .await
        .is_ok()
    {
        c.buf.clear();
    }
    c.nothing_for(300).await;
    c.hang_up().await;
}

#[tokio::test]
async fn stop_stream_from_and_stream_in_actions() {
    let log = Log::default();
    let cable = recorder_cable(&log, CableConfig::default());
    let mut c = Conn::open(&cable, "user=a");
    c.text().await;
    let id = r#"{"channel":"RecChannel"}"#;
    c.send(sub(id));
    c.text().await;
    c.send(json!({"command": "message", "identifier": id, "data": "{\"action\":\"stop\"}"}));
    c.send(json!({"command": "message", "identifier": id, "data": "{\"action\":\"follow\",\"stream\":\"s2\"}"}));
    tokio::time::sleep(Duration::from_millis(100)).await;
    cable.broadcast("s1", &json!(1)).await.unwrap();
    cable.broadcast("s2", &json!(2)).await.unwrap();
    assert_eq!(
        c.text().await,
        r#"{"identifier":"{\"channel\":\"RecChannel\"}","message":2}"#
    );
    c.nothing_for(100).await;
    c.hang_up().await;
}

#[tokio::test]
async fn a_slow_client_is_dropped_and_nobody_else_waits() {
    let log = Log::default();
    let mut config = CableConfig::default();
    config.outbound_queue_bytes = 4096;
    let cable = recorder_cable(&log, config);
    let id = r#"{"channel":"RecChannel"}"#;
    let mut slow = Conn::open(&cable, "user=slow");
    let mut fast = Conn::open(&cable, "user=fast");
    for c in [&mut slow, &mut fast] {
        c.text().await;
        c.send(sub(id));
        c.text().await;
    }
    // `slow` never reads; `fast` reads everything.
    let payload = json!({"pad": "x".repeat(500)});
    for _ in 0..20 {
        cable.broadcast("s1", &payload).await.unwrap();
        let got = fast.text().await;
        assert!(got.contains("xxxx"));
    }
    assert_eq!(
        slow.text().await,
        r#"{"type":"disconnect","reason":"too_slow","reconnect":true}"#
    );
    assert!(matches!(
        slow.next().await,
        Outgoing::Close { code: 1000, .. }
    ));
    assert_eq!(cable.stats().too_slow_disconnects, 1);
    tokio::time::timeout(Duration::from_secs(5), slow.task)
        .await
        .unwrap()
        .unwrap();
    fast.hang_up().await;
}

#[tokio::test]
async fn unknown_channels_can_be_rejected_by_configuration() {
    let log = Log::default();
    let mut config = CableConfig::default();
    config.reject_unknown_channels = true;
    config.max_subscriptions_per_connection = Some(1);
    let cable = recorder_cable(&log, config);
    let mut c = Conn::open(&cable, "user=a");
    c.text().await;
    c.send(sub(r#"{"channel":"NopeChannel"}"#));
    assert_eq!(
        c.text().await,
        r#"{"identifier":"{\"channel\":\"NopeChannel\"}","type":"reject_subscription"}"#
    );
    c.send(sub(r#"{"channel":"RecChannel"}"#));
    assert!(c
        .text()
        .await
        .ends_with(r#""type":"confirm_subscription"}"#));
    c.send(sub(r#"{"channel":"RecChannel","n":2}"#));
    assert!(c.text().await.ends_with(r#""type":"reject_subscription"}"#));
    c.hang_up().await;
}

#[tokio::test]
async fn unauthorized_gets_disconnect_then_close_and_no_welcome() {
    let cable = recorder_cable(&Log::default(), CableConfig::default());
    let mut c = Conn::open(&cable, "");
    assert_eq!(
        c.text().await,
        r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#
    );
    assert!(matches!(c.next().await, Outgoing::Close { code: 1000, .. }));
}

#[tokio::test]
async fn heartbeat_reaches_every_welcomed_connection() {
    let cable = recorder_cable(&Log::default(), CableConfig::default());
    let mut a = Conn::open(&cable, "user=a");
    let mut b = Conn::open(&cable, "user=b");
    a.text().await;
    b.text().await;
    assert_eq!(cable_core::transport::beat(&cable), 2);
    for c in [&mut a, &mut b] {
        assert!(c.text().await.starts_with(r#"{"type":"ping","message":"#));
    }
}
