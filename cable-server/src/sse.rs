//! Server-Sent Events, as AnyCable serves them: one HTTP response per
//! client, driven by the same connection machinery as a WebSocket (connect
//! hook, origin rules, channels, streams, history, shutdown).
//!
//! Origins follow the WebSocket's rules, except that a request without an
//! `Origin` header is served: browsers send one with every cross-origin
//! `EventSource` and every POST, and none with a same-origin `EventSource`.
//!
//! The subscription comes with the request: a GET's query names it
//! (`identifier`, `channel` with optional `params` as a JSON object,
//! `stream`, `signed_stream` or `turbo_signed_stream_name`; `history_since`
//! and a `Last-Event-ID` header ask for history), a POST's body holds JSONL
//! commands. The answer waits for the connect hook and the subscriptions:
//! 401 when the connection is refused, 400 when a subscription is, else 200
//! and the stream.
//!
//! Each frame the core sends becomes one event: `event: <type>` and
//! `data: <the frame>` for typed frames, and for a broadcast `data:` with
//! its message (a GET; a POST gets the whole frame) and, when it has a
//! place in its stream's history, `id: <offset>/<epoch>/<stream>`, which the
//! client sends back as `Last-Event-ID` when it reconnects. `raw=1` sends
//! broadcasts only, and the heartbeat as a comment line. A disconnect that
//! tells the client not to reconnect carries `retry:` a year.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use cable_core::protocol::EXT_SUBPROTOCOL;
use cable_core::transport::{Inbound, Outbox, Outgoing, Probe, ProbeAnswer, TransportGuard};
use cable_core::ConnectRequest;
use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::http::{respond, text};
use crate::ws::{forwarded_https, header_str, peer_of, ServerState};

/// Largest POST body: JSONL commands (AnyCable's limit).
const MAX_BODY: usize = 64 * 1024;

/// `retry:` for a client told not to reconnect: a year, in milliseconds.
const RETRY_NEVER: &str = "31536000000";

/// Frames encoded per write, at most.
const BATCH: usize = 64;

/// What the client gets.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// A GET: typed events, and each broadcast's message alone.
    Get,
    /// `raw=1`: broadcasts' messages only.
    Raw,
    /// A POST: typed events and whole frames.
    Post,
}

