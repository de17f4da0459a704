//! The HTTP server's own accept loop: every connection served by hyper's HTTP/1 connection with
//! a header-read timeout, an idle keep-alive timeout and a cap on open connections, and drained
//! within a deadline at shutdown.
//!
//! | limit                 | what it bounds                                                        |
//! |-----------------------|-----------------------------------------------------------------------|
//! | header-read timeout   | a request head must arrive complete within it, counted from when the  |
//! |                       | connection opened or its previous response ended (hyper's own timer)  |
//! | keep-alive timeout    | a connection with no request in flight and no byte arriving is closed |
//! | connection cap        | connections open at once; beyond it, new ones wait in the kernel's    |
//! |                       | listen backlog (they cost no file handle here) until one closes       |
//!
//! A request is in flight from the moment its head is parsed until its response body has been
//! sent or dropped, so a long-lived streaming response (SSE, NDJSON) is never idle, whether it
//! sends keep-alives or not. HTTP/1.1 only, as `axum::serve` served it here before (axum's
//! `http2` feature was never enabled). hyper's own HTTP/1 connection is used rather than
//! hyper-util's version-sniffing `auto` builder: the sniff reads the first bytes before hyper's
//! header timer starts, so a client that sent nothing would sit there untimed. Upgrades are
//! served (a background process's WebSocket, `GET …/processes/{pid}/ws`): once a connection is
//! upgraded it leaves this loop, its cap slot and its timers; the WebSocket handler bounds it
//! (it ends with the process, its sandbox, or the server's shutdown).
//!
//! At shutdown the loop stops accepting, every connection is asked to finish its requests and
//! close ([`Connections::drain`]); one with no request in flight (idle, or still sending a head)
//! is dropped at once, and those still open at the deadline are dropped too.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How long the accept loop backs off after an accept error (a full file table, say) before it
/// tries again; not a readiness wait, the listener is ready, the process is not.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// While draining, how often a connection looks whether it still owes an answer; one that owes
/// none at two looks in a row is dropped (a response that just ended had time to be flushed).
const DRAIN_IDLE_GRACE: Duration = Duration::from_millis(250);

/// How often a connection looks whether its writes are stalled.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// The limits of the server's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A request head must arrive complete within this long of the connection opening or of its
    /// previous response ending.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight that receives nothing for this long is closed.
    pub keep_alive_timeout: Duration,
    /// Connections open at once, at most.
    pub max_connections: usize,
    /// A connection whose writes take no byte for this long is cut: a client that sends
    /// requests but never reads the answers would otherwise hold its slot for ever.
    pub write_stall_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
            max_connections: 1024,
            write_stall_timeout: Duration::from_secs(60),
        }
    }
}

/// The accept loop's counters. The listener hands them to every request (as an extension), so
/// `GET /metrics` shows them beside the engine's.
#[derive(Debug, Clone, Default)]
pub struct ConnectionMetrics {
    open: Gauge,
    accepted: Counter,
    header_timeouts: Counter,
}

impl ConnectionMetrics {
    /// The counters in the OpenMetrics text format, `# EOF` line included.
    pub fn render(&self) -> String {
        let mut registry = Registry::with_prefix("kernelbox_http");
        registry.register("connections", "Open HTTP connections", self.open.clone());
        registry.register(
            "connections_accepted",
            "HTTP connections accepted",
            self.accepted.clone(),
        );
        registry.register(
            "header_timeouts",
            "HTTP connections closed because a request head did not arrive in time",
            self.header_timeouts.clone(),
        );
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
            return "# EOF\n".to_string();
        }
        text
    }
}

/// An open connection, counted until it ends.
struct Open(ConnectionMetrics);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.dec();
    }
}

/// The accept loop, before it runs.
pub struct Listener {
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    metrics: ConnectionMetrics,
}

/// The connections the accept loop started, once it stopped accepting.
pub struct Connections {
    tasks: TaskTracker,
    /// Asks every connection to finish its requests and close.
    drain: CancellationToken,
    /// Drops every connection still open.
    force: CancellationToken,
}

/// How draining ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Connections still open at the deadline, dropped with their requests.
    pub dropped: usize,
}

impl Listener {
    pub fn new(listener: TcpListener, router: Router, limits: ConnectionLimits) -> Self {
        Self {
            listener,
            router,
            limits,
            metrics: ConnectionMetrics::default(),
        }
    }

