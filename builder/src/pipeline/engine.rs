//! The Docker Engine side of a build: build an image from a context tar, then export it and cut
//! its layers into the store.
//!
//! Builds use the Engine's classic builder through bollard, streaming each output line to the
//! log; a service with build secrets goes through the Engine's BuildKit instead
//! ([`build_with_secrets`]), the only builder that can mount a secret without committing it.
//! Export reads `GET /images/{name}/get` (the `docker save` stream) through a bounded channel
//! into a blocking thread that walks the tar with [`image_archive::read_archive`] (the archive reader,
//! fuzzed on its own): every layer tar is cut with [`shoal_protocol::chunking::chunk_reader`]
//! straight into the [`Store`] (nothing is written to disk twice), small entries (the image
//! config, `manifest.json`) are kept in memory, and `manifest.json` then gives the layer order.
//! Both the legacy (`<id>/layer.tar`) and the OCI (`blobs/sha256/<hex>`) layouts of `docker save`
//! are understood.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::sync::Arc;

use bollard::Docker;
use bytes::Bytes;
use futures_util::StreamExt;
use shoal_protocol::{Digest, ImageRef};

use crate::build_log::BuildLog;
use crate::pipeline::image_archive::{self, SaveError};
use crate::storage::blobs::Store;

/// Export stream pieces in flight between the Engine and the chunking thread.
const EXPORT_QUEUE: usize = 32;

/// Why a build or export did not produce an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The Engine cannot be reached.
    #[error("Docker Engine unreachable: {0}")]
    Unreachable(String),
    /// The project failed to build (a failing step, a bad Dockerfile, a missing base image).
    #[error("{0}")]
    BuildFailed(String),
    /// The export stream is not a well-formed `docker save` archive.
    #[error("image export: {0}")]
    Export(String),
    /// Storing chunks failed.
    #[error("store: {0}")]
    Store(#[from] io::Error),
}

/// Connects to the local Engine and agrees on an API version with it.
pub async fn connect() -> Result<Docker, EngineError> {
    let d = Docker::connect_with_defaults().map_err(|e| EngineError::Unreachable(e.to_string()))?;
    let d = d
        .negotiate_version()
        .await
        .map_err(|e| EngineError::Unreachable(e.to_string()))?;
    d.ping()
        .await
        .map_err(|e| EngineError::Unreachable(e.to_string()))?;
    Ok(d)
}

/// The Docker platform of a fleet architecture.
pub fn platform(arch: &str) -> Option<&'static str> {
    Some(match arch {
        "amd64" | "x86_64" => "linux/amd64",
        "aarch64" | "arm64" => "linux/arm64",
        "armv7hf" | "armv7" => "linux/arm/v7",
        "rpi" | "armv6" => "linux/arm/v6",
        "i386" | "386" => "linux/386",
        _ => return None,
    })
}

/// What a build needs.
#[derive(Debug)]
pub struct BuildRequest<'a> {
    /// The context tar.
    pub context: Vec<u8>,
    /// The Dockerfile's path inside the context.
    pub dockerfile: &'a str,
    /// The tag to give the image.
    pub tag: &'a str,
    /// Build arguments.
    pub build_args: &'a BTreeMap<String, String>,
    /// Target platform.
    pub platform: Option<&'a str>,
    /// Prefix of every log line (`[web] ` for compose services).
    pub log_prefix: &'a str,
}

