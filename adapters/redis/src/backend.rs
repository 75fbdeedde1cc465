//! The subscriber connection for the kit's [`Subscriber`](cable_adapter_kit::Subscriber):
//! RESP3 when the server speaks it (it can be named and pinged while
//! subscribed), RESP2 otherwise.
//!
//! redis-rs reads the socket on its own task and hands every message over at
//! once, without waiting (its push sender must not block, and its RESP2
//! pub/sub stream is an unbounded channel), so messages go through the kit's
//! [`Inbox`], bounded in bytes ([`crate::RedisConfig::max_backlog_bytes`]).
//! Redis itself would close a subscriber that cannot keep up
//! (`client-output-buffer-limit pubsub`); dropping the overflow here keeps
//! the connection and every subscription instead.

use std::sync::Arc;

use cable_adapter_kit::{async_trait, Backend, Inbox, Incoming, Op, Session, CONNECT_TIMEOUT};
use cable_core::PubSubError;
use futures_util::StreamExt;
use redis::aio::{AsyncPushSender, MultiplexedConnection, PubSubSink, SendError};
use redis::{
    AsyncConnectionConfig, ErrorKind, ProtocolVersion, PushInfo, PushKind, RedisResult, Value,
};
use tokio::task::JoinHandle;

use crate::publisher::{set_name, to_pubsub_error};

pub(crate) struct RedisBackend {
    /// For the RESP3 connection (preferred: it can be named and pinged).
    resp3: redis::Client,
    /// For the RESP2 fallback on servers without HELLO.
    resp2: redis::Client,
    name: String,
    /// Bound of each connection's [`Inbox`], in bytes.
    max_backlog_bytes: usize,
}

impl RedisBackend {
    pub(crate) fn new(client: &redis::Client, name: String, max_backlog_bytes: usize) -> Self {
        let with = |protocol| {
            let info = client.get_connection_info().clone();
            let settings = info.redis_settings().clone().set_protocol(protocol);
            // Re-opening a ConnectionInfo that came from a valid client cannot
            // fail; fall back to the original client all the same.
            redis::Client::open(info.set_redis_settings(settings)).unwrap_or(client.clone())
        };
        RedisBackend {
            resp3: with(ProtocolVersion::RESP3),
            resp2: with(ProtocolVersion::RESP2),
            name,
            max_backlog_bytes,
        }
    }
}

pub(crate) struct RedisSession {
    link: Link,
    inbox: Arc<Inbox>,
    /// RESP2: the task moving messages from redis-rs' stream to the inbox.
    pump: Option<JoinHandle<()>>,
}

enum Link {
    Resp3(MultiplexedConnection),
    Resp2(PubSubSink),
}

impl Drop for RedisSession {
    fn drop(&mut self) {
        if let Some(pump) = &self.pump {
            pump.abort();
        }
        self.inbox.close();
    }
}

#[async_trait]
impl Backend for RedisBackend {
    type Session = RedisSession;
    const NAME: &'static str = "redis";
    const MAX_BATCH: usize = 1024;

