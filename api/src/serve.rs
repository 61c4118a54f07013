//! The accept loop: HTTP/1.1 connections bounded in number, in header-read time and in idle
//! time, drained gracefully on shutdown.
//!
//! `axum::serve` has none of these bounds: a header trickled at one byte per second for 45 s
//! was still served, and every connection costs a task and buffers for as long as the client
//! likes. HTTP/1.1 only: put a proxy in front for h2 (it also terminates TLS).
//!
//! Why not hyper's own `http1::Builder::header_read_timeout`: in hyper 1.12 its timer starts
//! as soon as the connection waits for the next head, so it also closes idle keep-alive
//! connections after the header timeout (hyper PRs #3185, #3828). Here the two are kept apart,
//! and each means what it says:
//! - header-read timeout: from the first byte of a request head to the complete head;
//! - idle timeout: no request in flight and no byte received for this long.
//!
//! Two thin wrappers report what happens (`Watched` the bytes that arrive, `Tracked` the
//! requests in flight) and one per-connection watchdog, polled in the connection's own task
//! right after hyper, turns that into deadlines and sleeps until the earliest one (no periodic
//! tick). A request in flight has no deadline here; the request timeout of `observe` bounds it.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// The bounds of the edge, from [`Config`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: u32,
    /// On shutdown, how long in-flight requests may take to finish.
    pub shutdown_timeout: Duration,
}

