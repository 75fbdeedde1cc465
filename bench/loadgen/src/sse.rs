//! A fan-out subscriber over Server-Sent Events: `GET /events` on the
//! WebSocket URL's server, subscribed to `BenchmarkChannel` by identifier,
//! recording each broadcast's latency into the run's [`Shared`] as a
//! WebSocket subscriber does.
//!
//! The body is read line by line and only `data:` lines are looked at
//! (classified by byte search, as [`client::classify`] does frames). The
//! server writes whole events per HTTP chunk, so a chunk-size line never
//! falls inside a `data:` line; other lines are skipped.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use memchr::memchr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{self, classify, Kind, Shared, Target, IDENTIFIER};

/// `http://host:port/events?<the WebSocket URL's query>&identifier=…` for
/// client `i`, as a request line's target.
fn events_path(target: &Target, i: usize) -> String {
    let url = target.url.replace("{i}", &i.to_string());
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let id: String = url_encode(IDENTIFIER);
    if query.is_empty() {
        format!("/events?identifier={id}")
    } else {
        format!("/events?{query}&identifier={id}")
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Opens subscriber `i`: the request, then the response head (cable
/// answers 200 once the subscription is confirmed).
pub async fn open(target: &Target, i: usize) -> Result<(TcpStream, Vec<u8>)> {
    let mut socket = client::tcp_connect(target, i, None).await?;
    let (_, host) = target.addr()?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n",
        events_path(target, i)
    );
    socket.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        let n = socket
            .read(&mut chunk)
            .await
            .context("reading the response head")?;
        if n == 0 {
            bail!("closed before the response head");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            break at + 4;
        }
    };
    if !buf.starts_with(b"HTTP/1.1 200") {
        let line =
            String::from_utf8_lossy(&buf[..memchr(b'\r', &buf).unwrap_or(buf.len())]).into_owned();
        bail!("SSE answered {line}");
    }
    Ok((socket, buf.split_off(head_end)))
}

/// Reads a subscriber's events until the server closes, recording
/// broadcast latencies.
pub fn spawn(mut socket: TcpStream, mut pending: Vec<u8>, shared: Arc<Shared>) {
    tokio::spawn(async move {
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let mut start = 0;
            while let Some(nl) = memchr(b'\n', &pending[start..]) {
                let line = &pending[start..start + nl];
                if let Some(data) = line.strip_prefix(b"data: ") {
                    if let Kind::Broadcast(Some(sent)) = classify(data) {
                        shared.record_delivery(sent);
                    }
                }
                start += nl + 1;
            }
            pending.drain(..start);
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
            }
        }
        shared.closed.fetch_add(1, Ordering::SeqCst);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_events_path_keeps_the_query_and_names_the_channel() {
        let t = Target::new("ws://127.0.0.1:3300/cable?user=bench{i}");
        assert_eq!(
            events_path(&t, 7),
            "/events?user=bench7&identifier=%7B%22channel%22%3A%22BenchmarkChannel%22%7D"
        );
    }
}