    /// Accepts and serves connections until `stop` is cancelled. Returns the connections still
    /// open, to be drained.
    pub async fn run(self, stop: CancellationToken) -> Connections {
        let connections = Connections {
            tasks: TaskTracker::new(),
            drain: CancellationToken::new(),
            force: CancellationToken::new(),
        };
        let slots = Arc::new(Semaphore::new(self.limits.max_connections.max(1)));
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .keep_alive(true);
        let http = Arc::new(http);
        loop {
            // A slot first: over the cap, connections wait in the kernel's backlog, not here.
            let permit = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed; retrying shortly");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                    }
                }
            };
            // Without TCP_NODELAY small responses wait for delayed ACKs (45 ms instead of 0.8 ms).
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "could not set TCP_NODELAY");
            }
            tracing::trace!(%peer, "connection accepted");
            self.metrics.accepted.inc();
            self.metrics.open.inc();
            connections.tasks.spawn(serve_connection(
                stream,
                self.router.clone(),
                http.clone(),
                self.limits.keep_alive_timeout,
                self.limits.write_stall_timeout,
                Shutdown {
                    drain: connections.drain.clone(),
                    force: connections.force.clone(),
                },
                (permit, Open(self.metrics.clone())),
            ));
        }
        tracing::info!(
            open = connections.tasks.len(),
            "stopped accepting connections"
        );
        connections
    }
}

impl Connections {
    /// Connections still open.
    pub fn open(&self) -> usize {
        self.tasks.len()
    }

    /// Asks every connection to finish the requests it has and close (idle ones close at once),
    /// and waits for them until `deadline`; those still open then are dropped.
    pub async fn drain(self, deadline: Instant) -> Drained {
        self.tasks.close();
        self.drain.cancel();
        if tokio::time::timeout_at(deadline, self.tasks.wait())
            .await
            .is_ok()
        {
            return Drained { dropped: 0 };
        }
        let dropped = self.tasks.len();
        tracing::warn!(
            dropped,
            "connections still open at the shutdown deadline; dropping them"
        );
        self.force.cancel();
        // Each connection task returns at its next poll once forced.
        self.tasks.wait().await;
        Drained { dropped }
    }
}

/// How the accept loop tells a connection to stop.
struct Shutdown {
    /// Finish the requests in flight, then close.
    drain: CancellationToken,
    /// Close now.
    force: CancellationToken,
}

