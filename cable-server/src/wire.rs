//! The WebSocket write path on a plain TCP socket (what [`crate::serve`]
//! accepts): no writer task per connection.
//!
//! A connection's outbox announces work to one of a few flusher tasks
//! ([`Flusher`]); a flusher takes every frame queued since its last round and
//! writes them with one vectored write, the frame bytes shared with every other
//! subscriber of the broadcast (only the 2 to 10 header bytes are the
//! connection's). So a broadcast to a thousand sockets wakes one task rather than a
//! thousand, and a socket that gets several frames between two rounds gets
//! them in one system call (uWebSockets' corking). Only a socket whose
//! kernel buffer is full gets a task of its own, a drainer, until it has
//! caught up (or the write timeout drops it).
//!
//! tungstenite still reads the socket and answers pings ([`Reader`]): its
//! writes (pongs) come into the same ordered byte path. Its close echo is
//! not used: the client's Close is answered by the outbox's own final close,
//! with the client's code and reason (empty becomes 1000, as Rails does).

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use cable_core::transport::{Outbox, Outgoing, Popped, Ready};
use futures_util::Stream;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::{
    CloseFrame, Role, WebSocketConfig, WebSocketContext,
};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Most frames in one vectored write (two slices each).
const BATCH: usize = 64;

/// One connection's socket and what is on its way to it.
pub(crate) struct Wire {
    tcp: TcpStream,
    outbox: Arc<Outbox>,
    out: Mutex<Out>,
    /// Wakes [`Wire::finished`] once the last frame is written.
    done: Notify,
    write_timeout: Duration,
    /// Most bytes waiting in `pending` (a batch's tail plus control frames)
    /// before the client counts as not reading.
    max_pending: usize,
}

#[derive(Default)]
struct Out {
    /// Accepted bytes the socket has not taken yet: always the tail of a
    /// write, so nothing else may be written before them.
    pending: Vec<u8>,
    /// A drainer task is writing; flushers leave the socket alone.
    draining: bool,
    /// The close frame is written (or the socket failed): nothing more goes.
    finished: bool,
    /// The close frame is in `pending`.
    close_pending: bool,
    /// The client's Close, answered as the last frame.
    echo: Option<Vec<u8>>,
}

