//! Accepting connections with limits: a bound on open connections per port, a deadline for
//! a request's headers, an idle timeout, and a drain on shutdown that ends at a deadline
//! whatever the clients do.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use infera_auth::Peer;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, info, warn};

/// What every port applies to its connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Open connections per port; more are answered 503 (HTTP) or closed (gRPC).
    pub max_connections: usize,
    /// Time a client has to send a request's headers (HTTP/1).
    pub header_timeout: Duration,
    /// A connection with no bytes moving either way for this long is closed.
    pub idle_timeout: Duration,
    /// Concurrent HTTP/2 streams per connection (gRPC calls, HTTP/2 requests).
    pub max_streams: u32,
}

/// A connection that fails once no byte has moved either way for `idle`; it holds its
/// port's connection permit until it is dropped.
pub struct IdleIo<T> {
    inner: T,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl<T> IdleIo<T> {
    pub fn new(inner: T, idle: Duration, permit: OwnedSemaphorePermit) -> IdleIo<T> {
        IdleIo {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            _permit: permit,
        }
    }

    fn moved(&mut self) {
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }

    /// After a write: progress resets the timer; a client that stops reading its
    /// responses (the write stays pending) is idle too.
    fn written(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.moved();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle for too long")
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        self.written(cx, r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.written(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A connection as the servers use it: plain or TLS, with who is on the other end.
pub struct Conn {
    io: ConnIo,
    peer: Peer,
}

enum ConnIo {
    Plain(IdleIo<TcpStream>),
    Tls(Box<tokio_rustls::server::TlsStream<IdleIo<TcpStream>>>),
}

macro_rules! delegate {
    ($self:ident, $method:ident($($arg:expr),*)) => {
        match &mut $self.get_mut().io {
            ConnIo::Plain(io) => Pin::new(io).$method($($arg),*),
            ConnIo::Tls(io) => Pin::new(io.as_mut()).$method($($arg),*),
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, poll_write(cx, data))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, poll_shutdown(cx))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match &self.io {
            ConnIo::Plain(io) => io.is_write_vectored(),
            ConnIo::Tls(io) => io.is_write_vectored(),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Peer;
    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

/// Turns an accepted TCP connection into a [`Conn`]: the idle timeout, and with `tls` the
/// handshake (within the header timeout) and the client certificate's names.
async fn open(
    stream: TcpStream,
    permit: OwnedSemaphorePermit,
    limits: ConnLimits,
    tls: Option<TlsAcceptor>,
) -> io::Result<Conn> {
    let addr = stream.peer_addr().ok();
    let io = IdleIo::new(stream, limits.idle_timeout, permit);
    let Some(acceptor) = tls else {
        return Ok(Conn {
            io: ConnIo::Plain(io),
            peer: Peer {
                addr,
                cert_names: Arc::from([]),
            },
        });
    };
    let tls = tokio::time::timeout(limits.header_timeout, acceptor.accept(io))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake too slow"))??;
    let cert_names = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| super::tls::client_names(c))
        .unwrap_or_default();
    Ok(Conn {
        io: ConnIo::Tls(Box::new(tls)),
        peer: Peer {
            addr,
            cert_names: Arc::from(cert_names),
        },
    })
}

/// Accepts the next connection that gets a permit. A failed accept (e.g. out of file
/// descriptors) is logged and retried after a pause instead of ending the server.
async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    what: &str,
    busy: Option<&'static [u8]>,
) -> (TcpStream, OwnedSemaphorePermit) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "{what}: cannot accept a connection; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match permits.clone().try_acquire_owned() {
            Ok(p) => return (stream, p),
            Err(_) => {
                debug!("{what}: connection limit reached; refusing a connection");
                if let Some(answer) = busy {
                    tokio::spawn(async move {
                        let mut stream = stream;
                        let _ =
                            tokio::time::timeout(Duration::from_secs(1), stream.write_all(answer))
                                .await;
                    });
                }
            }
        }
    }
}

const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 75\r\n\r\n{\"error\":\"the server has too many open connections; retry in a moment.\"}\r\n";

/// Serves an axum app until `stop` fires, then drains: idle connections close, requests in
/// progress finish, until `deadline`; then whatever is left is dropped.
pub async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnLimits,
    tls: Option<TlsAcceptor>,
    mut stop: broadcast::Receiver<()>,
    deadline: Duration,
    what: &'static str,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Some(limits.header_timeout))
        .max_buf_size(64 << 10);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .max_header_list_size(64 << 10)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    // Over TLS the 503 for too many connections could not be read: those are just closed.
    let busy = tls.is_none().then_some(BUSY);
    loop {
        let (stream, permit) = tokio::select! {
            c = accept(&listener, &permits, what, busy) => c,
            _ = stop.recv() => break,
        };
        let (app, builder, tls, watcher) = (
            app.clone(),
            builder.clone(),
            tls.clone(),
            graceful.watcher(),
        );
        // The TLS handshake happens here, off the accept loop, so a slow client holds
        // only its own connection.
        tokio::spawn(async move {
            let conn = match open(stream, permit, limits, tls).await {
                Ok(c) => c,
                Err(e) => {
                    debug!(error = %e, "{what}: connection setup failed");
                    return;
                }
            };
            // Handlers (and the audit log) see who connected.
            let peer = conn.peer.clone();
            let svc = TowerToHyperService::new(app.map_request(
                move |mut r: axum::http::Request<hyper::body::Incoming>| {
                    r.extensions_mut().insert(peer.clone());
                    r
                },
            ));
            let served = builder
                .serve_connection_with_upgrades(TokioIo::new(conn), svc)
                .into_owned();
            if let Err(e) = watcher.watch(served).await {
                debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let open = graceful.count();
    if open > 0 {
        info!(
            connections = open,
            "{what}: letting open connections finish"
        );
    }
    if tokio::time::timeout(deadline, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            "{what}: connections still open at the exit deadline ({}s, --exit-timeout-secs); closing them",
            deadline.as_secs()
        );
    }
}

/// Limited connections for tonic: at most `max_connections` open, each with the idle
/// timeout and (with `tls`) its handshake done off the accept loop.
pub fn grpc_incoming(
    listener: TcpListener,
    limits: ConnLimits,
    tls: Option<TlsAcceptor>,
) -> impl futures::Stream<Item = io::Result<Conn>> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Conn>>(64);
    tokio::spawn(async move {
        loop {
            let (stream, permit) = tokio::select! {
                c = accept(&listener, &permits, "gRPC", None) => c,
                () = tx.closed() => return,
            };
            let (tx, tls) = (tx.clone(), tls.clone());
            tokio::spawn(async move {
                match open(stream, permit, limits, tls).await {
                    Ok(c) => {
                        let _ = tx.send(Ok(c)).await;
                    }
                    Err(e) => debug!(error = %e, "gRPC: connection setup failed"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