pub(crate) async fn handle(State(state): State<Arc<ServerState>>, mut req: Request) -> Response {
    state.ensure_heartbeat();
    let (peer, peer_s) = peer_of(&req);
    // What middleware put on the request, for the connection hook.
    let http_extensions = std::mem::take(req.extensions_mut());
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let headers = req.headers();
    let origin = header_str(headers, header::ORIGIN).map(str::to_owned);
    let host = header_str(headers, header::HOST);
    // Browsers send Origin with every cross-origin EventSource and every
    // POST, so a request without one is no cross-site page's: served (a
    // same-origin EventSource sends none, unlike a WebSocket).
    let allowed = origin.is_none()
        || state
            .config
            .origins
            .allows(origin.as_deref(), host, forwarded_https(headers));
    if !allowed {
        tracing::error!(
            "Request origin not allowed: {} (SSE {method} {path:?} for {peer_s})",
            origin.as_deref().unwrap_or("")
        );
        return text(StatusCode::NOT_FOUND, "Page not found");
    }
    let cors = cors(origin.as_deref());
    if method == Method::OPTIONS {
        let mut res = with_headers(Response::new(Body::empty()), &cors);
        let h = res.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(
                "content-type, last-event-id, authorization, x-request-id, x-socket-id",
            ),
        );
        return res;
    }
    if method != Method::GET && method != Method::POST {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            (header::ALLOW, "GET, POST, OPTIONS"),
            "Method not allowed",
        );
    }
    if state.cable.is_shutting_down() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "Server is restarting");
    }
    let query = req.uri().query().map(str::to_owned);
    let params = Query::parse(query.as_deref().unwrap_or(""));
    let param = |name: &str| params.get(name);
    let last_event_id =
        header_str(headers, header::HeaderName::from_static("last-event-id")).map(str::to_owned);
    let mode = match (method == Method::POST, param("raw") == Some("1")) {
        (true, _) => Mode::Post,
        (false, true) => Mode::Raw,
        (false, false) => Mode::Get,
    };
    let request_headers = connect_headers(headers);
    let commands = if method == Method::GET {
        match subscribe_from_query(&param, last_event_id.as_deref()) {
            Ok(command) => vec![command],
            Err(why) => {
                tracing::info!("SSE GET {path:?} for {peer_s} refused: {why}");
                return with_headers(text(StatusCode::BAD_REQUEST, why), &cors);
            }
        }
    } else {
        let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
            Ok(body) => body,
            Err(e) => {
                tracing::info!("SSE POST {path:?} for {peer_s}: unreadable body: {e}");
                let why = format!("the body must be JSONL commands of at most {MAX_BODY} bytes");
                return with_headers(text(StatusCode::BAD_REQUEST, why), &cors);
            }
        };
        match commands_from_body(&body) {
            Ok(commands) => commands,
            Err(why) => {
                tracing::info!("SSE POST {path:?} for {peer_s} refused: {why}");
                return with_headers(text(StatusCode::BAD_REQUEST, why), &cors);
            }
        }
    };
    let max = state.config.max_connections.unwrap_or(usize::MAX);
    let Some(guard) = cable_core::transport::try_transport_guard(&state.cable, max) else {
        cable_core::transport::count_refused_handshake(&state.cable);
        tracing::warn!("Refusing SSE from {peer_s}: {max} connections open (max_connections)");
        return respond(
            StatusCode::SERVICE_UNAVAILABLE,
            (header::RETRY_AFTER, "5"),
            "Too many connections",
        );
    };
    tracing::info!("Started {method} {path:?} [SSE] for {peer_s}");

    let request = ConnectRequest::new(path.clone(), query.as_deref(), request_headers, peer)
        // Positions (for `id:`) and AnyCable's frames; no pongs, no resume.
        .with_subprotocol(Some(EXT_SUBPROTOCOL))
        .with_extension(http_extensions)
        .one_way();
    let awaited: HashSet<String> = commands.iter().filter_map(|c| subscribe_of(c)).collect();
    let cable = state.cable.clone();
    let outbox = cable_core::transport::new_outbox(&cable);
    let conn_outbox = outbox.clone();
    // The probe answers once every command before it has been handled.
    let (probe, answer) = Probe::new();
    let inbound = futures_util::stream::iter(commands.into_iter().map(Inbound::Text))
        .chain(futures_util::stream::once(async { Inbound::Probe(probe) }))
        .chain(futures_util::stream::pending());
    tokio::spawn(async move {
        cable_core::transport::run_connection(&cable, request, Box::pin(inbound), conn_outbox)
            .await;
    });

    let mut stream = SseStream {
        outbox,
        mode,
        early: Vec::new(),
        done: false,
        _guard: guard,
        path,
        peer: peer_s,
    };
    match stream.settle(awaited, answer).await {
        Settled::Open => {}
        Settled::Refused(status) => {
            // Dropping the stream ends the connection.
            let mut res = Response::new(Body::empty());
            *res.status_mut() = status;
            return with_headers(res, &cors);
        }
    }
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        let bytes = s.next_chunk().await?;
        Some((Ok::<_, Infallible>(bytes), s))
    });
    let mut res = with_headers(Response::new(Body::from_stream(body)), &cors);
    let h = res.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/event-stream; charset=utf-8"),
        (
            header::CACHE_CONTROL,
            "private, no-cache, no-store, must-revalidate, max-age=0",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::PRAGMA, "no-cache"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    // nginx buffers responses unless told not to.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}

/// A query's parameters, decoded.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: &str) -> Self {
        Query(
            form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
        )
    }

    /// The first value of `name`.
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The request's headers, for the connect hook.
pub(crate) fn connect_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect()
}

