//! Publishing an image (export → layers → chunks → store → signed manifest) against a plain
//! `docker save` of the same image, in the same run.
//!
//! `cargo run --release -p shoal-builder --example publish_bench -- [SIZE_MIB] [RUNS]`
//!
//! Builds `shoal-bench:latest` from the local `busybox` image plus a layer of SIZE_MIB (default
//! 256) incompressible bytes, then alternates, RUNS times (default 3): `docker save -o FILE`,
//! a cold publish into an empty store (every chunk new, each fsynced) and a warm publish into the
//! same store again (every chunk already present). Prints each time and the median ratios.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_builder::keys::Keys;
use shoal_builder::pipeline::engine;
use shoal_builder::storage::blobs::Store;
use shoal_protocol::{
    Envelope, ReleaseManifest, ReleaseSeq, RolloutPlan, Service, ServiceSettings, UnixTime,
};

const IMAGE: &str = "shoal-bench:latest";

fn make_image(size_mib: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.path().join("blob.bin"))?);
    let mut buf = vec![0u8; 1024 * 1024];
    for _ in 0..size_mib {
        for b in buf.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x >> 24) as u8;
        }
        f.write_all(&buf)?;
    }
    f.flush()?;
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM busybox\nCOPY blob.bin /data/blob.bin\n",
    )?;
    let st = Command::new("docker")
        .args(["build", "-q", "-t", IMAGE])
        .arg(dir.path())
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(st.success(), "docker build failed");
    Ok(())
}

async fn publish(
    docker: &bollard::Docker,
    store: Arc<Store>,
    keys: &Keys,
) -> anyhow::Result<(u64, u64)> {
    let exported = engine::export(docker, IMAGE, store.clone()).await?;
    let mut services = std::collections::BTreeMap::new();
    let size = exported.image.size_bytes();
    services.insert(
        "main".to_string(),
        Service {
            image: exported.image,
            settings: ServiceSettings::default(),
        },
    );
    let m = ReleaseManifest {
        fleet: "bench".into(),
        sequence: ReleaseSeq(1),
        commit: "0".repeat(40),
        created: UnixTime(1),
        expires: UnixTime(u64::MAX),
        arch: "amd64".into(),
        device_type: "generic-amd64".into(),
        services,
        rollout: RolloutPlan::canary(),
    };
    let env = Envelope::seal(&m, &[&keys.release]);
    store.put_blob(
        shoal_builder::storage::blobs::Kind::Manifest,
        &shoal_protocol::encoding::encode(&env),
    )?;
    Ok((size, exported.new_bytes))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let size_mib: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(256);
    let runs: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(3);
    make_image(size_mib)?;
    let rt = tokio::runtime::Runtime::new()?;
    let docker = rt.block_on(engine::connect())?;
    let work = tempfile::tempdir()?;
    let keys = Keys::load_or_generate(&work.path().join("keys"))?;
    let (mut save, mut cold, mut warm) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let out = work.path().join("save.tar");
        let t = Instant::now();
        let st = Command::new("docker")
            .args(["save", "-o"])
            .arg(&out)
            .arg(IMAGE)
            .status()?;
        anyhow::ensure!(st.success(), "docker save failed");
        // Same durability as the store: the file is on disk when the step ends.
        std::fs::File::open(&out)?.sync_all()?;
        let d_save = t.elapsed();
        let tar_bytes = std::fs::metadata(&out)?.len();
        std::fs::remove_file(&out)?;

        let store_dir = work.path().join(format!("store-{run}"));
        let store = Arc::new(Store::open(&store_dir)?);
        let t = Instant::now();
        let (size, new_cold) = rt.block_on(publish(&docker, store.clone(), &keys))?;
        let d_cold = t.elapsed();
        let t = Instant::now();
        let (_, new_warm) = rt.block_on(publish(&docker, store, &keys))?;
        let d_warm = t.elapsed();
        std::fs::remove_dir_all(&store_dir)?;
        println!(
            "run {run}: docker save {:>7.3}s ({} MiB tar) | publish cold {:>7.3}s ({} MiB layers, {} MiB new) | publish warm {:>7.3}s ({} B new)",
            d_save.as_secs_f64(),
            tar_bytes >> 20,
            d_cold.as_secs_f64(),
            size >> 20,
            new_cold >> 20,
            d_warm.as_secs_f64(),
            new_warm
        );
        save.push(d_save);
        cold.push(d_cold);
        warm.push(d_warm);
    }
    let (s, c, w) = (median(save), median(cold), median(warm));
    println!(
        "median: docker save {:.3}s, publish cold {:.3}s ({:.2}x), publish warm {:.3}s ({:.2}x)",
        s.as_secs_f64(),
        c.as_secs_f64(),
        c.as_secs_f64() / s.as_secs_f64(),
        w.as_secs_f64(),
        w.as_secs_f64() / s.as_secs_f64()
    );
    Ok(())
}
