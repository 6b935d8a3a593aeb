//! A client connection's I/O: the head, idle and write timers hyper has no knob for, and the
//! count of requests in flight that starts the idle timer (see the module docs of `server`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use super::acceptor::LoadGuard;
use super::Connections;

/// Requests in flight on one connection, and the connection's reader to wake when the count
/// drops to zero (its idle timer starts then).
#[derive(Default)]
pub(super) struct Requests {
    in_flight: AtomicUsize,
    reader: AtomicWaker,
    /// Set by the watchdog to close the connection (see [`watchdog::Kill`]).
    killed: std::sync::atomic::AtomicBool,
}

impl Requests {
    /// Ends the connection at its next read or write (the reader is woken for it).
    pub(super) fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.reader.wake();
    }

    fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }
}

pub(super) fn killed() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the client took too little of a response (closed by the watchdog)",
    )
}

/// One request in flight, counted until its response body is dropped.
pub(super) struct InFlight(Arc<Requests>);

impl InFlight {
    pub(super) fn begin(requests: &Arc<Requests>) -> Self {
        requests.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(requests.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.reader.wake();
        }
    }
}

/// What every HTTP/2 connection opens with (RFC 9113 §3.4).
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a connection's first bytes announce ([`Conn::protocol`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Protocol {
    Http1,
    Http2,
    /// Not decided by what has arrived: nothing (the client closed), or the first bytes of the
    /// HTTP/2 preface without the rest yet.
    Undecided,
}

impl Protocol {
    fn of(first: &[u8]) -> Self {
        if first.is_empty() {
            Self::Undecided
        } else if first == HTTP2_PREFACE {
            Self::Http2
        } else if HTTP2_PREFACE.starts_with(first) {
            Self::Undecided
        } else {
            Self::Http1
        }
    }
}

/// What the read side of a connection is waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReadPhase {
    /// Accepted, nothing read yet.
    Fresh,
    /// A request head has started arriving (at this instant).
    Head(Instant),
    /// No request in flight since this instant.
    Idle(Instant),
    /// A request is in flight: no read deadline here (the body has its own timeout, and a
    /// stream's client sends nothing while it listens).
    Busy,
}