/// CORS headers for a page at `origin` (already allowed by the origin
/// rules): it may read the stream, with its cookies.
fn cors(origin: Option<&str>) -> Vec<(header::HeaderName, HeaderValue)> {
    let Some(value) = origin.and_then(|o| HeaderValue::from_str(o).ok()) else {
        return Vec::new();
    };
    vec![
        (header::ACCESS_CONTROL_ALLOW_ORIGIN, value),
        (
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        ),
        (header::VARY, HeaderValue::from_static("Origin")),
    ]
}

fn with_headers(mut res: Response, extra: &[(header::HeaderName, HeaderValue)]) -> Response {
    for (name, value) in extra {
        res.headers_mut().insert(name.clone(), value.clone());
    }
    res
}

/// The subscribe command a GET's query asks for: its identifier from
/// `identifier`, `channel` (and `params`, a JSON object), `stream`,
/// `signed_stream` or `turbo_signed_stream_name`, in that order; history
/// from `Last-Event-ID` (`<offset>/<epoch>/<stream>`) or `history_since`
/// (Unix seconds).
fn subscribe_from_query<'a>(
    param: &impl Fn(&str) -> Option<&'a str>,
    last_event_id: Option<&str>,
) -> Result<String, String> {
    let identifier = if let Some(identifier) = param("identifier") {
        identifier.to_owned()
    } else if let Some(channel) = param("channel") {
        let mut id = serde_json::Map::new();
        id.insert("channel".into(), channel.into());
        if let Some(params) = param("params") {
            match serde_json::from_str::<Value>(params) {
                Ok(Value::Object(params)) => {
                    id.extend(params.into_iter().filter(|(k, _)| k != "channel"))
                }
                _ => return Err("`params` must be a JSON object".to_owned()),
            }
        }
        Value::Object(id).to_string()
    } else if let Some(stream) = param("stream") {
        json!({"channel": "$pubsub", "stream_name": stream}).to_string()
    } else if let Some(signed) = param("signed_stream") {
        json!({"channel": "$pubsub", "signed_stream_name": signed}).to_string()
    } else if let Some(signed) = param("turbo_signed_stream_name") {
        json!({"channel": "Turbo::StreamsChannel", "signed_stream_name": signed}).to_string()
    } else {
        return Err(
            "no channel: give identifier, channel, stream, signed_stream or \
             turbo_signed_stream_name"
                .to_owned(),
        );
    };
    let mut command = json!({"command": "subscribe", "identifier": identifier});
    if let Some(history) = history(last_event_id, param("history_since"))? {
        command["history"] = history;
    }
    Ok(command.to_string())
}

/// The extended protocol's `history` for a reconnecting client: the
/// position of `Last-Event-ID` for its stream, and `history_since` for
/// every stream (AnyCable sends both when both are given).
fn history(last_event_id: Option<&str>, since: Option<&str>) -> Result<Option<Value>, String> {
    let mut history = serde_json::Map::new();
    if let Some(id) = last_event_id.filter(|id| !id.is_empty()) {
        let mut parts = id.splitn(3, '/');
        let (Some(offset), Some(epoch), Some(stream)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "Last-Event-ID {id:?} is not <offset>/<epoch>/<stream>"
            ));
        };
        let Ok(offset) = offset.parse::<u64>() else {
            return Err(format!("Last-Event-ID {id:?}: the offset is not a number"));
        };
        history.insert(
            "streams".into(),
            json!({ stream: {"offset": offset, "epoch": epoch} }),
        );
    }
    if let Some(s) = since {
        let Ok(since) = s.parse::<u64>() else {
            return Err(format!("history_since {s:?} is not Unix seconds"));
        };
        history.insert("since".into(), since.into());
    }
    Ok((!history.is_empty()).then_some(Value::Object(history)))
}

