//! Fan-out subscribers that speak WebSocket without a library.
//!
//! At a million deliveries a second the load generator shares the two cores
//! with the server under test, and what it spends per frame bounds the rate
//! any server can be seen to sustain. A subscriber only ever reads small
//! unfragmented text frames and sends a subscribe and a close, so this one
//! reads into a buffer of its own and classifies each frame where it lies:
//! no message object, no copy, one task wake per read however many frames
//! it brought.
//!
//! What it accepts is what a server may send an `actioncable-v1-json`
//! client without extensions: unmasked, final frames with no reserved bits.
//! Anything else ends the client with an error in the run's results, so a
//! server it cannot read shows as a failure, never as a lower rate.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context as _, Result};
use memchr::memmem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{
    classify, subscribe_frame, tcp_connect, Client, Kind, Opened, Shared, State, Target,
};

/// Frame opcodes (RFC 6455, 5.2).
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// The longest frame a subscriber takes (the server's frames here are a
/// few hundred bytes).
const MAX_FRAME: usize = 1 << 20;

/// A complete frame at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
struct Frame {
    opcode: u8,
    payload: Range<usize>,
    /// Header and payload.
    len: usize,
}

/// The frame `buf` starts with: `Ok(None)` while it is incomplete.
fn parse(buf: &[u8]) -> Result<Option<Frame>> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x80 == 0 {
        bail!("a fragmented frame (FIN not set)");
    }
    if b0 & 0x70 != 0 {
        bail!("reserved bits set in a frame header ({b0:#04x})");
    }
    if b1 & 0x80 != 0 {
        bail!("a masked frame from the server");
    }
    let (header, len) = match b1 & 0x7F {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            (4, u16::from_be_bytes([b[0], b[1]]) as usize)
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut be = [0u8; 8];
            be.copy_from_slice(b);
            let n = u64::from_be_bytes(be);
            (10, usize::try_from(n).unwrap_or(usize::MAX))
        }
        n => (2, n as usize),
    };
    if len > MAX_FRAME {
        bail!("a {len}-byte frame (at most {MAX_FRAME} taken)");
    }
    if buf.len() < header + len {
        return Ok(None);
    }
    Ok(Some(Frame {
        opcode: b0 & 0x0F,
        payload: header..header + len,
        len: header + len,
    }))
}

/// A client frame: final, masked (as every client frame must be).
fn encode(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = fastrand::u32(..).to_be_bytes();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads until `buf` holds a complete frame; returns it (its bytes stay at
/// the start of `buf`).
async fn read_frame(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Frame> {
    loop {
        if let Some(f) = parse(buf)? {
            return Ok(f);
        }
        buf.reserve(16 * 1024);
        if socket.read_buf(buf).await? == 0 {
            bail!("connection closed");
        }
    }
}

/// Client `i`: TCP, the upgrade offering `actioncable-v1-json` with a
/// same-origin `Origin`, the welcome, the BenchmarkChannel subscription and
/// its confirmation (as [`crate::client::open`]). Returns the socket, what
/// it has read past the confirmation, and the timings.
pub async fn open(target: &Target, i: usize) -> Result<(TcpStream, Vec<u8>, Opened)> {
    let started = Instant::now();
    let (_, hostport) = target.addr()?;
    let url = target.url.replace("{i}", &i.to_string());
    let path = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.find('/').map(|at| &rest[at..]))
        .unwrap_or("/");
    let mut socket = tcp_connect(target, i, None).await?;
    // The key is RFC 6455's example: the server only hashes it.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: actioncable-v1-json\r\nOrigin: http://{hostport}\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(at) = memmem::find(&buf, b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > 16 * 1024 {
            bail!("no end to the upgrade response's head in 16 KiB");
        }
        buf.reserve(4096);
        if socket.read_buf(&mut buf).await? == 0 {
            bail!("connection closed during the upgrade");
        }
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        let line =
            String::from_utf8_lossy(&buf[..memchr::memchr(b'\r', &buf).unwrap_or(0)]).into_owned();
        bail!("the upgrade was answered {line}");
    }
    buf.drain(..head_end);
    let mut welcome = None;
    loop {
        let f = read_frame(&mut socket, &mut buf).await?;
        let kind = match f.opcode {
            TEXT => classify(&buf[f.payload.clone()]),
            CLOSE => bail!("closed by the server"),
            _ => Kind::Other,
        };
        buf.drain(..f.len);
        match (kind, welcome) {
            (Kind::Welcome, None) => {
                welcome = Some(started.elapsed());
                let subscribe = encode(TEXT, subscribe_frame().as_bytes());
                socket.write_all(&subscribe).await?;
            }
            (Kind::Confirm, Some(w)) => {
                return Ok((
                    socket,
                    buf,
                    Opened {
                        welcome: w,
                        confirm: started.elapsed(),
                    },
                ))
            }
            (Kind::Ping | Kind::Other, _) => {}
            (Kind::Reject, _) => bail!("subscription rejected"),
            (k, _) => bail!("unexpected before the confirmation: {k:?}"),
        }
    }
}

/// Runs an opened subscriber in its own task: every broadcast's latency
/// goes to `shared`; a close told through the handle is sent as a close
/// frame.
pub fn spawn(id: usize, socket: TcpStream, buf: Vec<u8>, shared: Arc<Shared>) -> Client {
    let state = Arc::new(State::default());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(id, socket, buf, shared, state.clone(), rx));
    Client::new(id, state, tx)
}