impl Limits {
    pub fn new(config: &Config) -> Self {
        Self {
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
            // The setting's range (at most 10^6) fits.
            max_connections: u32::try_from(config.max_connections).unwrap_or(u32::MAX),
            shutdown_timeout: config.shutdown_timeout(),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting, lets in-flight
/// requests finish for up to `shutdown_timeout`, and returns.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, shutdown: impl Future<Output = ()>) {
    let permits = Arc::new(Semaphore::new(limits.max_connections as usize));
    let draining = CancellationToken::new();
    let mut shutdown = pin!(shutdown);
    loop {
        // The permit before `accept` (as mini-redis does): past the cap, connections wait in
        // the kernel's backlog, costing nothing here, and are accepted as others close.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
        };
        // Responses are small and written whole: never let Nagle hold one back.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        tokio::spawn(connection(tcp, peer, app.clone(), limits, draining.clone(), permit));
    }
    drop(listener);
    draining.cancel();
    // Every open connection holds one permit: all of them back means all connections closed.
    let all_closed = permits.acquire_many(limits.max_connections);
    if tokio::time::timeout(limits.shutdown_timeout, all_closed).await.is_err() {
        tracing::warn!(
            drain_limit = ?limits.shutdown_timeout,
            "requests still in flight at the drain deadline; exiting anyway"
        );
    }
}

/// As hyper 0.14's server did: a failed handshake is the client's business; anything else
/// (out of file descriptors, say) is logged and retried a second later rather than spun on.
async fn accept_failed(error: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(error.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::error!(%error, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// One connection, from accept to close; the permit is returned when it ends.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    draining: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(Watched { tcp, activity: activity.clone() });
    let service = Tracked { app, peer, activity: activity.clone() };
    let conn = http1::Builder::new()
        // Off: see the module doc. The watchdog keeps both timers.
        .header_read_timeout(None)
        .serve_connection(io, service);
    if let Err(error) = watchdog(pin!(conn), &activity, limits, draining).await {
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// Drives `conn` and ends it at its header-read or idle deadline, or gracefully (in-flight
/// requests finish) once the server drains.
///
/// At a deadline no request is in flight, so nothing is lost by closing; the watchdog makes
/// [`Watched`] report end of input, and hyper closes as if the client had: an idle connection
/// cleanly, a half-received head as an incomplete message, without answering it. (hyper's
/// `graceful_shutdown` would not do for this: it leaves a connection that is still reading
/// its first head open.) A connection that has not ended one header timeout later (a
/// response stuck behind a client that does not read) is dropped.
async fn watchdog(
    mut conn: Pin<&mut http1::Connection<TokioIo<Watched>, Tracked>>,
    activity: &Activity,
    limits: Limits,
    draining: CancellationToken,
) -> hyper::Result<()> {
    let mut drain = pin!(draining.cancelled());
    let mut drain_seen = false;
    let mut timer = pin!(tokio::time::sleep(limits.idle_timeout));
    let mut closing = false;
    let mut last_active = Instant::now();
    let mut head_since: Option<Instant> = None;
    poll_fn(|cx| {
        loop {
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                return Poll::Ready(result);
            }
            if !drain_seen && drain.as_mut().poll(cx).is_ready() {
                drain_seen = true;
                conn.as_mut().graceful_shutdown();
                continue; // hyper acts on it when polled
            }
            if closing {
                // The grace after a deadline is over: drop the connection.
                return if timer.as_mut().poll(cx).is_ready() { Poll::Ready(Ok(())) } else { Poll::Pending };
            }
            // Everything the wrappers saw happened during the poll just made: stamp it now.
            let now = Instant::now();
            if activity.active.swap(false, Relaxed) {
                last_active = now;
            }
            head_since = if activity.head_started.load(Relaxed) { head_since.or(Some(now)) } else { None };
            let deadline = (activity.in_flight.load(Relaxed) == 0).then(|| {
                let idle = last_active + limits.idle_timeout;
                head_since.map_or(idle, |head| idle.min(head + limits.header_read_timeout))
            });
            match deadline {
                Some(deadline) if deadline <= now => {
                    closing = true;
                    activity.expired.store(true, Relaxed);
                    timer.as_mut().reset(now + limits.header_read_timeout);
                    continue; // hyper reads the end of input when polled
                }
                // Only an earlier deadline re-arms the timer at once (a head started, once
                // per request at most); a later one waits until the timer fires. At a steady
                // request rate the timer is re-armed about once per header timeout.
                Some(deadline) if deadline < timer.deadline() => timer.as_mut().reset(deadline),
                _ => {}
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Fired before any deadline: bytes came in since, or a request is in flight.
            timer.as_mut().reset(deadline.unwrap_or(now + limits.idle_timeout));
        }
    })
    .await
}

/// What the wrappers of one connection saw, for its watchdog. All three run in the
/// connection's task, one after the other, so relaxed atomics suffice (they are atomics only
/// because the task may move between threads).
#[derive(Debug, Default)]
struct Activity {
    /// Bytes arrived, or a response was produced, since the watchdog last looked.
    active: AtomicBool,
    /// Bytes arrived while no request was in flight, and no complete head since: a head is
    /// being received.
    head_started: AtomicBool,
    /// Requests whose head is complete and whose response is not yet produced.
    in_flight: AtomicU32,
    /// The watchdog gave up on the client: reads report end of input.
    expired: AtomicBool,
}

/// The TCP stream, reporting arriving bytes to the watchdog.
#[derive(Debug)]
struct Watched {
    tcp: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.activity.expired.load(Relaxed) {
            return Poll::Ready(Ok(())); // end of input
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.active.store(true, Relaxed);
            if this.activity.in_flight.load(Relaxed) == 0 {
                this.activity.head_started.store(true, Relaxed);
            }
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// The router as hyper's service, counting requests in flight for the watchdog, and giving
/// each request its connection's peer address (`ConnectInfo<SocketAddr>`, as `axum::serve`
/// does: the client-address rate limit reads it).
#[derive(Debug, Clone)]
struct Tracked {
    app: Router,
    peer: SocketAddr,
    activity: Arc<Activity>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Tracked {
    type Response = Response;
    type Error = Infallible;
    type Future = InFlight<axum::routing::future::RouteFuture<Infallible>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        // hyper calls the service once the head is complete.
        self.activity.head_started.store(false, Relaxed);
        self.activity.in_flight.fetch_add(1, Relaxed);
        let mut request: Request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let inner = tower_service::Service::call(&mut self.app.clone(), request);
        InFlight { inner, activity: self.activity.clone() }
    }
}

pin_project_lite::pin_project! {
    /// A request's response future; dropping it (done, or cancelled with its connection)
    /// ends the request for the watchdog, which counts idle time from then.
    struct InFlight<F> {
        #[pin]
        inner: F,
        activity: Arc<Activity>,
    }

    impl<F> PinnedDrop for InFlight<F> {
        fn drop(this: Pin<&mut Self>) {
            let activity = &this.activity;
            activity.in_flight.fetch_sub(1, Relaxed);
            activity.active.store(true, Relaxed);
        }
    }
}

impl<F: Future> Future for InFlight<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().inner.poll(cx)
    }
}