/// A POST body's commands: one JSON object per non-empty line.
fn commands_from_body(body: &[u8]) -> Result<Vec<String>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_owned())?;
    let mut commands = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(_)) => commands.push(line.to_owned()),
            _ => return Err(format!("line {} is not a JSON command", n + 1)),
        }
    }
    if commands.is_empty() {
        return Err("no commands in the body".to_owned());
    }
    Ok(commands)
}

/// The identifier of a subscribe command.
fn subscribe_of(command: &str) -> Option<String> {
    let v: Value = serde_json::from_str(command).ok()?;
    if v.get("command")?.as_str()? != "subscribe" {
        return None;
    }
    Some(v.get("identifier")?.as_str()?.to_owned())
}

/// The fields of a frame the encoding looks at.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a str>,
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    epoch: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    reconnect: Option<bool>,
}

/// Where [`SseStream::settle`] left the connection.
enum Settled {
    /// Welcomed, every subscription confirmed: stream it.
    Open,
    /// Answer with this status and end it.
    Refused(StatusCode),
}

/// One client's response body: the connection's outbox, encoded.
struct SseStream {
    outbox: Arc<Outbox>,
    mode: Mode,
    /// Frames read while settling, sent first.
    early: Vec<Outgoing>,
    /// The close went out: the body ends.
    done: bool,
    _guard: TransportGuard,
    path: String,
    peer: String,
}

impl Drop for SseStream {
    /// The client went away (or was refused): end its connection.
    fn drop(&mut self) {
        self.outbox.abort();
        tracing::info!("Finished {:?} [SSE] for {}", self.path, self.peer);
    }
}

impl SseStream {
    /// Reads frames until the session has handled the request's commands
    /// (`answer`, the probe sent after them) and holds every subscription
    /// in `awaited`; the frames are kept for the body. Refused: 401 when
    /// the connection is (its session ends before the probe), 400 when a
    /// subscription is missing (rejected, or of a channel that does not
    /// exist, which Rails answers with nothing at all).
    async fn settle(&mut self, awaited: HashSet<String>, answer: ProbeAnswer) -> Settled {
        let mut welcomed = false;
        let mut batch = Vec::new();
        let mut answer = Box::pin(answer.recv());
        loop {
            tokio::select! {
                snapshot = &mut answer => {
                    let Some(snapshot) = snapshot else {
                        return Settled::Refused(StatusCode::UNAUTHORIZED);
                    };
                    let held: HashSet<&str> = snapshot
                        .subscriptions
                        .iter()
                        .map(|s| s.identifier.as_str())
                        .collect();
                    if let Some(missing) = awaited.iter().find(|id| !held.contains(id.as_str())) {
                        tracing::info!("SSE subscription to {missing} not confirmed: answering 400");
                        return Settled::Refused(StatusCode::BAD_REQUEST);
                    }
                    return Settled::Open;
                }
                more = self.outbox.pop_batch(&mut batch, BATCH) => {
                    if !more {
                        return Settled::Refused(StatusCode::UNAUTHORIZED);
                    }
                }
            }
            for item in batch.drain(..) {
                if let Outgoing::Text(frame) = &item {
                    match serde_json::from_str::<Fields>(frame.as_str()).map(|f| f.kind) {
                        Ok(Some("welcome")) => welcomed = true,
                        Ok(Some("disconnect")) if !welcomed => {
                            return Settled::Refused(StatusCode::UNAUTHORIZED)
                        }
                        _ => {}
                    }
                }
                self.early.push(item);
            }
        }
    }

    /// The next bytes of the body; None once the connection has ended.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        let mut out = String::new();
        let mut batch = std::mem::take(&mut self.early);
        while out.is_empty() {
            if self.done {
                return None;
            }
            if batch.is_empty() && !self.outbox.pop_batch(&mut batch, BATCH).await {
                self.done = true;
                return None;
            }
            for item in batch.drain(..) {
                match item {
                    Outgoing::Text(frame) => encode(frame.as_str(), self.mode, &mut out),
                    Outgoing::Close { .. } => self.done = true,
                }
            }
        }
        Some(Bytes::from(out))
    }
}