async fn run(
    id: usize,
    mut socket: TcpStream,
    mut buf: Vec<u8>,
    shared: Arc<Shared>,
    state: Arc<State>,
    mut rx: mpsc::UnboundedReceiver<Message>,
) {
    let mut closing = false;
    let outcome: Result<()> = async {
        loop {
            // Every complete frame in the buffer, where it lies.
            let mut at = 0;
            while let Some(f) = parse(&buf[at..])? {
                let payload = at + f.payload.start..at + f.payload.end;
                match f.opcode {
                    TEXT => match classify(&buf[payload]) {
                        Kind::Broadcast(Some(sent)) => {
                            state.broadcasts.fetch_add(1, Ordering::Relaxed);
                            shared.record_delivery(sent);
                        }
                        Kind::Ping => {
                            state.pings.fetch_add(1, Ordering::Relaxed);
                        }
                        Kind::Disconnect { too_slow } => {
                            if too_slow {
                                state.too_slow.store(true, Ordering::SeqCst);
                            }
                        }
                        Kind::Confirm | Kind::Welcome | Kind::Result(_) => {}
                        k => {
                            let text =
                                String::from_utf8_lossy(&buf[at + f.payload.start..at + f.len]);
                            return Err(anyhow!("unexpected frame {k:?}: {text}"));
                        }
                    },
                    CLOSE => return Ok(()),
                    PING => {
                        let pong = encode(PONG, &buf[payload]);
                        socket.write_all(&pong).await?;
                    }
                    _ => {}
                }
                at += f.len;
            }
            buf.drain(..at);
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(16 * 1024);
            }
            tokio::select! {
                biased;
                out = rx.recv(), if !closing => match out {
                    Some(Message::Close(_)) | None => {
                        closing = true;
                        // A close frame with no status; the server's
                        // answer or its EOF ends the loop.
                        socket.write_all(&encode(CLOSE, &[])).await?;
                    }
                    Some(Message::Text(t)) => socket.write_all(&encode(TEXT, t.as_bytes())).await?,
                    Some(_) => {}
                },
                n = socket.read_buf(&mut buf) => {
                    if n.context("read")? == 0 {
                        return Ok(());
                    }
                }
            }
        }
    }
    .await;
    if let Err(e) = outcome {
        if !closing {
            shared.error(format!("client {id}: {e:#}"));
        }
    }
    state.closed.store(true, Ordering::SeqCst);
    shared.closed.fetch_add(1, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_frames_of_each_length_form() {
        assert_eq!(parse(&[]).unwrap(), None);
        assert_eq!(parse(&[0x81]).unwrap(), None);
        assert_eq!(
            parse(&[0x81, 3, b'a', b'b', b'c', 0x81]).unwrap(),
            Some(Frame {
                opcode: TEXT,
                payload: 2..5,
                len: 5
            })
        );
        // Incomplete payload.
        assert_eq!(parse(&[0x81, 3, b'a']).unwrap(), None);
        let mut medium = vec![0x81, 126, 0x01, 0x00];
        medium.extend(std::iter::repeat_n(b'x', 256));
        assert_eq!(
            parse(&medium).unwrap(),
            Some(Frame {
                opcode: TEXT,
                payload: 4..260,
                len: 260
            })
        );
        assert_eq!(parse(&medium[..100]).unwrap(), None);
        let mut long = vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0];
        long.extend(std::iter::repeat_n(b'y', 65536));
        assert_eq!(
            parse(&long).unwrap(),
            Some(Frame {
                opcode: TEXT,
                payload: 10..65546,
                len: 65546
            })
        );
        assert_eq!(
            parse(&[0x88, 0]).unwrap(),
            Some(Frame {
                opcode: CLOSE,
                payload: 2..2,
                len: 2
            })
        );
    }

    #[test]
    fn refuses_what_a_server_may_not_send_this_client() {
        assert!(parse(&[0x01, 0]).is_err(), "fragment");
        assert!(
            parse(&[0xC1, 0]).is_err(),
            "RSV1 (compression was not offered)"
        );
        assert!(parse(&[0x81, 0x80, 1, 2, 3, 4]).is_err(), "masked");
        assert!(
            parse(&[0x81, 127, 0xFF, 0, 0, 0, 0, 0, 0, 0]).is_err(),
            "huge"
        );
    }

    #[test]
    fn client_frames_are_masked_and_unmask_to_the_payload() {
        for n in [0usize, 5, 125, 126, 300, 70_000] {
            let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let f = encode(TEXT, &payload);
            assert_eq!(f[0], 0x81);
            assert_eq!(f[1] & 0x80, 0x80, "mask bit");
            let (header, len) = match f[1] & 0x7F {
                126 => (4, u16::from_be_bytes([f[2], f[3]]) as usize),
                127 => (
                    10,
                    u64::from_be_bytes(f[2..10].try_into().unwrap()) as usize,
                ),
                l => (2, l as usize),
            };
            assert_eq!(len, n);
            let mask = &f[header..header + 4];
            let unmasked: Vec<u8> = f[header + 4..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(unmasked, payload);
        }
    }
}
