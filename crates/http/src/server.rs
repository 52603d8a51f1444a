//! The accept loop: connection limit, header, idle and send timeouts, header size, and
//! graceful shutdown. `axum::serve` has none of these knobs, and each of them is what
//! keeps a slow or hostile client from holding more than its own socket.

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::tls::Tls;

/// Limits of the listener, from `berth.http`.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Connections served at once; further ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// From the first byte of a request to the end of its head.
    pub header_timeout: Duration,
    /// How long a connection with no request in flight stays open.
    pub idle_timeout: Duration,
    /// How long a response may wait for the client to take any bytes.
    pub send_timeout: Duration,
    /// The largest request head (request line and headers) accepted.
    pub max_header_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 4096,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
        }
    }
}

/// The connection a request came on, in every request's extensions: where it came from
/// (rate limits, the trusted-proxy check) and whether it is encrypted (the scheme of
/// URLs handed back).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionInfo {
    pub peer: std::net::SocketAddr,
    pub tls: bool,
}

type Builder = auto::Builder<TokioExecutor>;

/// Serves `router` on `listener` (over TLS when `tls` is given) until `shutdown`
/// completes, then stops accepting and waits for the requests in flight.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    tls: Option<Tls>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let limits = Arc::new(limits);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The header timeout is enforced by `Watched`, which can tell an idle connection
        // from one that is sending a head; hyper's own timer would count idle time too.
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder.http2().timer(TokioTimer::new()).max_header_list_size(limits.max_header_bytes as u32);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: not fatal.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let watched = Watched::new(stream, activity.clone(), limits.clone());
        let connection = Connection {
            builder: builder.clone(),
            graceful: graceful.watcher(),
            router: router.clone(),
            activity,
            info: ConnectionInfo { peer, tls: tls.is_some() },
            client: None,
        };
        let tls = tls.clone();
        let handshake_timeout = limits.header_timeout;
        tokio::spawn(async move {
            match tls {
                None => connection.run(watched).await,
                // The handshake runs in the connection's own task, so a slow one holds up
                // nobody else; it gets as long as a request head.
                Some(tls) => match tokio::time::timeout(handshake_timeout, tls.acceptor.accept(watched)).await {
                    Ok(Ok(stream)) => {
                        let subject = crate::tls::client_subject(stream.get_ref().1).map(ClientCertificate);
                        Connection { client: subject, ..connection }.run(stream).await
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// One accepted connection, ready to be served once its transport is set up.
struct Connection {
    builder: Arc<Builder>,
    graceful: Watcher,
    router: Router,
    activity: Arc<Activity>,
    info: ConnectionInfo,
    client: Option<ClientCertificate>,
}

/// In the extensions of every request of a connection whose client presented a
/// certificate that a configured CA signed: its subject's common name.
#[derive(Debug, Clone)]
pub struct ClientCertificate(pub Arc<str>);

impl Connection {
    async fn run<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection { builder, graceful, router, activity, info, client } = self;
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let in_flight = InFlight::begin(activity.clone());
            let router = router.clone();
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(info);
            if let Some(client) = &client {
                req.extensions_mut().insert(client.clone());
            }
            async move {
                let resp = router.oneshot(req).await.unwrap_or_else(|e| match e {});
                Ok::<Response, std::convert::Infallible>(
                    resp.map(|b| Body::new(Guarded { inner: b, _in_flight: in_flight })),
                )
            }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        let conn = graceful.watch(conn.into_owned());
        // Errors here are the client's (reset, timeout, malformed head): hyper has
        // already answered what could be answered.
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// Whether a connection is idle, receiving a head, or serving requests.
struct Activity {
    in_flight: AtomicUsize,
    /// Set when a connection with nothing in flight receives bytes (a head has begun),
    /// or when it becomes idle; read by the timers.
    since: Mutex<Phase>,
    /// The task last waiting to read. When the last request ends it is woken, so that it
    /// arms the idle timer: hyper would otherwise not read again until bytes arrive.
    reader: Mutex<Option<std::task::Waker>>,
}

#[derive(Clone, Copy)]
enum Phase {
    Idle(Instant),
    Head(Instant),
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            since: Mutex::new(Phase::Idle(Instant::now())),
            reader: Mutex::new(None),
        }
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.since.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn received_bytes(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let mut phase = self.phase();
            if let Phase::Idle(_) = *phase {
                *phase = Phase::Head(Instant::now());
            }
        }
    }

    /// When the connection times out if nothing changes; `None` while serving.
    fn deadline(&self, limits: &ServerLimits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(match *self.phase() {
            Phase::Idle(t) => t + limits.idle_timeout,
            Phase::Head(t) => t + limits.header_timeout,
        })
    }
}

/// One request in flight on a connection, from its head until its response is sent.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.phase() = Phase::Idle(Instant::now());
            if let Some(reader) = self.0.reader.lock().unwrap_or_else(|e| e.into_inner()).take() {
                reader.wake();
            }
        }
    }
}

/// A response body that keeps its request counted as in flight until it is dropped.
struct Guarded {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, with the header, idle and send timeouts enforced where hyper reads and
/// writes. A timed-out read or write fails with `TimedOut`, and hyper closes the
/// connection.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
    limits: Arc<ServerLimits>,
    read_timer: Pin<Box<Sleep>>,
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl<S> Watched<S> {
    fn new(inner: S, activity: Arc<Activity>, limits: Arc<ServerLimits>) -> Self {
        let first = activity.deadline(&limits).unwrap_or_else(Instant::now);
        Watched { inner, activity, limits, read_timer: Box::pin(tokio::time::sleep_until(first)), write_timer: None }
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_owned())
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.activity.received_bytes();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let Some(deadline) = this.activity.deadline(&this.limits) else {
                    *this.activity.reader.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
                    return Poll::Pending;
                };
                if this.read_timer.deadline() != deadline {
                    this.read_timer.as_mut().reset(deadline);
                }
                match this.read_timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(timed_out("client sent no complete request in time"))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => ready,
        }
    }
}

impl<S: AsyncWrite + Unpin> Watched<S> {
    /// Fails a write that has waited for the client longer than the send timeout.
    fn poll_send<T>(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => {
                let send_timeout = self.limits.send_timeout;
                let timer = self.write_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(send_timeout)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(timed_out("client took no response bytes in time"))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => {
                self.write_timer = None;
                ready
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.poll_send(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // Forwarded so that hyper queues response pieces instead of copying them.
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.poll_send(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.poll_send(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