/// Appends the event for one frame to `out` (nothing for a frame `mode`
/// leaves out).
fn encode(frame: &str, mode: Mode, out: &mut String) {
    let Ok(f) = serde_json::from_str::<Fields>(frame) else {
        return;
    };
    match f.kind {
        Some("ping") if mode == Mode::Raw => out.push_str(": ping\n\n"),
        Some(_) if mode == Mode::Raw => {}
        Some(kind) if !one_line(kind) => {}
        Some(kind) => {
            out.push_str("event: ");
            out.push_str(kind);
            out.push('\n');
            data(frame, out);
            if kind == "disconnect" && f.reconnect == Some(false) {
                out.push_str("retry: ");
                out.push_str(RETRY_NEVER);
                out.push('\n');
            }
            out.push('\n');
        }
        None => {
            let message = f.message.map(RawValue::get);
            match (mode, message) {
                (Mode::Post, _) => data(frame, out),
                (_, Some(m)) => match serde_json::from_str::<String>(m) {
                    // A string is sent as the text it holds.
                    Ok(s) if m.starts_with('"') => data(&s, out),
                    _ => data(m, out),
                },
                (_, None) => return,
            }
            if let (Some(offset), Some(epoch), Some(stream)) = (f.offset, &f.epoch, &f.stream_id) {
                // A position that cannot be one line is left out (the
                // client then resumes from the one before).
                if offset > 0 && one_line(epoch) && one_line(stream) {
                    out.push_str(&format!("id: {offset}/{epoch}/{stream}\n"));
                }
            }
            out.push('\n');
        }
    }
}

/// `data:` lines for `text`, one per line of it. SSE ends a line at CR,
/// LF or CRLF: each of them starts a new `data:` line here, so that a
/// message can neither end its event nor add a field (`id:`, `event:`).
fn data(text: &str, out: &mut String) {
    let mut rest = text;
    loop {
        let end = rest.find(['\r', '\n']).unwrap_or(rest.len());
        out.push_str("data: ");
        out.push_str(&rest[..end]);
        out.push('\n');
        if end == rest.len() {
            return;
        }
        let newline = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + newline..];
    }
}

/// Whether `s` fits on one SSE field line (and in `Last-Event-ID`, which
/// a browser drops when it holds a NUL).
fn one_line(s: &str) -> bool {
    !s.contains(['\r', '\n', '\0'])
}

/// For the fuzz target `sse_request` (not an API): the parsers and the
/// encoder of this module.
#[doc(hidden)]
pub mod fuzzing {
    /// The subscribe command a GET with `query` (and `Last-Event-ID`) asks
    /// for, or why it is refused.
    pub fn subscribe(query: &str, last_event_id: Option<&str>) -> Result<String, String> {
        let params = super::Query::parse(query);
        super::subscribe_from_query(&|name| params.get(name), last_event_id)
    }

    /// A POST body's commands, or why it is refused.
    pub fn commands(body: &[u8]) -> Result<Vec<String>, String> {
        super::commands_from_body(body)
    }