    /// RESP3 first, because only a RESP3 connection can send CLIENT SETNAME
    /// and PING while subscribed with redis-rs; RESP2 if the server has no
    /// HELLO (Redis < 6).
    async fn connect(&self, incoming: Incoming) -> Result<RedisSession, String> {
        let inbox = incoming.queue(self.max_backlog_bytes);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            // Replies are bounded by the kit; an idle subscriber connection
            // waits for messages indefinitely.
            .set_response_timeout(None)
            .set_push_sender(PushSender(inbox.clone()));
        match self
            .resp3
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(mut conn) => {
                set_name(&mut conn, &self.name).await;
                Ok(RedisSession {
                    link: Link::Resp3(conn),
                    inbox,
                    pump: None,
                })
            }
            // The server answered HELLO with an error: no RESP3 (Redis < 6,
            // HELLO renamed or denied by an ACL). Any real problem (a wrong
            // password) makes the RESP2 attempt fail too, with its own error.
            Err(e)
                if e.kind() == ErrorKind::RESP3NotSupported
                    || matches!(e.kind(), ErrorKind::Server(_)) =>
            {
                tracing::info!(
                    error = %e,
                    "redis refused HELLO 3: the subscriber connection uses RESP2 and cannot be named"
                );
                // The RESP3 attempt's inbox is closed with its sender; a new
                // queue starts this connection afresh.
                drop(config);
                let inbox = incoming.queue(self.max_backlog_bytes);
                let (sink, mut stream) = self
                    .resp2
                    .get_async_pubsub()
                    .await
                    .map_err(|e| e.to_string())?
                    .split();
                // redis-rs queues RESP2 messages without bound; this task
                // only moves them into the bounded inbox.
                let pump = {
                    let inbox = inbox.clone();
                    tokio::spawn(async move {
                        while let Some(msg) = stream.next().await {
                            if let Ok(channel) = msg.get_channel::<Vec<u8>>() {
                                push(&inbox, channel, msg.get_payload_bytes().to_vec());
                            }
                        }
                        inbox.close();
                    })
                };
                Ok(RedisSession {
                    link: Link::Resp2(sink),
                    inbox,
                    pump: Some(pump),
                })
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

#[async_trait]
impl Session for RedisSession {
    async fn apply(&mut self, ops: &[(Op, &str)]) -> Result<Vec<Result<(), PubSubError>>, String> {
        let outcome = |r: RedisResult<Value>| r.map(drop).map_err(|e| to_pubsub_error(&e));
        match &mut self.link {
            Link::Resp3(conn) => {
                let mut pipe = redis::pipe();
                for (op, channel) in ops {
                    pipe.cmd(RedisBackend::verb(*op)).arg(*channel);
                }
                // Per-command results: a refused channel (ACL) fails alone.
                pipe.ignore_errors();
                let results: Vec<RedisResult<Value>> =
                    pipe.query_async(conn).await.map_err(|e| e.to_string())?;
                Ok(results.into_iter().map(outcome).collect())
            }
            // The RESP2 sink has no pipelines; one round trip per command.
            Link::Resp2(sink) => {
                let mut results = Vec::with_capacity(ops.len());
                for (op, channel) in ops {
                    let result = match op {
                        Op::Subscribe => sink.subscribe(*channel).await,
                        Op::Unsubscribe => sink.unsubscribe(*channel).await,
                    };
                    match result {
                        Err(e) if !matches!(e.kind(), ErrorKind::Server(_)) => {
                            return Err(e.to_string())
                        }
                        other => results.push(outcome(other.map(|()| Value::Okay))),
                    }
                }
                Ok(results)
            }
        }
    }

    async fn ping(&mut self) -> Result<(), String> {
        let result = match &mut self.link {
            Link::Resp3(conn) => redis::cmd("PING").query_async::<Value>(conn).await,
            Link::Resp2(sink) => sink.ping::<Value>().await,
        };
        match result {
            Ok(_) => Ok(()),
            // An error reply still proves the connection is alive.
            Err(e) if matches!(e.kind(), ErrorKind::Server(_)) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Queues a message if channel and payload are UTF-8 (the core works on
/// text; Rails would fail to decode such a payload too).
fn push(inbox: &Inbox, channel: Vec<u8>, payload: Vec<u8>) {
    match (String::from_utf8(channel), String::from_utf8(payload)) {
        (Ok(channel), Ok(payload)) => inbox.push(channel, payload),
        (channel, _) => tracing::warn!(
            channel = ?channel.as_deref().ok(),
            "dropped a redis message that is not UTF-8"
        ),
    }
}

/// What redis-rs pushes into on a RESP3 connection: messages into the
/// inbox, the end of the connection as [`Inbox::close`]; everything else
/// (subscribe confirmations come as replies) is of no use here.
struct PushSender(Arc<Inbox>);

impl AsyncPushSender for PushSender {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        match info.kind {
            PushKind::Message => {
                let mut data = info.data.into_iter();
                if let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (data.next(), data.next())
                {
                    push(&self.0, channel, payload);
                }
            }
            PushKind::Disconnection => self.0.close(),
            _ => {}
        }
        Ok(())
    }
}

impl Drop for PushSender {
    /// redis-rs dropped its end: the connection is gone even if no
    /// disconnection was pushed.
    fn drop(&mut self) {
        self.0.close();
    }
}
