//! Data-plane benchmark: one pair of endpoints on loopback.
//!
//! ```text
//! cargo run --release -p shoal-node --example transfer_bench -- --json
//! ```
//!
//! Makes `--mib` MiB (default 1024) of incompressible pseudo-random bytes, cuts them into
//! content-defined chunks (FastCDC, 256 KiB average) and imports them into a seeder's store (not
//! timed: an origin compresses once when it publishes). Then, in the same process and run:
//!
//! - `raw_quinn_mib_s`: a plain quinn bulk stream of the same number of bytes, from memory to
//!   memory, on a connection with the same TLS and transport configuration;
//! - `shoal_fetch_mib_s`: every chunk fetched with the chunk protocol (`--concurrency` requests
//!   in flight), decompressed under the declared-size cap, BLAKE3-verified and stored (temporary
//!   file, fsync, rename) in the fetcher's store.
//!
//! The stores live under `--dir` (default `/dev/shm` when present, so the figure measures the
//! protocol, not the disk; pass another directory to include it). Each is the median of
//! `--rounds` alternating runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use shoal_node::daemon::identity::DeviceKey;
use shoal_node::daemon::quic::{connect, endpoint};
use shoal_node::daemon::store::Store;
use shoal_node::daemon::transfer::{self, Counters};
use shoal_protocol::{ChunkParams, ChunkRef, chunking};
use shoal_testing::pseudo_random;
use tokio::sync::Semaphore;

#[derive(Debug)]
struct Args {
    json: bool,
    mib: usize,
    concurrency: usize,
    rounds: usize,
    dir: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        json: false,
        mib: 1024,
        concurrency: 32,
        rounds: 1,
        dir: if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        },
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--json" => args.json = true,
            "--mib" => args.mib = value()?.parse()?,
            "--concurrency" => args.concurrency = value()?.parse()?,
            "--rounds" => args.rounds = value()?.parse()?,
            "--dir" => args.dir = value()?.into(),
            other => anyhow::bail!(
                "unknown argument {other}; usage: transfer_bench [--json] [--mib N] \
                 [--concurrency N] [--rounds N] [--dir PATH]"
            ),
        }
    }
    Ok(args)
}

/// Imports `mib` MiB into `store`, 64 MiB at a time; returns the chunk list.
fn seed(store: &Store, mib: usize) -> anyhow::Result<Vec<ChunkRef>> {
    let mut chunks = Vec::new();
    let mut left = mib << 20;
    let mut seed = 1;
    while left > 0 {
        let n = left.min(64 << 20);
        let data = pseudo_random(n, 2 * seed + 1);
        seed += 1;
        let mut start = 0;
        for len in chunking::cut_points(&data, ChunkParams::DEFAULT) {
            let bytes = &data[start..start + len];
            let digest = store.put_bytes(bytes)?;
            chunks.push(ChunkRef {
                digest,
                size: bytes.len() as u32,
            });
            start += len;
        }
        left -= n;
    }
    Ok(chunks)
}

async fn raw_quinn(
    server: &quinn::Endpoint,
    client: &quinn::Endpoint,
    server_key: &DeviceKey,
    client_key: &DeviceKey,
    total: u64,
) -> anyhow::Result<f64> {
    let addr = server.local_addr()?;
    let server = server.clone();
    let sender = tokio::spawn(async move {
        let conn = server
            .accept()
            .await
            .ok_or_else(|| anyhow::anyhow!("endpoint closed"))?
            .await?;
        let (mut send, mut recv) = conn.accept_bi().await?;
        let mut go = [0u8; 1];
        recv.read_exact(&mut go).await?;
        let block = pseudo_random(1 << 20, 99);
        let mut left = total;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            send.write_all(&block[..n]).await?;
            left -= n as u64;
        }
        send.finish()?;
        let _ = send.stopped().await;
        anyhow::Ok(())
    });
    let conn = connect(client, client_key, addr, &server_key.device_id()).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let start = Instant::now();
    send.write_all(&[1]).await?;
    let mut got = 0u64;
    while let Some(chunk) = recv.read_chunk(1 << 20, true).await? {
        got += chunk.bytes.len() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(got == total, "raw stream delivered {got} of {total} bytes");
    sender.await??;
    conn.close(0u32.into(), b"done");
    Ok(total as f64 / (1 << 20) as f64 / secs)
}

