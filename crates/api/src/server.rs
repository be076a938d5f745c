//! [`serve`]: the HTTP server loop. Connections are accepted and served here, not by
//! `axum::serve`, because regrelay bounds what a client can hold.
//!
//! Design constraints:
//! - A client that sends its request head slowly is cut off after `header_read_timeout` (hyper's
//!   own timer; without a timer hyper has no such limit, and 50 connections trickling headers were
//!   held open for as long as their clients liked).
//! - A keep-alive connection with no request in flight and no byte moving for `idle_timeout` is
//!   closed gracefully. hyper's header timer also runs while a connection waits for its next
//!   request, so the idle limit is effectively `min(idle_timeout, header_read_timeout)`; the
//!   configuration refuses an idle timeout longer than the header timeout for that reason.
//! - At most `max_connections` connections are served at once. Over the cap the loop stops
//!   accepting (the kernel's backlog holds new clients) instead of answering with errors: it is
//!   backpressure, and no client is refused for something another client did.
//! - On shutdown the listener is closed, idle connections are closed, in-flight requests may finish
//!   for `drain`; then [`serve`] returns.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

/// How the server treats connections and requests.
#[derive(Debug, Clone, Copy)]
pub struct ServerSettings {
    /// Longest a request may take once its head is read; then it is answered `408`.
    pub request_timeout: Duration,
    /// Longest a client may take to send a request head (`http_header_read_timeout`).
    pub header_read_timeout: Duration,
    /// A connection idle this long between requests is closed (`http_idle_timeout`).
    pub idle_timeout: Duration,
    /// Connections served at once (`http_max_connections`); over it, accepting pauses.
    pub max_connections: usize,
    /// After shutdown, how long in-flight requests may finish.
    pub drain: Duration,
}

impl ServerSettings {
    /// Settings for tests and callers without configuration: the configuration's defaults.
    pub fn with_defaults(drain: Duration) -> Self {
        Self {
            request_timeout: crate::state::DEFAULT_REQUEST_TIMEOUT,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(5),
            max_connections: 1024,
            drain,
        }
    }
}

/// Serves [`crate::app`] on `listener` until `shutdown` resolves, then lets in-flight requests
/// finish for up to `settings.drain` before returning.
pub async fn serve(
    listener: TcpListener,
    state: crate::AppState,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = crate::router::app(state, settings.request_timeout);
    let permits = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    // Every connection task holds a receiver: `closed()` on the sender says they are all done.
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed.
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    handle_accept_error(error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(message = "Cannot set TCP_NODELAY.", error = %error);
        }
        tokio::spawn(serve_connection(
            stream,
            app.clone(),
            settings,
            stop_rx.clone(),
            permit,
        ));
    }
    drop(listener);
    drop(stop_rx);
    let _ = stop_tx.send(true);
    if tokio::time::timeout(settings.drain, stop_tx.closed())
        .await
        .is_err()
    {
        tracing::warn!(message = "HTTP requests still running after the drain timeout; closing.", drain = ?settings.drain);
    }
    Ok(())
}

/// A refused or reset connection is the client's business; anything else (too many open files)
/// is logged and the loop waits a little, so it does not spin.
async fn handle_accept_error(error: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::warn!(message = "Cannot accept a connection.", error = %error);
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    settings: ServerSettings,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let requests = activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let in_flight = InFlight::start(requests.clone());
        let app = app.clone();
        async move {
            let response = app.oneshot(request.map(axum::body::Body::new)).await;
            drop(in_flight);
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(message = "HTTP connection ended with an error.", error = %error);
                }
                break;
            }
            _ = stop.wait_for(|stopped| *stopped), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            () = activity.idle_for(settings.idle_timeout), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// What a connection is doing, for the idle timeout.
struct Activity {
    /// The connection's start; `last` counts from it.
    start: Instant,
    /// Milliseconds from `start` to the last byte read or written.
    last: AtomicU64,
    /// Requests whose response is not produced yet: a slow handler is not an idle connection.
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(elapsed, Ordering::Relaxed);
    }

    /// Resolves once the connection has had no request in flight and no traffic for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let deadline =
                self.start + Duration::from_millis(self.last.load(Ordering::Relaxed)) + timeout;
            if self.in_flight.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(timeout).await;
            } else if Instant::now() >= deadline {
                return;
            } else {
                tokio::time::sleep_until(deadline.into()).await;
            }
        }
    }
}

/// Counts a request in flight while alive; its end counts as traffic.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The TCP stream, noting each read or write that moved bytes.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