    /// The SSE text of `frame`: `mode` 0 a GET, 1 `raw=1`, 2 a POST.
    pub fn encode(frame: &str, mode: u8) -> String {
        let mode = match mode % 3 {
            0 => super::Mode::Get,
            1 => super::Mode::Raw,
            _ => super::Mode::Post,
        };
        let mut out = String::new();
        super::encode(frame, mode, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(frame: &str, mode: Mode) -> String {
        let mut out = String::new();
        encode(frame, mode, &mut out);
        out
    }

    #[test]
    fn frames_become_events() {
        assert_eq!(
            encoded(r#"{"type":"welcome","sid":"s1"}"#, Mode::Get),
            "event: welcome\ndata: {\"type\":\"welcome\",\"sid\":\"s1\"}\n\n"
        );
        let positioned = r#"{"identifier":"{\"channel\":\"C\"}","message":{"n":1},"stream_id":"a/b","epoch":"e1","offset":7}"#;
        assert_eq!(
            encoded(positioned, Mode::Get),
            "data: {\"n\":1}\nid: 7/e1/a/b\n\n"
        );
        assert_eq!(
            encoded(positioned, Mode::Raw),
            "data: {\"n\":1}\nid: 7/e1/a/b\n\n"
        );
        assert_eq!(
            encoded(positioned, Mode::Post),
            format!("data: {positioned}\nid: 7/e1/a/b\n\n")
        );
        // A string message is its text, one data line per line.
        assert_eq!(
            encoded(r#"{"identifier":"i","message":"<p>a\nb</p>"}"#, Mode::Get),
            "data: <p>a\ndata: b</p>\n\n"
        );
        assert_eq!(
            encoded(r#"{"type":"ping","message":5}"#, Mode::Raw),
            ": ping\n\n"
        );
        assert_eq!(
            encoded(
                r#"{"type":"confirm_subscription","identifier":"i"}"#,
                Mode::Raw
            ),
            ""
        );
        assert_eq!(
            encoded(r#"{"type":"disconnect","reason":"remote","reconnect":false}"#, Mode::Get),
            "event: disconnect\ndata: {\"type\":\"disconnect\",\"reason\":\"remote\",\"reconnect\":false}\nretry: 31536000000\n\n"
        );
        assert!(!encoded(
            r#"{"type":"disconnect","reason":"server_restart","reconnect":true}"#,
            Mode::Get
        )
        .contains("retry"));
    }

    #[test]
    fn queries_name_subscriptions() {
        let q = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
        };
        let cmd = |pairs, last: Option<&str>| -> Value {
            serde_json::from_str(&subscribe_from_query(&q(pairs), last).unwrap()).unwrap()
        };
        assert_eq!(
            cmd(
                &[("channel", "ChatChannel"), ("params", r#"{"room":"a"}"#)],
                None
            )["identifier"],
            r#"{"channel":"ChatChannel","room":"a"}"#
        );
        assert_eq!(
            cmd(&[("stream", "news")], None)["identifier"],
            r#"{"channel":"$pubsub","stream_name":"news"}"#
        );
        assert_eq!(
            cmd(&[("turbo_signed_stream_name", "x--y")], None)["identifier"],
            r#"{"channel":"Turbo::StreamsChannel","signed_stream_name":"x--y"}"#
        );
        let c = cmd(
            &[("identifier", "{}"), ("history_since", "100")],
            Some("3/ep/a/b"),
        );
        assert_eq!(
            c["history"],
            json!({"streams": {"a/b": {"offset": 3, "epoch": "ep"}}, "since": 100})
        );
        assert_eq!(
            cmd(&[("stream", "s"), ("history_since", "100")], None)["history"],
            json!({"since": 100})
        );
        assert!(subscribe_from_query(&q(&[]), None).is_err());
        assert!(subscribe_from_query(&q(&[("channel", "C"), ("params", "[1]")]), None).is_err());
        assert!(subscribe_from_query(&q(&[("stream", "s")]), Some("x/e/s")).is_err());
        assert!(subscribe_from_query(&q(&[("stream", "s")]), Some("1/e")).is_err());
    }

    #[test]
    fn bodies_are_jsonl_commands() {
        let body =
            b"{\"command\":\"subscribe\",\"identifier\":\"i\"}\n\n{\"command\":\"message\"}\r\n";
        assert_eq!(commands_from_body(body).unwrap().len(), 2);
        assert!(commands_from_body(b"not json\n").is_err());
        assert!(commands_from_body(b"\n").is_err());
        assert!(commands_from_body(&[0xff, 0xfe]).is_err());
    }
}