/// Serves one connection until it closes, is drained, or is dropped. `slot` is its place under
/// the cap and in the open-connections gauge, given back when it ends.
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    http: Arc<hyper::server::conn::http1::Builder>,
    keep_alive: Duration,
    write_stall: Duration,
    Shutdown { drain, force }: Shutdown,
    slot: (OwnedSemaphorePermit, Open),
) {
    let metrics = slot.1.0.clone();
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let service = Tracked {
        router,
        activity: activity.clone(),
        metrics: metrics.clone(),
    };
    let connection = http.serve_connection(io, service).with_upgrades();
    tokio::pin!(connection);
    let mut closing = false;
    let mut draining = false;
    let mut quiet = false;
    loop {
        let idle_check = if draining {
            Instant::now() + DRAIN_IDLE_GRACE
        } else {
            activity.next_idle_check(keep_alive)
        };
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(error) = served {
                    // Header-read timeouts, resets and malformed requests end here.
                    if error.is_timeout() {
                        metrics.header_timeouts.inc();
                    }
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = force.cancelled() => return,
            () = tokio::time::sleep(write_stall.min(STALL_CHECK)) => {
                if activity.write_stalled_for(write_stall) {
                    tracing::debug!("cutting a connection whose client reads nothing");
                    return;
                }
            }
            () = drain.cancelled(), if !draining => {
                if !closing {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                draining = true;
            }
            () = tokio::time::sleep_until(idle_check), if !closing || draining => {
                if draining {
                    // A connection owed no answer (idle, or half-way through a request head)
                    // does not hold the shutdown up until its header timeout. Seen so twice in
                    // a row: a response that just ended had time to be flushed.
                    if activity.in_flight() > 0 {
                        quiet = false;
                    } else if quiet {
                        return;
                    } else {
                        quiet = true;
                    }
                } else if activity.idle_for(keep_alive) {
                    tracing::trace!("closing an idle keep-alive connection");
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// What a connection is doing: requests in flight, and when it last received bytes or finished
/// a response.
struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `started`.
    last: AtomicU64,
    /// Milliseconds since `started`, plus one, when a write last found the socket full with no
    /// byte taken since; 0 while writes go through.
    write_blocked: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last: AtomicU64::new(0),
            write_blocked: AtomicU64::new(0),
        }
    }

    /// Notes how a write went: taken bytes clear a stall, a full socket starts one.
    fn wrote(&self, polled: &Poll<io::Result<usize>>) {
        match polled {
            Poll::Pending => {
                let now = self.started.elapsed().as_millis() as u64 + 1;
                let _ = self.write_blocked.compare_exchange(
                    0,
                    now,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Poll::Ready(_) => self.write_blocked.store(0, Ordering::Relaxed),
        }
    }

    /// Whether a write has waited on a full socket for `limit` with no byte taken.
    fn write_stalled_for(&self, limit: Duration) -> bool {
        match self.write_blocked.load(Ordering::Relaxed) {
            0 => false,
            since => self.started.elapsed() >= Duration::from_millis(since - 1) + limit,
        }
    }

    fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last.fetch_max(now, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.started + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// When to look again whether the connection is idle.
    fn next_idle_check(&self, keep_alive: Duration) -> Instant {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            Instant::now() + keep_alive
        } else {
            self.last() + keep_alive
        }
    }

    /// Whether nothing is in flight and nothing arrived for `keep_alive`.
    fn idle_for(&self, keep_alive: Duration) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0 && self.last().elapsed() >= keep_alive
    }

    /// A request begins; it is in flight until the guard drops.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.touch();
        InFlight {
            activity: self.clone(),
        }
    }
}

/// A request in flight: dropped when its response body is done (or dropped).
struct InFlight {
    activity: Arc<Activity>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.touch();
        self.activity.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The TCP stream, noting when bytes arrive.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.activity.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router as a hyper service whose requests are counted in flight until their response body
/// is done.
#[derive(Clone)]
struct Tracked {
    router: Router,
    activity: Arc<Activity>,
    metrics: ConnectionMetrics,
}

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.begin();
        request.extensions_mut().insert(self.metrics.clone());
        let router = self.router.clone();
        Box::pin(async move {
            let response = match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok(response.map(|body| TrackedBody {
                body,
                _in_flight: in_flight,
            }))
        })
    }
}

/// A response body that keeps its request in flight until it is done or dropped.
struct TrackedBody {
    body: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for TrackedBody {
    type Data = <Body as hyper::body::Body>::Data;
    type Error = <Body as hyper::body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A router with a plain route, a slow stream (a chunk every 300 ms for 3 s), a silent
    /// stream (nothing for 2.5 s, then the end) and a route that never answers.
    fn router() -> Router {
        let chunks = |count: usize, every: Duration| {
            Body::from_stream(futures::stream::unfold(0, move |sent| async move {
                if sent == count {
                    return None;
                }
                tokio::time::sleep(every).await;
                Some((Ok::<_, Infallible>(format!("chunk {sent}\n")), sent + 1))
            }))
        };
        Router::new()
            .route("/plain", get(|| async { "plain" }))
            .route(
                "/slow",
                get(move || async move { chunks(10, Duration::from_millis(300)) }),
            )
            .route(
                "/silent",
                get(move || async move { chunks(1, Duration::from_millis(2500)) }),
            )
            .route("/never", get(std::future::pending::<&'static str>))
            .route("/big", get(|| async { vec![b'b'; 32 * 1024 * 1024] }))
    }

    async fn start(
        limits: ConnectionLimits,
    ) -> (u16, CancellationToken, tokio::task::JoinHandle<Connections>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let stop = CancellationToken::new();
        let running = tokio::spawn(Listener::new(listener, router(), limits).run(stop.clone()));
        (port, stop, running)
    }

    fn short() -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(1),
            keep_alive_timeout: Duration::from_millis(500),
            max_connections: 16,
            write_stall_timeout: Duration::from_secs(1),
        }
    }

    /// Sends a keep-alive GET and reads one response (to the end of a chunked body).
    async fn exchange(stream: &mut TcpStream, path: &str) -> String {
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("request");
        let mut response = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let read = stream.read(&mut buffer).await.expect("read");
            if read == 0 {
                break;
            }
            response.extend_from_slice(&buffer[..read]);
            let text = String::from_utf8_lossy(&response);
            if text.ends_with("0\r\n\r\n")
                || (text.contains("content-length") && text.ends_with("plain"))
            {
                break;
            }
        }
        String::from_utf8_lossy(&response).into_owned()
    }

    #[tokio::test]
    async fn a_client_that_reads_nothing_is_cut_at_the_write_stall_timeout() {
        let (port, stop, running) = start(short()).await;
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        // Ask for 32 MiB and read none of it: the socket fills and the response stalls.
        let (mut read_half, mut write_half) = stream.into_split();
        write_half
            .write_all(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("request");
        let asked = Instant::now();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        // By now the server has cut it (stall timeout 1 s, looked at every second): reading
        // finds the end after at most what the buffers held.
        let mut buffer = vec![0u8; 1024 * 1024];
        let mut total = 0usize;
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match read_half.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => total += read,
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the stalled connection was not cut");
        assert!(
            total < 32 * 1024 * 1024,
            "the whole body arrived ({total} bytes): nothing was cut"
        );
        assert!(asked.elapsed() < Duration::from_secs(12));
        stop.cancel();
        let _ = running.await;
    }

    #[tokio::test]
    async fn idle_keep_alive_connections_close_and_streams_are_never_cut() {
        let (port, stop, running) = start(short()).await;
        // Streams longer than both timeouts, chatty or silent, arrive whole.
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let slow = exchange(&mut stream, "/slow").await;
        assert!(slow.contains("chunk 9"), "{slow}");
        let silent = exchange(&mut stream, "/silent").await;
        assert!(silent.contains("chunk 0"), "{silent}");
        // Then the connection idles: it is closed after the keep-alive timeout.
        let idle_from = Instant::now();
        let mut byte = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("the idle connection is closed");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        let idled = idle_from.elapsed();
        assert!(
            idled >= Duration::from_millis(400) && idled < Duration::from_secs(2),
            "{idled:?}"
        );
        // A client that connects and sends nothing is cut at the header-read timeout.
        let mut silent_client = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let connected = Instant::now();
        let mut nothing = [0u8; 1];
        let cut = tokio::time::timeout(Duration::from_secs(5), silent_client.read(&mut nothing))
            .await
            .expect("a silent client is cut");
        assert!(matches!(cut, Ok(0) | Err(_)), "{cut:?}");
        assert!(
            connected.elapsed() < Duration::from_secs(2),
            "{:?}",
            connected.elapsed()
        );
        stop.cancel();
        let drained = running
            .await
            .expect("accept loop")
            .drain(Instant::now() + Duration::from_secs(1))
            .await;
        assert_eq!(drained, Drained { dropped: 0 });
    }

    #[tokio::test]
    async fn draining_finishes_answers_and_drops_what_is_left_at_the_deadline() {
        let (port, stop, running) = start(ConnectionLimits::default()).await;
        let mut stuck = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        stuck
            .write_all(b"GET /never HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("request");
        let mut idle = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        assert!(exchange(&mut idle, "/plain").await.contains("plain"));
        // The accept loop has both (the idle one answered; the stuck one was accepted first).
        stop.cancel();
        let connections = running.await.expect("accept loop");
        assert_eq!(connections.open(), 2);
        let started = Instant::now();
        let drained = connections
            .drain(Instant::now() + Duration::from_millis(300))
            .await;
        let took = started.elapsed();
        assert_eq!(drained, Drained { dropped: 1 });
        assert!(took < Duration::from_secs(1), "{took:?}");
        let mut byte = [0u8; 1];
        assert!(matches!(idle.read(&mut byte).await, Ok(0) | Err(_)));
        assert!(matches!(stuck.read(&mut byte).await, Ok(0) | Err(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_with_nothing_in_flight() {
        let activity = Arc::new(Activity::new());
        let keep_alive = Duration::from_secs(5);
        assert!(!activity.idle_for(keep_alive));
        let request = activity.begin();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(
            !activity.idle_for(keep_alive),
            "a long response is not idle"
        );
        assert!(activity.next_idle_check(keep_alive) > Instant::now());
        drop(request);
        assert!(
            !activity.idle_for(keep_alive),
            "idle time counts from the end"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(activity.idle_for(keep_alive));
        activity.touch();
        assert!(
            !activity.idle_for(keep_alive),
            "arriving bytes are activity"
        );
    }
}
