//! Ready-made channels for tests of the server itself: one that notes its
//! callbacks ([`Recorder`]), one that misbehaves on request ([`Faulty`]), one
//! stream with or without history ([`Feed`]), and the two small channels of
//! the [`model`](crate::model) connection ([`RoomChannel`], [`EchoChannel`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cable_core::broker::HistoryPolicy;
use cable_core::{async_trait, Channel, ChannelError, ChannelResult, Context};
use serde_json::{json, Value};

/// What a [`Recorder`] noted, in order: `subscribed <identifier>`,
/// `unsubscribed <identifier>`, `timer <name>`.
pub type CallLog = Arc<Mutex<Vec<String>>>;

/// A channel that notes its callbacks in a [`CallLog`].
///
/// Param `mode`: `reject` streams from `doomed` and rejects, `fail` streams
/// from `doomed` and fails, `tick` starts a 50 ms timer (which transmits
/// `{"timer": name}`); otherwise it streams from `s1`. Actions: `receive`
/// (what a message without `action` dispatches to) transmits
/// `{"received": data}`, `stop` stops `s1`, `follow` streams from
/// `data.stream`; others are unknown.
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    log: CallLog,
}

impl Recorder {
    /// A recorder noting into `log`.
    pub fn new(log: CallLog) -> Self {
        Self { log }
    }

    fn note(&self, what: String) {
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(what);
    }
}

#[async_trait]
impl Channel for Recorder {
    async fn subscribed(&mut self, ctx: &mut Context<'_>) -> ChannelResult {
        self.note(format!("subscribed {}", ctx.identifier()));
        match ctx.param_str("mode") {
            Some("reject") => {
                ctx.stream_from("doomed");
                ctx.reject();
            }
            Some("fail") => {
                ctx.stream_from("doomed");
                return Err(ChannelError::other("boom"));
            }
            Some("tick") => ctx.periodically("tick", Duration::from_millis(50))?,
            _ => ctx.stream_from("s1"),
        }
        Ok(())
    }

    async fn unsubscribed(&mut self, ctx: &mut Context<'_>) {
        self.note(format!("unsubscribed {}", ctx.identifier()));
    }

    async fn perform(&mut self, ctx: &mut Context<'_>, action: &str, data: Value) -> ChannelResult {
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

    async fn timer(&mut self, ctx: &mut Context<'_>, name: &str) -> ChannelResult {
        self.note(format!("timer {name}"));
        ctx.transmit(&json!({"timer": name}))
    }
}

/// A channel that misbehaves where its identifier's `in` param says:
/// - `subscribed` panics in `subscribed`, `sleep_subscribed` never returns
///   from it;
/// - `timer` starts a 30 ms timer that panics, `slow_timer` a 20 ms one that
///   does not;
/// - `unsubscribed` panics in `unsubscribed`.
///
/// It streams from `faulty_<in>` and `faulty_all`. Actions: `panic` panics,
/// `sleep` never returns, `busy` sleeps `data.ms` then transmits
/// `{"busy":"done"}`, `big` transmits `data.n` bytes of padding, `echo`
/// transmits its data; any other action is unknown.
#[derive(Clone, Debug, Default)]
pub struct Faulty {
    panic_in: String,
    timer_calls: Option<Arc<Mutex<Vec<Instant>>>>,
}

impl Faulty {
    /// A `Faulty` that notes the instant of every timer call in `calls`.
    pub fn recording_timers(calls: Arc<Mutex<Vec<Instant>>>) -> Self {
        Self {
            panic_in: String::new(),
            timer_calls: Some(calls),
        }
    }
}

#[async_trait]
impl Channel for Faulty {
    async fn subscribed(&mut self, ctx: &mut Context<'_>) -> ChannelResult {
        self.panic_in = ctx.param_str("in").unwrap_or("").to_owned();
        ctx.stream_from(format!("faulty_{}", self.panic_in));
        ctx.stream_from("faulty_all");
        match self.panic_in.as_str() {
            "subscribed" => panic!("boom in subscribed"),
            "sleep_subscribed" => std::future::pending::<()>().await,
            "timer" => ctx.periodically("t", Duration::from_millis(30))?,
            "slow_timer" => ctx.periodically("t", Duration::from_millis(20))?,
            _ => {}
        }
        Ok(())
    }

    async fn unsubscribed(&mut self, _ctx: &mut Context<'_>) {
        if self.panic_in == "unsubscribed" {
            panic!("boom in unsubscribed");
        }
    }

    async fn perform(&mut self, ctx: &mut Context<'_>, action: &str, data: Value) -> ChannelResult {
        let n = |key: &str| data[key].as_u64().unwrap_or(0);
        match action {
            "panic" => panic!("boom in perform"),
            "sleep" => std::future::pending().await,
            "busy" => {
                tokio::time::sleep(Duration::from_millis(n("ms"))).await;
                ctx.transmit(&json!({"busy": "done"}))
            }
            "big" => ctx.transmit(&json!({"pad": "x".repeat(n("n") as usize)})),
            "echo" => ctx.transmit(&data),
            _ => Err(ChannelError::UnknownAction(action.into())),
        }
    }

