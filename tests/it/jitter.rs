//! The jitter run (`cable_loadgen::jitter`, AnyCable's jitter test) against
//! the real `chat` binary (`chat --admin`), small: 20 clients, 3 s, 10%
//! dropped every second. With history every client must end with every
//! message exactly once after resuming by `?sid=` and `history`; without,
//! plain clients that only subscribe again must have lost some (else the
//! run proves nothing about what history adds). No timing is judged.

use std::time::Duration;

use cable_loadgen::client::Target;
use cable_loadgen::jitter::{jitter, JitterOpts};
use cable_loadgen::modes::{Common, RunResult};

use crate::chat_process::Chat;

fn opts(no_history: bool) -> JitterOpts {
    JitterOpts {
        clients: 20,
        // Fast enough that a reconnect within 300 ms misses something.
        rate: 50.0,
        secs: 3.0,
        drop_percent: 10.0,
        reconnect_delay_ms: 300,
        drain_secs: 5.0,
        identifier: r#"{"channel":"ChatChannel","room":"jitter"}"#.into(),
        stream: "chat_jitter".into(),
        admin_url: None,
        no_history,
    }
}

/// Runs the jitter harness on a fresh `chat --admin`; panics unless it ran
/// and dropped some connections.
async fn run(o: JitterOpts) -> RunResult {
    // Not alongside the hostile cases (nor each other): they share two cores.
    let _serial = crate::hostile::SERIAL.lock().await;
    let chat = Chat::start_logging(&["--admin"], "warn,chat_example=info").await;
    let common = Common {
        target: Target::new(format!("ws://{}/cable?user=jitter{{i}}", chat.addr)),
        server: "chat".into(),
        server_pids: vec![chat.pid()],
        progress: false,
        connect_concurrency: 20,
    };
    let r = tokio::time::timeout(Duration::from_secs(60), jitter(&common, &o))
        .await
        .expect("the run is over within 60 s")
        .expect("the harness ran");
    println!("{}", serde_json::to_string_pretty(&r.metrics).unwrap());
    // Both cases need a run that went and dropped connections.
    assert!(r.ok, "{:?}", r.errors);
    let drops = r.metrics["drops"].as_u64().unwrap();
    assert!(drops > 0, "{}", r.metrics);
    r
}

#[tokio::test]
async fn jitter_with_history_delivers_every_message_exactly_once() {
    let r = run(opts(false)).await;
    let m = &r.metrics;
    // Every drop came back through a restored session and history.
    assert_eq!(m["restored"], m["reconnects"], "{m}");
    assert_eq!(m["history_rejected"], 0, "{m}");
    assert_eq!(m["clients_full_delivery"], 20, "{m}");
    assert_eq!(m["missing"], 0, "{m}");
    assert_eq!(m["duplicates"], 0, "{m}");
    assert_eq!(m["recovery"]["count"], m["reconnects"], "{m}");
}

#[tokio::test]
async fn jitter_without_history_loses_what_was_broadcast_meanwhile() {
    let r = run(opts(true)).await;
    let m = &r.metrics;
    assert_eq!(m["restored"], 0, "{m}");
    assert!(m["missing"].as_u64().unwrap() > 0, "{m}");
    assert!(m["clients_full_delivery"].as_u64().unwrap() < 20, "{m}");
}