/// Builds an image, streaming the Engine's output into `log`; returns the image id.
///
/// The id (not the tag, which a concurrent build of the same service may move) is what is
/// exported afterwards.
pub async fn build(
    docker: &Docker,
    req: BuildRequest<'_>,
    log: &BuildLog,
) -> Result<String, EngineError> {
    let args: HashMap<String, String> = req
        .build_args
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut opts = bollard::query_parameters::BuildImageOptionsBuilder::default()
        .dockerfile(req.dockerfile)
        .t(req.tag)
        .rm(true)
        .forcerm(true)
        .buildargs(&args);
    if let Some(p) = req.platform {
        opts = opts.platform(p);
    }
    let mut stream = docker.build_image(
        opts.build(),
        None,
        Some(bollard::body_full(Bytes::from(req.context))),
    );
    let mut partial = String::new();
    let mut image_id = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(bollard::models::BuildInfoAux::Default(bollard::models::ImageId {
                    id: Some(id),
                })) = info.aux
                {
                    image_id = Some(id);
                }
                if let Some(s) = info.stream.or(info.status) {
                    partial.push_str(&s);
                    while let Some(pos) = partial.find('\n') {
                        let line: String = partial.drain(..=pos).collect();
                        let line = line.trim_end();
                        if !line.is_empty() {
                            log.line(&format!("{}{line}", req.log_prefix));
                        }
                    }
                }
            }
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                flush(&mut partial, req.log_prefix, log);
                log.line(&format!("{}{}", req.log_prefix, error.trim_end()));
                return Err(EngineError::BuildFailed(error.trim_end().to_string()));
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code,
                message,
            }) if status_code < 500 => {
                flush(&mut partial, req.log_prefix, log);
                log.line(&format!("{}{}", req.log_prefix, message.trim_end()));
                return Err(EngineError::BuildFailed(message.trim_end().to_string()));
            }
            Err(e) => {
                flush(&mut partial, req.log_prefix, log);
                return Err(EngineError::Unreachable(e.to_string()));
            }
        }
    }
    flush(&mut partial, req.log_prefix, log);
    image_id.ok_or_else(|| EngineError::BuildFailed("the Engine reported no image id".into()))
}

fn flush(partial: &mut String, prefix: &str, log: &BuildLog) {
    let rest = partial.trim_end();
    if !rest.is_empty() {
        log.line(&format!("{prefix}{rest}"));
    }
    partial.clear();
}

/// An exported image.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The image as a manifest names it.
    pub image: ImageRef,
    /// Bytes of chunks that were not in the store before.
    pub new_bytes: u64,
}

/// Reads the bytes of an async stream from a blocking thread, through a bounded channel.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, String>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// Exports `image` from the Engine and stores its layers as chunks.
pub async fn export(
    docker: &Docker,
    image: &str,
    store: Arc<Store>,
) -> Result<Exported, EngineError> {
    let (tx, rx) = tokio::sync::mpsc::channel(EXPORT_QUEUE);
    let mut stream = docker.export_image(image);
    let feeder = async move {
        while let Some(item) = stream.next().await {
            let msg = item.map_err(|e| e.to_string());
            let stop = msg.is_err();
            if tx.send(msg).await.is_err() || stop {
                break;
            }
        }
    };
    let reader = ChannelReader {
        rx,
        current: Bytes::new(),
    };
    let worker = tokio::task::spawn_blocking(move || read_save_archive(reader, &store));
    let (_, result) = tokio::join!(feeder, worker);
    result.map_err(|e| EngineError::Export(format!("export worker: {e}")))?
}

/// Threads writing new chunks, so their fsyncs overlap hashing and each other.
const CHUNK_WRITERS: usize = 4;
/// Chunks queued for the writers (at most 1 MiB each).
const WRITE_QUEUE: usize = 16;

/// Hands each chunk not yet in the store (nor already queued) to the writer threads.
struct ChunkSink<'s> {
    store: &'s Store,
    tx: std::sync::mpsc::SyncSender<(shoal_protocol::ChunkRef, Vec<u8>)>,
    queued: std::collections::HashSet<Digest>,
}

impl ChunkSink<'_> {
    fn put(&mut self, c: shoal_protocol::ChunkRef, bytes: &[u8]) -> io::Result<()> {
        if self.queued.insert(c.digest)
            && !self
                .store
                .has(crate::storage::blobs::Kind::Chunk, &c.digest)
        {
            self.tx
                .send((c, bytes.to_vec()))
                .map_err(|_| io::Error::other("the chunk writers stopped"))?;
        }
        Ok(())
    }
}