async fn shoal_fetch(
    server_addr: std::net::SocketAddr,
    client: &quinn::Endpoint,
    server_key: &DeviceKey,
    client_key: &DeviceKey,
    chunks: &[ChunkRef],
    store: Arc<Store>,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let conn = connect(client, client_key, server_addr, &server_key.device_id()).await?;
    let counters = Arc::new(Counters::default());
    let peer = server_key.device_id();
    let slots = Arc::new(Semaphore::new(concurrency));
    let total: u64 = chunks.iter().map(|c| u64::from(c.size)).sum();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for &chunk in chunks {
        let permit = slots.clone().acquire_owned().await?;
        let (conn, store, counters) = (conn.clone(), store.clone(), counters.clone());
        tasks.spawn(async move {
            let _permit = permit;
            transfer::fetch_chunk_into(&conn, &peer, &store, chunk, &counters).await
        });
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        store.used_bytes() == total && store.len() == chunks.len(),
        "fetcher stored {} of {total} bytes",
        store.used_bytes()
    );
    conn.close(0u32.into(), b"done");
    Ok(total as f64 / (1 << 20) as f64 / secs)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let work = tempfile::Builder::new()
        .prefix("shoal-transfer-bench")
        .tempdir_in(&args.dir)?;
    let seeder = Arc::new(Store::open(&work.path().join("seed"), u64::MAX)?);
    let chunks = tokio::task::spawn_blocking({
        let seeder = seeder.clone();
        let mib = args.mib;
        move || seed(&seeder, mib)
    })
    .await??;
    let total: u64 = chunks.iter().map(|c| u64::from(c.size)).sum();

    let server_key = DeviceKey::generate();
    let client_key = DeviceKey::generate();
    let mut raws = Vec::new();
    let mut fetches = Vec::new();
    for round in 0..args.rounds.max(1) {
        // Raw baseline on its own endpoint pair.
        let server = endpoint(&server_key, "127.0.0.1:0".parse()?)?;
        let client = endpoint(&client_key, "127.0.0.1:0".parse()?)?;
        raws.push(raw_quinn(&server, &client, &server_key, &client_key, total).await?);
        server.close(0u32.into(), b"");
        client.close(0u32.into(), b"");

        let server = endpoint(&server_key, "127.0.0.1:0".parse()?)?;
        let client = endpoint(&client_key, "127.0.0.1:0".parse()?)?;
        let serve = tokio::spawn(transfer::serve(
            server.clone(),
            transfer::Server::new(
                seeder.clone(),
                Arc::new(Counters::default()),
                // A slot is released once the client acknowledged the last byte, a little after
                // the client saw it: room for the client's next requests.
                2 * args.concurrency,
            ),
            Arc::new(|_: &shoal_protocol::DeviceId| true),
        ));
        let fetch_dir = work.path().join(format!("fetch-{round}"));
        let store = Arc::new(Store::open(&fetch_dir, u64::MAX)?);
        fetches.push(
            shoal_fetch(
                server.local_addr()?,
                &client,
                &server_key,
                &client_key,
                &chunks,
                store,
                args.concurrency,
            )
            .await?,
        );
        server.close(0u32.into(), b"");
        client.close(0u32.into(), b"");
        serve.abort();
        std::fs::remove_dir_all(&fetch_dir)?;
    }
    let raw = median(raws);
    let fetch = median(fetches);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "raw_quinn_mib_s": (raw * 10.0).round() / 10.0,
                "shoal_fetch_mib_s": (fetch * 10.0).round() / 10.0,
                "ratio": (fetch / raw * 1000.0).round() / 1000.0,
            })
        );
    } else {
        println!(
            "{} chunks, {:.1} MiB, store in {}",
            chunks.len(),
            total as f64 / (1 << 20) as f64,
            args.dir.display()
        );
        println!("raw quinn bulk stream: {raw:.1} MiB/s");
        println!("shoal fetch+verify+store: {fetch:.1} MiB/s");
        println!("ratio: {:.3}", fetch / raw);
    }
    Ok(())
}