/// A client connection: the socket, its place under `max_open` and in its worker's load, and
/// the head, idle and write timers (see the module docs).
pub struct Conn {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// On the public listener: its place in its worker's load, and in `falgate_open_connections`.
    _load: Option<(LoadGuard, crate::telemetry::metrics::ConnectionGuard)>,
    pub(super) requests: Arc<Requests>,
    limits: Connections,
    accepted: Instant,
    phase: ReadPhase,
    /// HTTP/2 (seen from the preface): frames such as pings arrive between requests, so bytes
    /// read while idle do not start a request head.
    http2: bool,
    read_timer: Option<(Instant, Pin<Box<Sleep>>)>,
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl Conn {
    pub(super) fn new(
        stream: TcpStream,
        permit: OwnedSemaphorePermit,
        load: Option<LoadGuard>,
        limits: Connections,
    ) -> Self {
        Self {
            stream,
            _permit: permit,
            _load: load.map(|load| (load, crate::telemetry::metrics::ConnectionGuard::open())),
            requests: Arc::default(),
            limits,
            accepted: Instant::now(),
            phase: ReadPhase::Fresh,
            http2: false,
            read_timer: None,
            write_timer: None,
        }
    }

    /// Moves the read phase on from what the request count says now.
    fn update_phase(&mut self) {
        let busy = self.requests.in_flight.load(Ordering::Acquire) > 0;
        self.phase = match (self.phase, busy) {
            (_, true) => ReadPhase::Busy,
            (ReadPhase::Busy, false) => ReadPhase::Idle(Instant::now()),
            (phase, false) => phase,
        };
    }

    /// When the read side gives up, in the current phase.
    fn read_deadline(&self) -> Option<Instant> {
        let limits = &self.limits;
        match self.phase {
            ReadPhase::Fresh => Some(self.accepted + limits.header_read_timeout),
            ReadPhase::Head(started) => Some(started + limits.header_read_timeout),
            ReadPhase::Idle(since) => Some(since + limits.keep_alive_timeout),
            ReadPhase::Busy => None,
        }
    }

    /// Bytes arrived: a head starts if none was in flight (HTTP/1 only).
    fn on_bytes(&mut self, bytes: &[u8]) {
        if matches!(self.phase, ReadPhase::Fresh) && bytes.starts_with(&HTTP2_PREFACE[..12]) {
            self.http2 = true;
        }
        if self.http2 {
            if self.phase == ReadPhase::Fresh {
                self.phase = ReadPhase::Idle(Instant::now());
            }
            return;
        }
        if matches!(self.phase, ReadPhase::Fresh | ReadPhase::Idle(_)) {
            self.phase = ReadPhase::Head(Instant::now());
        }
    }

    /// Polls the read side's timer while nothing can be read: the phase's deadline, or never
    /// with a request in flight (the timer is then kept for the next idle wait, not polled:
    /// issue 23, one timer per connection, moved to each new deadline, instead of a new one
    /// armed per request).
    fn poll_read_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some(deadline) = self.read_deadline() else {
            return Poll::Pending;
        };
        let (at, timer) = self
            .read_timer
            .get_or_insert_with(|| (deadline, Box::pin(tokio::time::sleep_until(deadline))));
        if *at != deadline {
            timer.as_mut().reset(deadline);
            *at = deadline;
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                match self.phase {
                    ReadPhase::Idle(_) => "idle connection (keep-alive timeout)",
                    _ => "the request head did not arrive in time",
                },
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The protocol the client's first bytes announce, peeked: they stay in the socket, for
    /// hyper's own first read. Waits for them under the header read timeout, like a read.
    pub(super) async fn protocol(&mut self) -> io::Result<Protocol> {
        let mut first = [0; HTTP2_PREFACE.len()];
        let peeked = std::future::poll_fn(|cx| {
            let mut buf = ReadBuf::new(&mut first);
            match self.stream.poll_peek(cx, &mut buf) {
                Poll::Ready(peeked) => Poll::Ready(peeked),
                Poll::Pending => self.poll_read_deadline(cx).map(Err),
            }
        })
        .await?;
        Ok(Protocol::of(&first[..peeked]))
    }

    /// Polls the write timer after a write that could not proceed.
    fn poll_write_timer(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let limit = self.limits.write_timeout;
        let timer = self
            .write_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading (write timeout)",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The outcome of a write: progress resets the write timer; a blocked write runs it.
    fn on_write<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if self.requests.is_killed() {
            return Poll::Ready(Err(killed()));
        }
        match polled {
            Poll::Pending => match self.poll_write_timer(cx) {
                Poll::Ready(err) => Poll::Ready(Err(err)),
                Poll::Pending => Poll::Pending,
            },
            ready => {
                self.write_timer = None;
                ready
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.requests.reader.register(cx.waker());
        if this.requests.is_killed() {
            return Poll::Ready(Err(killed()));
        }
        this.update_phase();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if !read.is_empty() {
                    this.on_bytes(read);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => this.poll_read_deadline(cx).map(Err),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.on_write(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.on_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_flush(cx);
        self.on_write(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_shutdown(cx);
        self.on_write(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    //! The read side's phases and timers, and the write path, on a real socket pair with
    //! tokio's paused clock: nothing but the timer under test is pending, so the clock moves
    //! straight to it and the instants are exact.

    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    const HEAD: Duration = Duration::from_secs(3);
    const IDLE: Duration = Duration::from_secs(7);

    /// A connection as the server holds it, and its client's end.
    async fn pair() -> (Conn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let permit = Arc::new(tokio::sync::Semaphore::new(1)).try_acquire_owned().unwrap();
        let limits = Connections {
            header_read_timeout: HEAD,
            keep_alive_timeout: IDLE,
            ..Connections::default()
        };
        (Conn::new(server, permit, None, limits), client)
    }

    /// The first bytes decide the builder: the whole preface is HTTP/2, anything that leaves
    /// it is HTTP/1 at once, a preface still arriving (or nothing) is left to hyper-util's
    /// auto builder.
    #[test]
    fn the_first_bytes_name_the_protocol() {
        let cases: [(&[u8], Protocol); 8] = [
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Protocol::Http2),
            (b"GET / HTTP/1.1\r\n", Protocol::Http1),
            (b"G", Protocol::Http1),
            (b"PRX", Protocol::Http1),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\r", Protocol::Http1),
            (b"P", Protocol::Undecided),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r", Protocol::Undecided),
            (b"", Protocol::Undecided),
        ];
        for (first, protocol) in cases {
            assert_eq!(Protocol::of(first), protocol, "{:?}", String::from_utf8_lossy(first));
        }
    }

    /// The peek leaves the bytes for hyper's first read, which gets all of them at once (the
    /// read buffer is not first handed a 24-byte prefix, the cause of its doubling).
    #[tokio::test(start_paused = true)]
    async fn the_protocol_is_peeked_and_the_bytes_stay_for_the_first_read() {
        let (mut conn, mut client) = pair().await;
        let head = b"GET /a-path-longer-than-the-preface HTTP/1.1\r\nhost: x\r\n\r\n";
        client.write_all(head).await.unwrap();
        assert_eq!(conn.protocol().await.unwrap(), Protocol::Http1);
        assert_eq!(conn.phase, ReadPhase::Fresh, "a peek is not a read");
        let mut read = vec![0; 8192];
        let n = conn.read(&mut read).await.unwrap();
        assert_eq!(&read[..n], head);

        let (mut conn, mut client) = pair().await;
        client.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        assert_eq!(conn.protocol().await.unwrap(), Protocol::Http2);
        let n = conn.read(&mut read).await.unwrap();
        assert_eq!(n, 24);

        let (mut conn, client) = pair().await;
        drop(client);
        assert_eq!(conn.protocol().await.unwrap(), Protocol::Undecided, "a closed client");
    }

    /// A client that sends nothing is given up at the header read timeout, as a read would.
    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_not_peeked_at_past_the_header_read_timeout() {
        let (mut conn, _client) = pair().await;
        let started = Instant::now();
        let err = conn.protocol().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(err.to_string(), "the request head did not arrive in time");
        assert_eq!(started.elapsed(), HEAD);
    }

    /// An HTTP/1 connection: a head starts with its first bytes and has the header read
    /// timeout from then; none arrives while a request is in flight; idle after it.
    #[tokio::test(start_paused = true)]
    async fn an_http1_head_has_the_header_timeout_from_its_first_bytes_and_idle_follows_a_request() {
        let (mut conn, _client) = pair().await;
        assert_eq!(conn.read_deadline(), Some(conn.accepted + HEAD));
        tokio::time::advance(Duration::from_secs(1)).await;
        conn.on_bytes(b"GET / HTTP/1.1\r\n");
        let started = Instant::now();
        assert_eq!(conn.phase, ReadPhase::Head(started));
        assert_eq!(conn.read_deadline(), Some(started + HEAD));
        assert!(!conn.http2);
        tokio::time::advance(Duration::from_secs(1)).await;
        conn.on_bytes(b"host: x\r\n");
        assert_eq!(
            conn.phase,
            ReadPhase::Head(started),
            "a head's later bytes keep its start"
        );
        let in_flight = InFlight::begin(&conn.requests);
        conn.update_phase();
        assert_eq!(conn.read_deadline(), None, "no read deadline with a request in flight");
        drop(in_flight);
        conn.update_phase();
        let idle = Instant::now();
        assert_eq!(conn.phase, ReadPhase::Idle(idle));
        assert_eq!(conn.read_deadline(), Some(idle + IDLE));
        conn.on_bytes(b"GET /next HTTP/1.1\r\n");
        assert_eq!(conn.phase, ReadPhase::Head(idle), "the next head starts");
    }

    /// HTTP/2 is known from its preface, read first: the connection is then idle, and frames
    /// (pings, settings) read while it is idle start no head. The preface later on an HTTP/1
    /// connection is not HTTP/2.
    #[tokio::test(start_paused = true)]
    async fn http2_is_known_from_its_preface_and_its_frames_start_no_head() {
        let (mut conn, _client) = pair().await;
        tokio::time::advance(Duration::from_secs(1)).await;
        conn.on_bytes(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let since = Instant::now();
        assert!(conn.http2);
        assert_eq!(conn.phase, ReadPhase::Idle(since));
        tokio::time::advance(Duration::from_secs(1)).await;
        conn.on_bytes(b"\0\0\0\x04\0\0\0\0\0");
        assert_eq!(conn.phase, ReadPhase::Idle(since), "a frame while idle is not a head");

        let (mut conn, _client) = pair().await;
        conn.on_bytes(b"GET / HTTP/1.1\r\n\r\n");
        conn.phase = ReadPhase::Idle(Instant::now());
        conn.on_bytes(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert!(!conn.http2, "only the first bytes of a connection are its preface");
    }

    /// Bytes read through the connection move its phase; an idle connection then times out
    /// after the keep-alive timeout, a fresh one after the header read timeout, each with its
    /// own reason.
    #[tokio::test(start_paused = true)]
    async fn reads_move_the_phase_and_each_wait_times_out_with_its_own_reason() {
        let (mut conn, _client) = pair().await;
        let started = Instant::now();
        let err = conn.read(&mut [0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(err.to_string(), "the request head did not arrive in time");
        assert_eq!(started.elapsed(), HEAD);

        let (mut conn, mut client) = pair().await;
        client.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let since = Instant::now();
        assert_eq!(conn.phase, ReadPhase::Idle(since), "the bytes read were seen");
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.to_string(), "idle connection (keep-alive timeout)");
        assert_eq!(since.elapsed(), IDLE);
    }

    /// Each write path writes what it is given, all of it, to the socket.
    #[tokio::test]
    async fn writes_reach_the_client_whole() {
        let (mut conn, mut client) = pair().await;
        conn.write_all(b"plain ").await.unwrap();
        let parts = [io::IoSlice::new(b"vectored "), io::IoSlice::new(b"too")];
        let n = conn.write_vectored(&parts).await.unwrap();
        assert_eq!(n, 12, "the kernel takes small vectored writes whole");
        assert!(
            conn.is_write_vectored(),
            "hyper hands a head and its body to one writev, not copied into one buffer"
        );
        conn.flush().await.unwrap();
        conn.shutdown().await.unwrap();
        let mut got = String::new();
        tokio::time::timeout(Duration::from_secs(10), client.read_to_string(&mut got))
            .await
            .expect("the shutdown ended the client's read")
            .unwrap();
        assert_eq!(got, "plain vectored too");
    }

    /// A connection the watchdog killed fails every read and write with its reason.
    #[tokio::test]
    async fn a_killed_connection_fails_every_read_and_write() {
        let (mut conn, mut client) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        conn.requests.kill();
        let reason = killed().to_string();
        assert_eq!(conn.read(&mut [0u8; 8]).await.unwrap_err().to_string(), reason);
        assert_eq!(conn.write(b"x").await.unwrap_err().to_string(), reason);
        let parts = [io::IoSlice::new(b"x")];
        assert_eq!(conn.write_vectored(&parts).await.unwrap_err().to_string(), reason);
        assert_eq!(conn.flush().await.unwrap_err().to_string(), reason);
        assert_eq!(conn.shutdown().await.unwrap_err().to_string(), reason);
    }
}