/// Walks a `docker save` archive, storing layers as chunks.
pub fn read_save_archive<R: Read + Send>(
    reader: R,
    store: &Store,
) -> Result<Exported, EngineError> {
    let (tx, rx) =
        std::sync::mpsc::sync_channel::<(shoal_protocol::ChunkRef, Vec<u8>)>(WRITE_QUEUE);
    let rx = std::sync::Mutex::new(rx);
    let new_bytes = std::sync::atomic::AtomicU64::new(0);
    let failure: std::sync::Mutex<Option<io::Error>> = std::sync::Mutex::new(None);
    let walked = std::thread::scope(|scope| {
        for _ in 0..CHUNK_WRITERS {
            scope.spawn(|| {
                loop {
                    let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok((c, bytes)) = next else { break };
                    match store.put_chunk(&c, &bytes) {
                        Ok(true) => {
                            new_bytes
                                .fetch_add(u64::from(c.size), std::sync::atomic::Ordering::Relaxed);
                        }
                        Ok(false) => {}
                        Err(e) => {
                            failure
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                            break;
                        }
                    }
                }
            });
        }
        // The sink (and with it the sender) is dropped when the walk ends, so the writers finish.
        let mut sink = ChunkSink {
            store,
            tx,
            queued: std::collections::HashSet::new(),
        };
        image_archive::read_archive(reader, |c, bytes| sink.put(c, bytes))
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(EngineError::Store(e));
    }
    let image = walked.map_err(|e| match e {
        SaveError::Chunking(e) => EngineError::Store(e),
        e => EngineError::Export(e.to_string()),
    })?;
    Ok(Exported {
        image,
        new_bytes: new_bytes.into_inner(),
    })
}

/// Removes an image (used to clean up after a build); errors are ignored.
pub async fn remove_image(docker: &Docker, tag: &str) {
    let _ = docker
        .remove_image(
            tag,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await;
}

/// Builds an image with the Engine's BuildKit, with `secrets` available as secret mounts
/// (see [`crate::pipeline::secrets`]); returns the tag to export. BuildKit's step output is not streamed:
/// the log gets the outcome, and on failure BuildKit's error (which names the failing step).
pub async fn build_with_secrets(
    req: BuildRequest<'_>,
    secrets: &BTreeMap<String, Vec<u8>>,
    log: &BuildLog,
) -> Result<String, EngineError> {
    use bollard::grpc::build::{ImageBuildFrontendOptions, ImageBuildLoadInput, SecretSource};
    use bollard::grpc::driver::Build as _;
    use rand::Rng;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    let mut rnd = [0u8; 8];
    rand::rng().fill_bytes(&mut rnd);
    let nonce = hex::encode(rnd);
    let dir = SecretDir(std::env::temp_dir().join(format!("shoal-secrets-{nonce}")));
    std::fs::create_dir(&dir.0)?;
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o700))?;
    let mut opts = ImageBuildFrontendOptions::builder()
        .dockerfile(std::path::Path::new(req.dockerfile))
        .pull(false);
    for (k, v) in req.build_args {
        opts = opts.buildarg(k, v);
    }
    if let Some(p) = req.platform {
        let mut parts = p.split('/');
        if let (Some(os), Some(architecture)) = (parts.next(), parts.next()) {
            opts = opts.platforms(&bollard::grpc::build::ImageBuildPlatform {
                os: os.to_string(),
                architecture: architecture.to_string(),
                variant: parts.next().map(str::to_string),
            });
        }
    }
    for (i, (name, data)) in secrets.iter().enumerate() {
        let path = dir.0.join(i.to_string());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(data)?;
        opts = opts.set_secret(name, &SecretSource::File(path));
    }
    let tag = format!("{}-secrets-{nonce}", req.tag.trim_end_matches(":latest"));
    log.line(&format!(
        "{}Building with BuildKit to mount {} secret(s) at /run/secrets; step output is not streamed",
        req.log_prefix,
        secrets.len()
    ));
    // bollard's BuildKit session future is not `Send`: it runs on a thread of its own, with a
    // runtime and an Engine connection of its own.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let context = Bytes::from(req.context);
    let thread_tag = tag.clone();
    let frontend = opts.build();
    std::thread::Builder::new()
        .name("buildkit-session".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
                .and_then(|rt| {
                    rt.block_on(async move {
                        let docker = connect().await.map_err(|e| e.to_string())?;
                        bollard::grpc::driver::moby::Moby::new(&docker)
                            .docker_build(
                                &thread_tag,
                                frontend,
                                ImageBuildLoadInput::Upload(context),
                                None,
                                None,
                            )
                            .await
                            .map_err(|e| match &e {
                                bollard::grpc::error::GrpcError::TonicStatus { err } => {
                                    err.message().to_string()
                                }
                                other => other.to_string(),
                            })
                    })
                });
            let _ = tx.send(result);
        })?;
    let res = rx
        .await
        .unwrap_or_else(|_| Err("the BuildKit session thread ended".into()));
    drop(dir);
    match res {
        Ok(()) => {
            log.line(&format!("{}Built {tag}", req.log_prefix));
            Ok(tag)
        }
        Err(msg) => {
            log.line(&format!("{}{msg}", req.log_prefix));
            Err(EngineError::BuildFailed(msg))
        }
    }
}

/// A directory removed with its contents when dropped.
struct SecretDir(std::path::PathBuf);

impl Drop for SecretDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
