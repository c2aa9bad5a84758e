//! Fan-out benchmark: one seeder, N device daemons as separate `shoal-node run` processes, on
//! loopback.
//!
//! ```text
//! cargo build --release -p shoal-node --bins --examples
//! target/release/examples/fanout_bench --json            # 256 MiB, 8 devices
//! ```
//!
//! The seeder is an origin daemon in this process ([`shoal_node::daemon::Launcher::origin`]); the
//! devices are real processes, each bootstrapped to the seeder only (Kademlia finds the rest),
//! with their stores under `--dir` (default `/dev/shm` when present). Once every device is
//! connected, it measures each device's idle RSS, then seeds a release of `--mib` MiB of random
//! (incompressible) bytes and samples RSS every 100 ms until every device has staged it.
//!
//! Prints `release_mib`, `devices`, `seconds` (seed to last device staged),
//! `seeder_egress_ratio` (bytes the seeder sent / release bytes), `rss_idle_mib_max` and
//! `rss_fanout_mib_max` (largest device RSS in MiB, from `/proc/<pid>/status`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use shoal_node::daemon::identity::DeviceKey;
use shoal_node::daemon::{Launcher, status};
use shoal_protocol::{
    ChunkParams, ChunkRef, Digest, Envelope, LayerRef, RolloutPlan, UnixTime, chunking, encoding,
};
use shoal_testing::pseudo_random;
use shoal_testing::{CHUNKS_PER_LAYER, TEST_ARCH, TestFleet};

struct Args {
    json: bool,
    mib: usize,
    devices: usize,
    dir: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        json: false,
        mib: 256,
        devices: 8,
        dir: if Path::new("/dev/shm").is_dir() {
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
            "--devices" => args.devices = value()?.parse()?,
            "--dir" => args.dir = value()?.into(),
            other => anyhow::bail!(
                "unknown argument {other}; usage: fanout_bench [--json] [--mib N] [--devices N] [--dir PATH]"
            ),
        }
    }
    Ok(args)
}

fn rss_mib(pid: u32) -> f64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0.0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn unix_now() -> UnixTime {
    UnixTime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("shoal-node"))
        .filter(|p| p.exists())
        .context("shoal-node binary not found next to the examples; run `cargo build --release -p shoal-node --bins --examples` first")?;
    let work = tempfile::Builder::new()
        .prefix("shoal-fanout-bench")
        .tempdir_in(&args.dir)?;
    let fleet = TestFleet::new("fanout");
    let root = work.path().join("root.bin");
    std::fs::write(
        &root,
        encoding::encode(&Envelope::seal(&fleet.trust, &[&fleet.root_key])),
    )?;

    let origin = Launcher::new(
        DeviceKey::generate(),
        fleet.trust.clone(),
        work.path().join("origin"),
    )
    .arch(TEST_ARCH)
    .origin(true)
    .start()
    .await?;
    let boot = origin.listen_addrs()[0].to_string();

    let mut children = Children(Vec::new());
    let mut sockets = Vec::new();
    for i in 0..args.devices {
        let dir = work.path().join(format!("d{i}"));
        std::fs::create_dir_all(&dir)?;
        DeviceKey::create(&dir.join("device.key"))?;
        let cfg = dir.join("node.toml");
        std::fs::write(
            &cfg,
            format!(
                "data_dir = {dir:?}\nfleet = \"fanout\"\narch = \"{TEST_ARCH}\"\ntrust_root = {root:?}\n\
                 listen = [\"/ip4/127.0.0.1/udp/0/quic-v1\"]\ndata_listen = \"127.0.0.1:0\"\n\
                 bootstrap = [\"{boot}\"]\nmdns = false\n"
            ),
        )?;
        let log = std::fs::File::create(dir.join("log.txt"))?;
        children.0.push(
            Command::new(&bin)
                .args(["run", "--config"])
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?,
        );
        sockets.push(dir.join("control.sock"));
    }

    // Wait until every device is connected to every other one and the seeder.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut connected;
    loop {
        connected = 0;
        for s in &sockets {
            if let Ok(st) = status::read(s).await
                && st.peers.len() >= args.devices
            {
                connected += 1;
            }
        }
        if connected == args.devices || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pids: Vec<u32> = children.0.iter().map(|c| c.id()).collect();
    let rss_idle = pids.iter().map(|p| rss_mib(*p)).fold(0.0, f64::max);

    // The release.
    let data = pseudo_random(args.mib << 20, 0x5eed);
    let mut refs = Vec::new();
    let mut start = 0;
    for len in chunking::cut_points(&data, ChunkParams::DEFAULT) {
        let bytes = &data[start..start + len];
        origin.store().put_bytes(bytes)?;
        refs.push(ChunkRef {
            digest: Digest::of(bytes),
            size: len as u32,
        });
        start += len;
    }
    drop(data);
    let layers = refs
        .chunks(CHUNKS_PER_LAYER)
        .map(|c| LayerRef::from_chunks(c.to_vec()))
        .collect();
    let release = fleet.release_from_layers(
        1,
        layers,
        RolloutPlan::all_at_once(),
        unix_now().plus_secs(86_400),
    );
    origin.store().put_bytes(&release.manifest_bytes)?;
    let release_bytes = release.announcement.release_bytes;

    let t0 = Instant::now();
    origin
        .seed(
            release.announcement_gossip[1..].to_vec(),
            Arc::clone(&release.manifest_bytes),
        )
        .await?;
    let mut rss_fanout: f64 = 0.0;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut staged;
    loop {
        staged = 0;
        for s in &sockets {
            if let Ok(st) = status::read(s).await
                && st.has_staged(1)
            {
                staged += 1;
            }
        }
        for p in &pids {
            rss_fanout = rss_fanout.max(rss_mib(*p));
        }
        if staged == args.devices || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let egress = origin.counters().total_out();
    let ratio = egress as f64 / release_bytes as f64;
    drop(children);
    origin.shutdown().await;
    anyhow::ensure!(
        staged == args.devices,
        "only {staged} of {} devices staged ({connected} were fully connected)",
        args.devices
    );
    let round = |v: f64| (v * 100.0).round() / 100.0;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "release_mib": args.mib,
                "devices": args.devices,
                "seconds": round(seconds),
                "seeder_egress_ratio": round(ratio),
                "rss_idle_mib_max": round(rss_idle),
                "rss_fanout_mib_max": round(rss_fanout),
            })
        );
    } else {
        println!(
            "{} devices staged {} MiB in {seconds:.1} s",
            args.devices, args.mib
        );
        println!("seeder egress / release bytes: {ratio:.2}");
        println!(
            "device RSS idle (max): {rss_idle:.1} MiB; during fan-out (max): {rss_fanout:.1} MiB"
        );
    }
    Ok(())
}
