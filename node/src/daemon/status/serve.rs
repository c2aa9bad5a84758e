//! The daemon's local endpoints, which show its [`Status`]: the Prometheus text endpoint (HTTP
//! on TCP) and the control socket `shoal-node status` reads (a unix socket in the data
//! directory; each connection gets the status as one JSON document).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::Status;
use crate::daemon::metrics::{Counters, Gauges, render};

/// Largest HTTP request head read.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Connections served at once by each endpoint.
const MAX_CLIENTS: usize = 16;

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

/// Binds the metrics endpoint; returns its address and the future that serves it.
pub async fn serve_metrics(
    addr: SocketAddr,
    counters: Arc<Counters>,
    status: watch::Receiver<Status>,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()> + Send + 'static)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    let fut = async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let (counters, status) = (counters.clone(), status.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let mut buf = vec![0u8; MAX_REQUEST_BYTES];
                let mut len = 0;
                let read = tokio::time::timeout(Duration::from_secs(5), async {
                    while len < buf.len() {
                        let n = sock.read(&mut buf[len..]).await?;
                        if n == 0 {
                            break;
                        }
                        len += n;
                        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    std::io::Result::Ok(())
                })
                .await;
                if !matches!(read, Ok(Ok(()))) {
                    return;
                }
                let head = String::from_utf8_lossy(&buf[..len]);
                let path = head.split_whitespace().nth(1).unwrap_or("/");
                let (code, body) = if path == "/metrics" {
                    let s = status.borrow().clone();
                    ("200 OK", render(&counters, &gauges(&s)))
                } else {
                    ("404 Not Found", "not found; try /metrics\n".to_string())
                };
                let resp = format!(
                    "HTTP/1.1 {code}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    };
    Ok((bound, fut))
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
