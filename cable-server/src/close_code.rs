//! Answers a client's Close that carries no status code with 1000, as Rails
//! (websocket-driver) does.
//!
//! tungstenite echoes a Close exactly, so a Close without a code (what
//! `@rails/actioncable` and browsers send on `close()`) would be answered
//! without one and the client would report 1005 where Rails gives it 1000.
//! The echo is queued inside tungstenite and cannot be replaced from above,
//! so this wrapper sits under it on the socket: it follows the frames the
//! server writes and turns an empty Close (`88 00`) into Close 1000
//! (`88 02 03 e8`). Server frames are never masked, which keeps this a
//! simple header walk; payload bytes pass through untouched.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const EMPTY_CLOSE: [u8; 2] = [0x88, 0x00];
const CLOSE_1000: [u8; 4] = [0x88, 0x02, 0x03, 0xe8];

/// Where the outgoing byte stream is, frame-wise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Walk {
    /// Header bytes of the current frame seen so far (0 = at a boundary).
    have: u8,
    /// Header bytes this frame's header has in all (2, 4 or 10; 0 = unknown).
    need: u8,
    /// The payload length being read from the header.
    len: u64,
    /// Payload bytes still to pass.
    payload: u64,
}

impl Walk {
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload == 0
    }

    /// Advances over `buf`; stops before an empty Close that starts at a
    /// frame boundary (or a lone 0x88 that may be one) when `stop` is set.
    /// Returns the bytes passed.
    fn advance(&mut self, buf: &[u8], stop: bool) -> usize {
        let mut i = 0;
        while i < buf.len() {
            if self.payload > 0 {
                let n = (self.payload.min((buf.len() - i) as u64)) as usize;
                self.payload -= n as u64;
                i += n;
                continue;
            }
            if stop && self.at_boundary() && buf[i] == EMPTY_CLOSE[0] {
                match buf.get(i + 1) {
                    Some(&b) if b == EMPTY_CLOSE[1] => return i,
                    None => return i,
                    Some(_) => {}
                }
            }
            let b = buf[i];
            i += 1;
            match self.have {
                0 => {
                    self.have = 1;
                }
                1 => {
                    self.have = 2;
                    let len7 = b & 0x7f;
                    let (need, len) = match len7 {
                        126 => (4, 0),
                        127 => (10, 0),
                        n => (2, u64::from(n)),
                    };
                    self.need = need;
                    self.len = len;
                }
                _ => {
                    self.have += 1;
                    self.len = (self.len << 8) | u64::from(b);
                }
            }
            if self.have >= 2 && self.have == self.need {
                self.payload = self.len;
                self.have = 0;
                self.need = 0;
                self.len = 0;
            }
        }
        i
    }
}

/// The socket with the Close fix on its write side; reads pass through.
pub(crate) struct CloseCodeFix<S> {
    inner: S,
    walk: Walk,
    /// Bytes to write before anything else (the rewritten Close).
    pending: [u8; 4],
    pending_from: u8,
    pending_to: u8,
    /// A 0x88 at a boundary whose next byte has not been seen yet.
    held: bool,
}

impl<S> CloseCodeFix<S> {
    pub(crate) fn new(inner: S) -> Self {
        CloseCodeFix {
            inner,
            walk: Walk::default(),
            pending: [0; 4],
            pending_from: 0,
            pending_to: 0,
            held: false,
        }
    }

    fn queue(&mut self, bytes: &[u8]) {
        self.pending[..bytes.len()].copy_from_slice(bytes);
        self.pending_from = 0;
        self.pending_to = bytes.len() as u8;
    }
}

impl<S: AsyncWrite + Unpin> CloseCodeFix<S> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending_from < self.pending_to {
            let chunk = &self.pending[self.pending_from as usize..self.pending_to as usize];
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, chunk))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending_from += n as u8;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CloseCodeFix<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CloseCodeFix<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.held {
            // The byte after a held 0x88 decides what it was.
            this.held = false;
            if buf[0] == EMPTY_CLOSE[1] {
                this.queue(&CLOSE_1000);
                let _ = this.poll_pending(cx)?;
                return Poll::Ready(Ok(1));
            }
            this.walk.advance(&[EMPTY_CLOSE[0]], false);
            this.queue(&[EMPTY_CLOSE[0]]);
            ready!(this.poll_pending(cx))?;
        }
        let mut scan = this.walk;
        let pass = scan.advance(buf, true);
        if pass == 0 {
            if buf.len() == 1 {
                this.held = true;
                return Poll::Ready(Ok(1));
            }
            this.queue(&CLOSE_1000);
            let _ = this.poll_pending(cx)?;
            return Poll::Ready(Ok(2));
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..pass]))?;
        this.walk.advance(&buf[..n], false);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.held {
            this.held = false;
            this.walk.advance(&[EMPTY_CLOSE[0]], false);
            this.queue(&[EMPTY_CLOSE[0]]);
        }
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Server frames as tungstenite writes them (unmasked).
    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n <= 0xffff => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    async fn through(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut w = CloseCodeFix::new(Vec::new());
        for c in input.chunks(chunk) {
            w.write_all(c).await.unwrap();
        }
        w.flush().await.unwrap();
        w.inner
    }

    #[tokio::test]
    async fn only_an_empty_close_at_a_frame_boundary_is_rewritten() {
        // Payloads that contain 88 00 must pass untouched.
        let tricky = [0x88u8, 0x00, 0x88, 0x00, b'x'];
        let mut input = frame(1, &tricky);
        input.extend(frame(1, &vec![0x88; 300]));
        input.extend(frame(1, &vec![0u8; 70_000]));
        input.extend(frame(9, b""));
        let mut want = input.clone();
        input.extend(EMPTY_CLOSE);
        want.extend(CLOSE_1000);
        for chunk in [1, 2, 3, 7, 64, 1 << 20] {
            assert_eq!(through(&input, chunk).await, want, "chunks of {chunk}");
        }
        // A close with a code is left alone.
        let coded = frame(8, &[0x0f, 0xa1, b'b', b'y', b'e']);
        for chunk in [1, 2, 100] {
            assert_eq!(through(&coded, chunk).await, coded, "chunks of {chunk}");
        }
    }
}
