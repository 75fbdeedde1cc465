//! A Server-Sent Events client over a raw socket: the request as written,
//! the status and headers as answered, then the events one by one.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::WAIT;

/// One event of the stream: its fields as sent (`event`, `data` lines
/// joined with `\n`, `id`, `retry`), or a comment line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:`, if any (a browser then fires that event; else `message`).
    pub event: Option<String>,
    /// The `data:` lines, joined with newlines.
    pub data: String,
    /// `id:`, if any.
    pub id: Option<String>,
    /// `retry:`, if any.
    pub retry: Option<String>,
    /// The text of a comment line (`: ping`), for an event that is one.
    pub comment: Option<String>,
}

/// An open SSE response (or a refusal: see [`SseClient::status`]).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// # let addr: std::net::SocketAddr = "127.0.0.1:3000".parse().unwrap();
/// let mut sse = cable_test::SseClient::get(addr, "/events?stream=news", &[]).await;
/// assert_eq!(sse.status, 200);
/// assert_eq!(sse.next_event().await.event.as_deref(), Some("welcome"));
/// # }
/// ```
#[derive(Debug)]
pub struct SseClient {
    /// The HTTP status.
    pub status: u16,
    /// The response headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body of a response that is not a stream (a refusal).
    pub body: String,
    socket: TcpStream,
    /// Decoded body bytes not yet split into events.
    buf: String,
    /// Chunked-encoding bytes not yet decoded.
    raw: Vec<u8>,
    chunked: bool,
    /// The body has ended (what `buf` holds is all there is).
    ended: bool,
}

impl SseClient {
    /// `GET path` with `headers`.
    pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseClient {
        Self::request(addr, "GET", path, headers, None).await
    }

    /// `POST path` with `headers` and `body` (JSONL commands).
    pub async fn post(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> SseClient {
        Self::request(addr, "POST", path, headers, Some(body)).await
    }

    async fn request(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> SseClient {
        let mut socket = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(body) = body {
            req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        } else {
            req.push_str("\r\n");
        }
        socket
            .write_all(req.as_bytes())
            .await
            .expect("write the request");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(WAIT, socket.read(&mut byte))
                .await
                .unwrap_or_else(|_| panic!("no response head within {WAIT:?}: {method} {path}"))
                .expect("read the response head");
            assert!(
                n == 1,
                "connection closed before the response head: {method} {path}"
            );
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        let mut client = SseClient {
            status,
            headers,
            body: String::new(),
            socket,
            buf: String::new(),
            raw: Vec::new(),
            chunked,
            ended: false,
        };
        if status != 200 {
            let length = client
                .header("content-length")
                .and_then(|l| l.parse::<usize>().ok());
            if let Some(length) = length {
                let mut body = vec![0; length];
                let _ = tokio::time::timeout(WAIT, client.socket.read_exact(&mut body)).await;
                client.body = String::from_utf8_lossy(&body).into_owned();
            }
        }
        client
    }

    /// Response header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next event, within [`WAIT`]; panics when none comes or the
    /// stream ends.
    pub async fn next_event(&mut self) -> SseEvent {
        match tokio::time::timeout(WAIT, self.read_event()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("the SSE stream ended; unread: {:?}", self.buf),
            Err(_) => panic!("no SSE event within {WAIT:?}; unread: {:?}", self.buf),
        }
    }

    /// The next event that is not a comment (heartbeats are skipped) nor a
    /// `ping` event.
    pub async fn next_non_ping(&mut self) -> SseEvent {
        loop {
            let e = self.next_event().await;
            if e.comment.is_none() && e.event.as_deref() != Some("ping") {
                return e;
            }
        }
    }

    /// The next event, or None when the stream ends within [`WAIT`].
    pub async fn read_event(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                return Some(parse_event(&block));
            }
            if self.ended {
                return None;
            }
            if !self.fill().await {
                self.ended = true;
            }
        }
    }

    /// True when the stream ends (the server closed it) within `d`, skipping
    /// whatever events come first.
    pub async fn ends_within(&mut self, d: Duration) -> bool {
        tokio::time::timeout(d, async { while self.read_event().await.is_some() {} })
            .await
            .is_ok()
    }

    /// Reads more of the body into `buf`; false at its end.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = match self.socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        if !self.chunked {
            self.buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
            return true;
        }
        self.raw.extend_from_slice(&chunk[..n]);
        // Decode every complete chunk: `<hex size>\r\n<data>\r\n`.
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return true;
            };
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]).into_owned();
            let Ok(size) = usize::from_str_radix(size_text.trim(), 16) else {
                return false;
            };
            if size == 0 {
                return false;
            }
            let start = line_end + 2;
            if self.raw.len() < start + size + 2 {
                return true;
            }
            let data = String::from_utf8_lossy(&self.raw[start..start + size]).into_owned();
            self.buf.push_str(&data);
            self.raw.drain(..start + size + 2);
        }
    }
}

fn parse_event(block: &str) -> SseEvent {
    let mut event = SseEvent::default();
    let mut data = Vec::new();
    for line in block.lines() {
        if let Some(comment) = line.strip_prefix(':') {
            event.comment = Some(comment.trim().to_owned());
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
        match field {
            "event" => event.event = Some(value),
            "data" => data.push(value),
            "id" => event.id = Some(value),
            "retry" => event.retry = Some(value),
            _ => {}
        }
    }
    event.data = data.join("\n");
    event
}
