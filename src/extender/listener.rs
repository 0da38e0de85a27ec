//! The accept loop behind `vramfit serve`: a connection limit, a header-read timeout and an
//! idle timeout per connection, optional TLS, and a drain on shutdown that answers every
//! request a client had already sent.
//!
//! Drain: when shutdown starts the listener closes (new connections are refused), every
//! response from then on carries `Connection: close`, and each open connection is closed only
//! once it has read nothing for [`DRAIN_QUIET`]: a request already on its way (in the socket
//! buffer, or arriving on an idle keep-alive connection) is read and answered, not reset.
//! Whatever is still running when the grace period ends is dropped.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{header, HeaderValue};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

/// How long a connection must have read nothing before the drain closes it.
pub const DRAIN_QUIET: Duration = Duration::from_millis(250);

/// Limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Time a client has to send a complete request head (and a TLS handshake), counted
    /// from when the connection opens or its previous response was sent.
    pub header_read_timeout: Duration,
    /// A connection that reads and writes nothing for this long is closed.
    pub idle_timeout: Duration,
    /// How long shutdown waits for open connections.
    pub grace: Duration,
}

/// The shutdown signal shared by a server's listeners.
#[derive(Clone)]
pub struct Drain {
    started: watch::Receiver<bool>,
    draining: Arc<AtomicBool>,
}

impl Drain {
    /// A drain that starts when `signal` completes.
    pub fn on(signal: impl Future<Output = ()> + Send + 'static) -> Self {
        let (tx, rx) = watch::channel(false);
        let draining = Arc::new(AtomicBool::new(false));
        let flag = draining.clone();
        tokio::spawn(async move {
            signal.await;
            flag.store(true, Ordering::Release);
            let _ = tx.send(true);
            // Keep the sender alive so receivers see `true`, not a closed channel.
            std::future::pending::<()>().await;
        });
        Drain {
            started: rx,
            draining,
        }
    }

    /// Completes once shutdown has started.
    pub async fn started(&self) {
        let mut rx = self.started.clone();
        let _ = rx.wait_for(|started| *started).await;
    }

    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Adds `Connection: close` to every response once draining, so clients stop reusing
    /// their connections.
    pub fn close_connections_when_draining(&self, router: Router) -> Router {
        let drain = self.clone();
        router.layer(axum::middleware::map_response(
            move |mut response: axum::response::Response| {
                let draining = drain.is_draining();
                async move {
                    if draining {
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    response
                }
            },
        ))
    }
}

/// TLS for a listener.
pub type Tls = axum_server::tls_rustls::RustlsAcceptor;

/// Serves `router` on `listener` until the drain starts, then drains for up to `limits.grace`.
pub async fn run(
    listener: TcpListener,
    router: Router,
    tls: Option<Tls>,
    limits: Limits,
    drain: Drain,
) {
    let router = drain.close_connections_when_draining(router);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    let mut refused_since_log: u64 = 0;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = drain.started() => break,
            accepted = listener.accept() => accepted,
            // Reap finished connections as we go.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, _peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of file descriptors and the like: wait a moment instead of spinning.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused_since_log += 1;
            if refused_since_log == 1 || refused_since_log.is_multiple_of(1000) {
                tracing::warn!(
                    limit = limits.max_connections,
                    refused = refused_since_log,
                    "connection limit reached; closing new connections"
                );
            }
            drop(stream);
            continue;
        };
        refused_since_log = 0;
        let router = router.clone();
        let tls = tls.clone();
        let drain = drain.clone();
        connections.spawn(async move {
            serve_connection(stream, router, tls, limits, drain).await;
            drop(permit);
        });
    }
    drop(listener);
    let deadline = Instant::now() + limits.grace;
    while !connections.is_empty() {
        match tokio::time::timeout_at(deadline, connections.join_next()).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(
                    open = connections.len(),
                    "grace period over; dropping open connections"
                );
                connections.abort_all();
                break;
            }
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    router: Router,
    tls: Option<Tls>,
    limits: Limits,
    drain: Drain,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = Timed::new(stream, limits.idle_timeout, activity.clone());
    let service = TowerToHyperService::new(router);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    match tls {
        None => drive(builder, TokioIo::new(io), service, &activity, &drain).await,
        Some(tls) => {
            use axum_server::accept::Accept;
            let handshake = tls
                .handshake_timeout(limits.header_read_timeout)
                .accept(io, ());
            let Ok((stream, ())) = handshake.await else {
                return;
            };
            drive(builder, TokioIo::new(stream), service, &activity, &drain).await
        }
    }
}

async fn drive<I, S>(
    builder: Builder<TokioExecutor>,
    io: TokioIo<I>,
    service: S,
    activity: &Activity,
    drain: &Drain,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = drain.started() => {}
    }
    // Draining: close only once nothing has been read for a moment, so a request already on
    // its way is answered (with `Connection: close`) instead of reset.
    loop {
        let quiet = activity.since_last_read();
        if quiet >= DRAIN_QUIET {
            connection.as_mut().graceful_shutdown();
            break;
        }
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = tokio::time::sleep(DRAIN_QUIET - quiet) => {}
        }
    }
    let _ = connection.await;
}

/// When a connection last read something.
struct Activity {
    origin: Instant,
    last_read_millis: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            origin: Instant::now(),
            last_read_millis: AtomicU64::new(0),
        }
    }

    fn read_now(&self) {
        let millis = self.origin.elapsed().as_millis() as u64;
        self.last_read_millis.store(millis, Ordering::Relaxed);
    }

    fn since_last_read(&self) -> Duration {
        let last = Duration::from_millis(self.last_read_millis.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }
}

/// A stream that fails with `TimedOut` once it has read and written nothing for `idle`.
struct Timed<T> {
    inner: T,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    activity: Arc<Activity>,
}

impl<T> Timed<T> {
    fn new(inner: T, idle: Duration, activity: Arc<Activity>) -> Self {
        Timed {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            activity,
        }
    }

    fn touch(&mut self) {
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    fn check_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle too long",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    /// A write's outcome: bytes written count as activity; a pending write runs the idle clock.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.touch();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.check_idle(cx).map(Err),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Timed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.activity.read_now();
                    self.touch();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.check_idle(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Timed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.after_write(cx, written)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.after_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
