//! The daemon's local endpoints, which show its [`Status`]: the metrics endpoint (axum over
//! TCP) and the control socket `shoal-node status` reads (a unix socket in the data directory;
//! each connection gets the status as one JSON document).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

use super::Status;
use crate::daemon::metrics::{Counters, Gauges, render};

/// Connections the metrics endpoint serves at once.
const MAX_CLIENTS: usize = 16;
/// How long a metrics connection may stay open.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

fn gauges(s: &Status) -> Gauges {
    Gauges {
        peers: s.peers.len() as u64,
        banned_peers: s.banned_peers,
        current_release: s.committed,
        target_release: s.target,
        store_bytes: s.store_bytes,
        store_quota_bytes: s.store_quota_bytes,
    }
}

/// Binds the metrics endpoint (axum: `GET /metrics`, anything else 404; one request per
/// connection); returns its address and the future that serves it.
pub async fn serve_metrics(
    addr: SocketAddr,
    counters: Arc<Counters>,
    status: watch::Receiver<Status>,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()> + Send + 'static)> {
    use axum::http::{StatusCode, header};
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let scrape = move || async move {
        let body = render(&counters, &gauges(&status.borrow()));
        (
            [
                (header::CONTENT_TYPE, crate::daemon::metrics::CONTENT_TYPE),
                (header::CONNECTION, "close"),
            ],
            body,
        )
    };
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                [(header::CONNECTION, "close")],
                "not found; try /metrics\n",
            )
        });
    let listener = Slots {
        listener,
        slots: Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS)),
    };
    Ok((bound, async move {
        let _ = axum::serve(listener, app).await;
    }))
}

/// The metrics endpoint's listener: at most [`MAX_CLIENTS`] connections at once (more are
/// closed on accept), each cut after [`CLIENT_TIMEOUT`], so slow clients cannot pile up.
struct Slots {
    listener: tokio::net::TcpListener,
    slots: Arc<tokio::sync::Semaphore>,
}

impl axum::serve::Listener for Slots {
    type Io = Slot;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Slot, SocketAddr) {
        loop {
            // The TCP listener's accept retries on errors.
            let (stream, addr) = axum::serve::Listener::accept(&mut self.listener).await;
            if let Ok(permit) = self.slots.clone().try_acquire_owned() {
                let deadline = Box::pin(tokio::time::sleep(CLIENT_TIMEOUT));
                return (
                    Slot {
                        stream,
                        deadline,
                        _permit: permit,
                    },
                    addr,
                );
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// One metrics connection: its slot and its deadline.
struct Slot {
    stream: tokio::net::TcpStream,
    deadline: Pin<Box<tokio::time::Sleep>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Slot {
    /// Whether the deadline passed (else the timer wakes the connection when it does).
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<std::io::Error> {
        self.deadline
            .as_mut()
            .poll(cx)
            .is_ready()
            .then(|| std::io::ErrorKind::TimedOut.into())
    }
}

impl AsyncRead for Slot {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Slot {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Binds the control socket at `path` (replacing a stale one); returns the serving future.
pub fn serve_control(
    path: &Path,
    status: watch::Receiver<Status>,
) -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    if path.exists() {
        // A live daemon on the same data directory would answer; a stale socket would not.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another daemon is running on this data directory",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    Ok(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let body = serde_json::to_vec(&*status.borrow()).unwrap_or_default();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), sock.write_all(&body)).await;
                let _ = sock.shutdown().await;
            });
        }
    })
}

/// Reads the status of the daemon whose control socket is `path` (what `shoal-node status`
/// does).
pub async fn read(path: &Path) -> std::io::Result<Status> {
    let mut sock = tokio::net::UnixStream::connect(path).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        (&mut sock).take(16 * 1024 * 1024).read_to_end(&mut buf),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "daemon did not answer"))??;
    serde_json::from_slice(&buf).map_err(std::io::Error::other)
}