    async fn timer(&mut self, _ctx: &mut Context<'_>, _name: &str) -> ChannelResult {
        if let Some(calls) = &self.timer_calls {
            calls
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(Instant::now());
        }
        if self.panic_in == "timer" {
            panic!("boom in timer");
        }
        Ok(())
    }
}

/// One stream, for tests of reliable streams: streams from its `stream`
/// param (default `feed`) with history; without history when param `plain`
/// is set, with a limit of `limit` messages (kept 300 s) when given.
/// Actions: `follow` streams from `data.stream` with history, `ping`
/// transmits `{"pong": true}`; others are unknown. Counts its `subscribed`
/// calls.
#[derive(Clone, Debug, Default)]
pub struct Feed {
    subscribed: Arc<AtomicUsize>,
}

impl Feed {
    /// A feed that counts its `subscribed` calls in `subscribed`.
    pub fn counting(subscribed: Arc<AtomicUsize>) -> Self {
        Self { subscribed }
    }
}

#[async_trait]
impl Channel for Feed {
    async fn subscribed(&mut self, ctx: &mut Context<'_>) -> ChannelResult {
        self.subscribed.fetch_add(1, Ordering::SeqCst);
        let stream = ctx.param_str("stream").unwrap_or("feed").to_owned();
        if ctx.param("plain").is_some() {
            ctx.stream_from(stream);
        } else if let Some(limit) = ctx.param("limit").and_then(Value::as_u64) {
            let ttl = Duration::from_secs(300);
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            ctx.stream_from_with_policy(stream, HistoryPolicy { limit, ttl });
        } else {
            ctx.stream_from_with_history(stream);
        }
        Ok(())
    }

    async fn perform(&mut self, ctx: &mut Context<'_>, action: &str, data: Value) -> ChannelResult {
        match (action, data["stream"].as_str()) {
            ("follow", Some(stream)) => {
                ctx.stream_from_with_history(stream.to_owned());
                Ok(())
            }
            ("ping", _) => ctx.transmit(&json!({"pong": true})),
            _ => Err(ChannelError::UnknownAction(action.into())),
        }
    }
}

/// The model's room: streams from `room_<room>` (param `room`, default
/// `lobby`) and says hello. Params: `tick` (seconds) starts a timer (0 is
/// refused, so `subscribed` fails after streaming), `reject: true` rejects,
/// `fail: true` fails. Actions: `speak` and `shout` broadcast (to its room,
/// to `data.stream`), `echo` transmits its data, `follow` / `unfollow` /
/// `stop_all` change streams, `tick` starts a timer, `big` transmits up to
/// 4 KiB, `fail` fails; others are unknown. Its timer transmits and
/// broadcasts a count. It says bye on unsubscribe.
#[derive(Debug, Default)]
pub struct RoomChannel {
    stream: String,
    ticks: u64,
}

#[async_trait]
impl Channel for RoomChannel {
    async fn subscribed(&mut self, ctx: &mut Context<'_>) -> ChannelResult {
        let room = ctx.param_str("room").unwrap_or("lobby").to_owned();
        self.stream = format!("room_{room}");
        ctx.transmit(&json!({"hello": room}))?;
        ctx.stream_from(self.stream.clone());
        if let Some(secs) = ctx.param("tick").and_then(Value::as_u64) {
            ctx.periodically("tick", Duration::from_secs(secs))?;
        }
        if ctx.param("reject") == Some(&json!(true)) {
            ctx.reject();
        }
        if ctx.param("fail") == Some(&json!(true)) {
            return Err(ChannelError::other("subscribed failed on purpose"));
        }
        Ok(())
    }

    async fn unsubscribed(&mut self, ctx: &mut Context<'_>) {
        let _ = ctx.transmit(&json!({"bye": self.stream}));
    }

    async fn perform(&mut self, ctx: &mut Context<'_>, action: &str, data: Value) -> ChannelResult {
        let stream = data["stream"].as_str().unwrap_or_default().to_owned();
        match action {
            "speak" => {
                let own = self.stream.clone();
                ctx.broadcast(&own, &json!({"body": data["body"]})).await
            }
            "shout" => {
                ctx.broadcast(&stream, &json!({"shout": data["body"]}))
                    .await
            }
            "echo" => ctx.transmit(&data),
            "follow" => {
                ctx.stream_from(stream);
                Ok(())
            }
            "unfollow" => {
                ctx.stop_stream_from(&stream);
                Ok(())
            }
            "stop_all" => {
                ctx.stop_all_streams();
                Ok(())
            }
            "tick" => ctx.periodically("tick", Duration::from_millis(700)),
            "big" => {
                let n = data["n"].as_u64().unwrap_or(0).min(4096) as usize;
                ctx.transmit(&"x".repeat(n))
            }
            "fail" => Err(ChannelError::InvalidData("failed on purpose".into())),
            _ => Err(ChannelError::UnknownAction(action.to_owned())),
        }
    }

    async fn timer(&mut self, ctx: &mut Context<'_>, name: &str) -> ChannelResult {
        self.ticks += 1;
        ctx.transmit(&json!({"timer": name, "n": self.ticks}))?;
        let own = self.stream.clone();
        ctx.broadcast(&own, &json!({"ticked": self.ticks})).await
    }
}

/// The model's echo: no `subscribed` of its own; every action transmits
/// `{"action": action, "data": data}`.
#[derive(Debug, Default)]
pub struct EchoChannel;

#[async_trait]
impl Channel for EchoChannel {
    async fn perform(&mut self, ctx: &mut Context<'_>, action: &str, data: Value) -> ChannelResult {
        ctx.transmit(&json!({"action": action, "data": data}))
    }
}
