//! `shoal-node`: the device daemon and its local CLI.
//!
//! - `shoal-node init --key FILE` creates the device key (mode 0600) and prints the device id.
//! - `shoal-node run --config FILE` runs the daemon.
//! - `shoal-node status --config FILE [--json]` asks the running daemon through its control
//!   socket.
//! - `shoal-node lock-override --config FILE` lets the next update go ahead although the
//!   update lock file is held (see `shoal_node::daemon::runtime`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use shoal_node::daemon::config::FileConfig;
use shoal_node::daemon::identity::DeviceKey;
use shoal_node::daemon::{Status, launch, runtime, status};

#[derive(Debug, Parser)]
#[command(name = "shoal-node", version, about = "Shoal device daemon")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create the device key.
    Init {
        /// Where to write it (default: `<data_dir>/device.key` of --config, else ./device.key).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Take the key path from this configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the daemon.
    Run {
        /// The configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Let the next update restart services although the update lock is held.
    LockOverride {
        /// The configuration file of the daemon.
        #[arg(long)]
        config: PathBuf,
    },
    /// Show the running daemon's status.
    Status {
        /// The configuration file of the daemon to ask.
        #[arg(long)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Init { key, config } => init(key, config),
        Cmd::Run { config } => run(&config),
        Cmd::Status { config, json } => status(&config, json),
        Cmd::LockOverride { config } => lock_override(&config),
    }
}

fn init(key: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<()> {
    let path = match (key, config) {
        (Some(k), _) => k,
        (None, Some(c)) => {
            let cfg = FileConfig::load(&c)?;
            std::fs::create_dir_all(&cfg.data_dir)
                .with_context(|| format!("cannot create {}", cfg.data_dir.display()))?;
            cfg.key_path()
        }
        (None, None) => PathBuf::from("device.key"),
    };
    let key = DeviceKey::create(&path)?;
    println!("{}", key.device_id());
    eprintln!("device key written to {} (mode 0600)", path.display());
    Ok(())
}

fn run(config: &Path) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cfg = FileConfig::load(config)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let handle = launch::launch(&cfg).await?;
        tracing::info!(
            device = %handle.device_id(),
            data = %handle.data_addr(),
            listen = ?handle.listen_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            metrics = ?handle.metrics_addr(),
            "shoal-node running"
        );
        tokio::signal::ctrl_c().await?;
        tracing::info!("shutting down");
        handle.shutdown().await;
        anyhow::Ok(())
    })
}

fn lock_override(config: &Path) -> anyhow::Result<()> {
    let cfg = FileConfig::load(config)?;
    let path = runtime::lock_override_path(&cfg.data_dir);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&path, b"override\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    match &cfg.runtime.update_lock {
        Some(lock) => eprintln!(
            "the next update goes ahead although {} is held ({} is removed once used)",
            lock.display(),
            path.display()
        ),
        None => eprintln!(
            "no update lock is configured; {} written anyway",
            path.display()
        ),
    }
    Ok(())
}

fn status(config: &Path, json: bool) -> anyhow::Result<()> {
    let cfg = FileConfig::load(config)?;
    let socket = cfg.control_socket();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let s: Status = rt
        .block_on(status::read(&socket))
        .with_context(|| format!("no daemon answers on {} (is it running?)", socket.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("device   {}", s.device);
    println!(
        "fleet    {}  site {}",
        s.fleet,
        s.site.as_deref().unwrap_or("-")
    );
    println!("data     {}", s.data_addr);
    for a in &s.listen_addrs {
        println!("listen   {a}");
    }
    match s.target {
        Some(t) => println!(
            "release  {t} {} ({}/{} chunks, {} in flight)",
            s.phase.as_deref().unwrap_or("-"),
            s.have_chunks,
            s.total_chunks,
            s.in_flight
        ),
        None => println!("release  none"),
    }
    println!(
        "applied  {}  committed {}",
        s.applied.map_or("-".into(), |v| v.to_string()),
        s.committed.map_or("-".into(), |v| v.to_string())
    );
    if let Some(r) = &s.refused {
        println!("refused  {r}");
    }
    match (s.enrolled, &s.enroll_error) {
        (None, _) => {}
        (Some(true), _) => println!("enrolled yes"),
        (Some(false), Some(e)) => println!("enrolled no: {e}"),
        (Some(false), None) => println!("enrolled not yet"),
    }
    println!(
        "store    {} / {} bytes; in {} out {} bytes",
        s.store_bytes, s.store_quota_bytes, s.bytes_in, s.bytes_out
    );
    println!("services {}", s.services.len());
    for svc in &s.services {
        println!(
            "  {} release {} {} ({})",
            svc.service,
            svc.release.map_or("-".into(), |r| r.to_string()),
            svc.state,
            svc.container
        );
    }
    println!("peers    {} ({} banned)", s.peers.len(), s.banned_peers);
    for p in &s.peers {
        println!(
            "  {} {} {} {} ms",
            &p.device[..16],
            p.addr,
            p.class,
            p.rtt_ms
        );
    }
    Ok(())
}