enum Pumped {
    /// Nothing left to write.
    Idle,
    /// The socket is full; a drainer must wait for it.
    Blocked,
    /// The close frame is out or the socket failed.
    Finished,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here leaves the state half-changed across a panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A server text frame's header (FIN, opcode 1, unmasked) into `buf`;
/// returns its length.
fn text_header(len: usize, buf: &mut [u8; 10]) -> usize {
    buf[0] = 0x81;
    if len < 126 {
        buf[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        buf[1] = 126;
        buf[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        buf[1] = 127;
        buf[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// A Close frame with `code` and `reason` (control frames hold at most 125
/// bytes: a longer reason is cut at a character boundary).
fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let mut f = Vec::with_capacity(4 + reason.len());
    f.extend_from_slice(&[0x88, (2 + reason.len()) as u8]);
    f.extend_from_slice(&code.to_be_bytes());
    f.extend_from_slice(reason);
    f
}

/// tungstenite's own writes, frame by frame, without its Close frames (the
/// outbox's close answers the client). tungstenite hands over whole frames;
/// bytes that do not parse as frames pass unchanged.
fn without_closes(buf: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let mut i = 0;
    let mut kept: Option<Vec<u8>> = None;
    while i < buf.len() {
        let Some(&b1) = buf.get(i + 1) else { break };
        let (head, len) = match b1 & 0x7f {
            126 => match buf.get(i + 2..i + 4) {
                Some(b) => (4, u16::from_be_bytes([b[0], b[1]]) as usize),
                None => break,
            },
            127 => match buf.get(i + 2..i + 10) {
                Some(b) => (
                    10,
                    u64::from_be_bytes(b.try_into().unwrap_or([0xff; 8])) as usize,
                ),
                None => break,
            },
            n => (2, n as usize),
        };
        let end = (i + head).saturating_add(len).min(buf.len());
        if buf[i] & 0x0f == 0x8 {
            kept.get_or_insert_with(|| buf[..i].to_vec());
        } else if let Some(k) = &mut kept {
            k.extend_from_slice(&buf[i..end]);
        }
        i = end;
    }
    match kept {
        Some(mut k) => {
            k.extend_from_slice(&buf[i..]);
            std::borrow::Cow::Owned(k)
        }
        None => std::borrow::Cow::Borrowed(buf),
    }
}

thread_local! {
    /// A flusher's batch, reused across connections and rounds.
    static BATCH_BUF: std::cell::RefCell<Vec<Outgoing>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Wire {
    pub(crate) fn new(
        tcp: TcpStream,
        outbox: Arc<Outbox>,
        write_timeout: Duration,
        max_pending: usize,
    ) -> Arc<Self> {
        Arc::new(Wire {
            tcp,
            outbox,
            out: Mutex::new(Out::default()),
            done: Notify::new(),
            write_timeout,
            max_pending,
        })
    }

    /// Routes the outbox's announcements to `lane`'s flusher.
    pub(crate) fn attach(self: &Arc<Self>, lane: Lane) {
        self.outbox.set_ready_hook(Box::new(Hook {
            wire: Arc::downgrade(self),
            shard: lane.0,
        }));
    }

    /// Remembers the client's Close: the last frame answers it.
    pub(crate) fn peer_closed(&self, frame: Option<&CloseFrame>) {
        let echo = match frame {
            Some(f) => close_frame(u16::from(f.code), &f.reason),
            None => close_frame(1000, ""),
        };
        lock(&self.out).echo.get_or_insert(echo);
    }

    /// Waits until the close frame is written or the socket failed, at most
    /// the write timeout (plus a little: the drainer's own timeout decides).
    pub(crate) async fn finished(&self) {
        let wait = async {
            loop {
                let notified = self.done.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if lock(&self.out).finished {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(self.write_timeout + Duration::from_secs(1), wait).await;
    }

    /// A flusher's round for this connection.
    fn flush(self: &Arc<Self>) {
        let mut out = lock(&self.out);
        if out.draining {
            return;
        }
        if let Pumped::Blocked = self.pump(&mut out) {
            out.draining = true;
            drop(out);
            tokio::spawn(drain(self.clone()));
        }
    }

    /// Writes what is pending, then queued frames, until the socket is full,
    /// the queue is empty, or the close frame is out.
    fn pump(&self, out: &mut Out) -> Pumped {
        loop {
            if !out.pending.is_empty() {
                match self.tcp.try_write(&out.pending) {
                    Ok(n) => {
                        out.pending.drain(..n);
                        if !out.pending.is_empty() {
                            return Pumped::Blocked;
                        }
                        out.pending = Vec::new();
                        if out.close_pending {
                            self.finish(out);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Pumped::Blocked,
                    Err(e) => return self.fail(out, &e),
                }
            }
            if out.finished {
                // Whatever is still queued has nowhere to go.
                let mut sink = Vec::new();
                while self.outbox.try_pop_batch(&mut sink, BATCH) == Popped::Items {
                    sink.clear();
                }
                return Pumped::Finished;
            }
            let step = BATCH_BUF.with(|b| {
                let mut batch = b.borrow_mut();
                batch.clear();
                let step = match self.outbox.try_pop_batch(&mut batch, BATCH) {
                    Popped::Empty => Some(Pumped::Idle),
                    Popped::Finished => {
                        self.finish(out);
                        Some(Pumped::Finished)
                    }
                    Popped::Items => self.write_batch(out, &batch),
                };
                batch.clear();
                step
            });
            if let Some(step) = step {
                return step;
            }
        }
    }

    /// One vectored write of `batch`; keeps the tail the socket did not take.
    /// None when all of it went and there may be more to write.
    fn write_batch(&self, out: &mut Out, batch: &[Outgoing]) -> Option<Pumped> {
        let batch = &batch[..batch.len().min(BATCH)];
        // Not zeroed: filled up to `n` before use (this runs per delivery).
        let mut heads = [MaybeUninit::<[u8; 10]>::uninit(); BATCH];
        let mut slices = [MaybeUninit::<IoSlice<'_>>::uninit(); 2 * BATCH];
        let mut close: Option<Vec<u8>> = None;
        let mut lens = [0u8; BATCH];
        for (i, item) in batch.iter().enumerate() {
            match item {
                Outgoing::Text(f) => {
                    let mut h = [0u8; 10];
                    lens[i] = text_header(f.len(), &mut h) as u8;
                    heads[i].write(h);
                }
                Outgoing::Close { code, reason } => {
                    close = Some(
                        out.echo
                            .take()
                            .unwrap_or_else(|| close_frame(*code, reason)),
                    );
                }
            }
        }
        let mut n = 0;
        let mut total = 0;
        for (i, item) in batch.iter().enumerate() {
            match item {
                Outgoing::Text(f) => {
                    // SAFETY: written in the loop above for every text item.
                    let head = unsafe { heads[i].assume_init_ref() };
                    slices[n].write(IoSlice::new(&head[..usize::from(lens[i])]));
                    slices[n + 1].write(IoSlice::new(f.as_bytes()));
                    n += 2;
                    total += usize::from(lens[i]) + f.len();
                }
                Outgoing::Close { .. } => {
                    if let Some(c) = &close {
                        slices[n].write(IoSlice::new(c));
                        n += 1;
                        total += c.len();
                    }
                }
            }
        }
        // SAFETY: the first `n` slices were written above; MaybeUninit<T>
        // has T's layout.
        let slices: &[IoSlice<'_>] =
            unsafe { std::slice::from_raw_parts(slices.as_ptr().cast::<IoSlice<'_>>(), n) };
        let written = match self.tcp.try_write_vectored(slices) {
            Ok(w) => w,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Some(self.fail(out, &e)),
        };
        if written < total {
            let mut skip = written;
            for s in slices {
                if skip >= s.len() {
                    skip -= s.len();
                } else {
                    out.pending.extend_from_slice(&s[skip..]);
                    skip = 0;
                }
            }
            out.close_pending = close.is_some();
            return Some(Pumped::Blocked);
        }
        if close.is_some() {
            self.finish(out);
            return Some(Pumped::Finished);
        }
        None
    }

    /// tungstenite's writes (pongs): in order with everything else.
    fn control(self: &Arc<Self>, buf: &[u8]) {
        let bytes = without_closes(buf);
        if bytes.is_empty() {
            return;
        }
        let mut out = lock(&self.out);
        if out.finished || out.close_pending {
            return;
        }
        if out.draining || !out.pending.is_empty() {
            out.pending.extend_from_slice(&bytes);
            if out.pending.len() > self.max_pending {
                tracing::warn!(
                    "WebSocket client does not read: {} bytes waiting; dropping the connection",
                    out.pending.len()
                );
                self.fail(&mut out, &io::Error::other("client not reading"));
            }
            return;
        }
        let written = match self.tcp.try_write(&bytes) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => {
                self.fail(&mut out, &e);
                return;
            }
        };
        if written < bytes.len() {
            out.pending.extend_from_slice(&bytes[written..]);
            out.draining = true;
            drop(out);
            tokio::spawn(drain(self.clone()));
        }
    }

    fn finish(&self, out: &mut Out) {
        out.finished = true;
        out.close_pending = false;
        out.pending = Vec::new();
        self.done.notify_waiters();
    }

    /// The socket failed: drop what is queued and end the session.
    fn fail(&self, out: &mut Out, e: &io::Error) -> Pumped {
        if !matches!(
            e.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        ) {
            tracing::warn!("WebSocket write failed: {e}; dropping the connection");
        }
        self.outbox.abort();
        self.finish(out);
        Pumped::Finished
    }
}

/// Writes a full socket's backlog as the kernel takes it.
async fn drain(wire: Arc<Wire>) {
    loop {
        let ready = tokio::time::timeout(wire.write_timeout, wire.tcp.writable()).await;
        let mut out = lock(&wire.out);
        match ready {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                wire.fail(&mut out, &e);
                out.draining = false;
                return;
            }
            Err(_) => {
                tracing::warn!(
                    "WebSocket write timed out after {:?}; dropping the connection",
                    wire.write_timeout
                );
                wire.fail(&mut out, &io::Error::from(io::ErrorKind::TimedOut));
                out.draining = false;
                return;
            }
        }
        match wire.pump(&mut out) {
            Pumped::Blocked => {}
            Pumped::Idle | Pumped::Finished => {
                out.draining = false;
                return;
            }
        }
    }
}

/// The outbox's announcement: puts the wire on its flusher's list.
struct Hook {
    wire: Weak<Wire>,
    shard: Arc<Shard>,
}

impl Ready for Hook {
    fn ready(&self) {
        let Some(wire) = self.wire.upgrade() else {
            return;
        };
        let mut dirty = lock(&self.shard.dirty);
        let first = dirty.is_empty();
        dirty.push(wire);
        drop(dirty);
        if first {
            self.shard.wake.notify_one();
        }
    }
}

struct Shard {
    dirty: Mutex<Vec<Arc<Wire>>>,
    wake: Arc<Notify>,
}

impl Drop for Shard {
    fn drop(&mut self) {
        // Its task sees the shard gone and ends.
        self.wake.notify_one();
    }
}

/// A few flusher tasks, one per worker thread, each serving the connections
/// given to it. The tasks end once the `Flusher` and every connection it
/// served are gone.
pub(crate) struct Flusher {
    shards: Box<[Arc<Shard>]>,
    next: AtomicUsize,
}

impl Flusher {
    /// Starts the tasks (inside a Tokio runtime).
    pub(crate) fn start() -> Self {
        let n = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 8);
        let shards = (0..n)
            .map(|_| {
                let wake = Arc::new(Notify::new());
                let shard = Arc::new(Shard {
                    dirty: Mutex::new(Vec::new()),
                    wake: wake.clone(),
                });
                tokio::spawn(flusher(Arc::downgrade(&shard), wake));
                shard
            })
            .collect();
        Flusher {
            shards,
            next: AtomicUsize::new(0),
        }
    }

    /// The flusher a new connection is served by (in turn).
    pub(crate) fn lane(&self) -> Lane {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        Lane(self.shards[i].clone())
    }
}

/// One flusher task's share of the connections.
pub(crate) struct Lane(Arc<Shard>);

async fn flusher(shard: Weak<Shard>, wake: Arc<Notify>) {
    let mut work: Vec<Arc<Wire>> = Vec::new();
    loop {
        {
            let Some(shard) = shard.upgrade() else { break };
            std::mem::swap(&mut work, &mut *lock(&shard.dirty));
        }
        if work.is_empty() {
            wake.notified().await;
            continue;
        }
        for wire in work.drain(..) {
            wire.flush();
        }
        // One round at a time: let the sessions and the fan-out run between.
        tokio::task::yield_now().await;
    }
}

/// The client's frames: tungstenite's protocol state read straight from the
/// socket (no async adapter between them, so no waker bookkeeping per
/// connection). Its writes (pongs) go into the wire's ordered path.
///
/// tungstenite's state (its read buffer grown to the largest frame so far,
/// its write buffer, the codec: some 800 bytes) is dropped whenever every
/// byte read so far forms whole frames and no fragmented message is open,
/// and made anew when the next bytes come: an idle connection keeps none of
/// it. At such a boundary a fresh context is the same as the old one (it
/// holds no partial frame or message, and its pongs are written: the wire
/// takes every write at once).
pub(crate) struct Reader {
    ctx: Option<Box<WebSocketContext>>,
    config: Arc<WebSocketConfig>,
    /// Where the bytes read so far end in the client's frame sequence.
    frames: Frames,
    wire: Arc<Wire>,
    /// An error ended the stream: tungstenite's state is not to be read
    /// again (as tokio-tungstenite's stream ends after its first error).
    ended: bool,
    /// The client sent a Close: the context keeps its closing state.
    closing: bool,
}

impl Reader {
    /// `pre`: bytes read past the HTTP request (the client's first frames).
    pub(crate) fn new(wire: Arc<Wire>, pre: Vec<u8>, config: Arc<WebSocketConfig>) -> Self {
        let mut frames = Frames::default();
        frames.feed(&pre);
        let ctx = (!pre.is_empty()).then(|| {
            Box::new(WebSocketContext::from_partially_read(
                pre,
                Role::Server,
                Some(*config),
            ))
        });
        Reader {
            ctx,
            config,
            frames,
            wire,
            ended: false,
            closing: false,
        }
    }
}

/// Tracks the client's frame boundaries from the bytes given to tungstenite
/// (RFC 6455 section 5.2 headers): only to tell when its state holds nothing.
/// tungstenite still validates everything; a frame it rejects ends the
/// reader anyway.
#[derive(Default, Debug)]
struct Frames {
    /// The header read so far of the next frame (at most 14 bytes).
    head: [u8; 14],
    head_len: u8,
    /// Payload bytes still to come of the current frame.
    left: u64,
    /// A data frame without FIN came: a fragmented message is open.
    open: bool,
}

impl Frames {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.left > 0 {
                let n = bytes
                    .len()
                    .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                self.left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            self.head[usize::from(self.head_len)] = bytes[0];
            self.head_len += 1;
            bytes = &bytes[1..];
            self.header_done();
        }
    }

    /// Takes the header in once it is whole.
    fn header_done(&mut self) {
        let head = &self.head[..usize::from(self.head_len)];
        if head.len() < 2 {
            return;
        }
        let (ext, len7) = match head[1] & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        let mask = if head[1] & 0x80 != 0 { 4 } else { 0 };
        if head.len() < 2 + ext + mask {
            return;
        }
        self.left = len7.unwrap_or_else(|| {
            head[2..2 + ext]
                .iter()
                .fold(0u64, |n, b| (n << 8) | u64::from(*b))
        });
        let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0f);
        // Continuation, text, binary: they open or close a message; control
        // frames come between fragments and change nothing.
        if opcode <= 2 {
            self.open = !fin;
        }
        self.head_len = 0;
    }

    /// Every byte so far belongs to whole frames and no message is open.
    fn at_boundary(&self) -> bool {
        self.head_len == 0 && self.left == 0 && !self.open
    }
}

/// The socket as tungstenite's blocking API sees it: reads never wait
/// (`WouldBlock` sends the reader back to the runtime), writes are taken
/// whole.
struct SyncIo<'a> {
    wire: &'a Arc<Wire>,
    frames: &'a mut Frames,
}

impl io::Read for SyncIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.wire.tcp.try_read(buf)?;
        self.frames.feed(&buf[..n]);
        Ok(n)
    }
}

impl io::Write for SyncIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.wire.control(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream for Reader {
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        loop {
            let config = &this.config;
            let ctx = this.ctx.get_or_insert_with(|| {
                Box::new(WebSocketContext::new(Role::Server, Some(**config)))
            });
            let read = ctx.read(&mut SyncIo {
                wire: &this.wire,
                frames: &mut this.frames,
            });
            if read.is_err()
                && !matches!(&read, Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock)
            {
                this.ended = true;
            }
            match read {
                Ok(m) => {
                    this.closing |= matches!(m, Message::Close(_));
                    return Poll::Ready(Some(Ok(m)));
                }
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    if this.frames.at_boundary() && !this.closing {
                        this.ctx = None;
                    }
                    // The failed read cleared the socket's readiness: this
                    // registers the task for the next bytes.
                    match this.wire.tcp.poll_read_ready(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(e)) => {
                            this.ended = true;
                            return Poll::Ready(Some(Err(WsError::Io(e))));
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                    return Poll::Ready(None)
                }
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_follow_rfc6455_lengths() {
        let mut h = [0u8; 10];
        assert_eq!(text_header(5, &mut h), 2);
        assert_eq!(&h[..2], &[0x81, 5]);
        assert_eq!(text_header(126, &mut h), 4);
        assert_eq!(&h[..4], &[0x81, 126, 0, 126]);
        assert_eq!(text_header(70_000, &mut h), 10);
        assert_eq!(&h[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    #[test]
    fn tungstenites_closes_are_left_out_and_pongs_kept() {
        let pong = [0x8a, 2, b'h', b'i'];
        let close = [0x88, 2, 0x03, 0xe8];
        let mut both = pong.to_vec();
        both.extend_from_slice(&close);
        both.extend_from_slice(&pong);
        assert_eq!(&*without_closes(&pong), &pong);
        assert!(without_closes(&close).is_empty());
        assert_eq!(&*without_closes(&both), &[pong, pong].concat()[..]);
    }

    /// A client frame: masked, with the lengths' three encodings.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n @ 126..=65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [1, 2, 3, 4];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[test]
    fn frame_boundaries_are_found_however_the_bytes_are_split() {
        // (frame, whether a message is complete after it)
        let frames = [
            (client_frame(true, 1, b"hello"), true),
            (client_frame(true, 1, &[b'a'; 200]), true),
            (client_frame(true, 2, &[b'b'; 70_000]), true),
            (client_frame(false, 1, b"frag"), false),
            (client_frame(true, 9, b"ping"), false),
            (client_frame(false, 0, b"ment"), false),
            (client_frame(true, 0, b"ed"), true),
            (client_frame(true, 10, b""), true),
            (client_frame(true, 1, b""), true),
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(|(f, _)| f.clone()).collect();
        let mut ends = std::collections::HashMap::new();
        let mut at = 0;
        for (f, complete) in &frames {
            at += f.len();
            ends.insert(at, *complete);
        }
        for chunk in [1, 2, 3, 7, 13, 14, 64, 1000, bytes.len()] {
            let mut t = Frames::default();
            let mut fed = 0;
            for piece in bytes.chunks(chunk) {
                t.feed(piece);
                fed += piece.len();
                let expected = ends.get(&fed).copied().unwrap_or(false);
                assert_eq!(
                    t.at_boundary(),
                    expected,
                    "chunk {chunk}, after {fed} bytes"
                );
            }
            assert!(t.at_boundary());
        }
    }

    #[tokio::test]
    async fn an_idle_reader_keeps_no_tungstenite_state_and_reads_on() {
        use futures_util::{FutureExt, StreamExt};
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let cable = cable_core::Cable::builder().build();
        let outbox = cable_core::transport::new_outbox(&cable);
        let wire = Wire::new(server, outbox, Duration::from_secs(1), 1 << 20);
        let config = Arc::new(WebSocketConfig::default().read_buffer_size(16));
        let mut pre = client_frame(true, 1, b"first");
        pre.extend_from_slice(&client_frame(false, 1, b"one "));
        let mut reader = Reader::new(wire, pre, config);
        let text = |m: Option<Result<Message, WsError>>| match m {
            Some(Ok(Message::Text(t))) => t.to_string(),
            other => panic!("expected a text message, got {other:?}"),
        };
        assert_eq!(text(reader.next().await), "first");
        // Half a fragmented message: the context holds it.
        assert!(reader.next().now_or_never().is_none());
        assert!(reader.ctx.is_some());
        let rest = client_frame(true, 0, &[b'x'; 300]);
        client.write_all(&rest[..7]).await.unwrap();
        client.write_all(&rest[7..]).await.unwrap();
        assert_eq!(
            text(reader.next().await),
            format!("one {}", "x".repeat(300))
        );
        assert!(reader.next().now_or_never().is_none());
        assert!(
            reader.ctx.is_none(),
            "an idle reader keeps tungstenite's state"
        );
        // A new context reads on, a frame split over two writes included.
        let next = client_frame(true, 1, b"after idle");
        client.write_all(&next[..3]).await.unwrap();
        // On loopback the bytes are there long before this.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(reader.next().now_or_never().is_none());
        assert!(reader.ctx.is_some());
        client.write_all(&next[3..]).await.unwrap();
        assert_eq!(text(reader.next().await), "after idle");
    }

    #[test]
    fn close_reasons_fit_a_control_frame() {
        let f = close_frame(1000, &"é".repeat(100));
        assert!(f.len() <= 127);
        assert_eq!(f[1] as usize, f.len() - 2);
        assert!(std::str::from_utf8(&f[4..]).is_ok());
    }
}
