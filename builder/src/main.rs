//! `shoal-builder`: the build server and its operator CLI. Parses arguments and runs; the work is
//! in the library.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shoal_builder::app::{App, Role, now_s};
use shoal_builder::live::{Rollouts, system_clock_ms};
use shoal_builder::origin::{OriginConfig, OriginGossip, Origins};
use shoal_protocol::RolloutPlan;

mod keys_cli;

#[derive(Debug, Parser)]
#[command(
    name = "shoal-builder",
    version,
    about = "Shoal build server: git push → signed release"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct DataArg {
    /// The data directory (database, store, keys, repositories).
    #[arg(long, default_value = "shoal-builder-data")]
    data: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        #[command(flatten)]
        data: DataArg,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7480")]
        listen: String,
        /// libp2p listen address of the fleets' origin nodes (repeatable). A fixed port is
        /// offset by the fleet's id minus one; port 0 picks a free one.
        #[arg(long = "p2p-listen", default_value = "/ip4/127.0.0.1/udp/7481/quic-v1")]
        p2p_listen: Vec<libp2p::Multiaddr>,
        /// QUIC data-plane address of the origin nodes (port offset per fleet as above).
        #[arg(long = "data-listen", default_value = "127.0.0.1:7581")]
        data_listen: std::net::SocketAddr,
    },
    /// Run a local fleet: a builder and devices on loopback, the bundled examples/hello pushed
    /// to it, then a one-line change, each rolled out in waves (needs a Docker Engine).
    LocalFleet {
        /// Devices to run.
        #[arg(long, default_value_t = 5)]
        devices: usize,
        /// End after the second rollout with a summary; exit 0 only if every device runs it.
        #[arg(long)]
        exit: bool,
    },
    /// Manage fleets (works on the data directory; the server need not run).
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Manage push tokens (works on the data directory).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// A running builder's releases (over its HTTP API).
    Releases {
        #[command(subcommand)]
        command: shoal_builder::cli::ReleasesCommand,
    },
    /// A running builder's rollouts (over its HTTP API; actions need an operator token).
    Rollout {
        #[command(subcommand)]
        command: shoal_builder::cli::RolloutCommand,
    },
    /// A running builder's devices (over its HTTP API).
    Devices {
        #[command(subcommand)]
        command: shoal_builder::cli::DevicesCommand,
    },
    /// Trust-root rotation and offline root keys (works on the data directory or key files).
    Keys {
        #[command(subcommand)]
        command: keys_cli::KeysCommand,
    },
    /// Git hooks (run by git, not by people).
    Hook {
        #[command(subcommand)]
        command: HookCommand,
    },
}

#[derive(Debug, Subcommand)]
enum FleetCommand {
    /// Create a fleet and its git repository and trust root.
    Create {
        /// Fleet name.
        name: String,
        /// Target architecture (amd64, aarch64, armv7hf, ...).
        #[arg(long)]
        arch: String,
        /// Device type (generic-amd64, raspberrypi4-64, ...).
        #[arg(long)]
        device_type: String,
        /// Roll out to the whole fleet at once instead of canary waves.
        #[arg(long)]
        all_at_once: bool,
        #[command(flatten)]
        data: DataArg,
    },
    /// List fleets.
    List {
        #[command(flatten)]
        data: DataArg,
    },
    /// Create a key devices register with, and print it (it is shown only once).
    ProvisioningKey {
        /// Fleet name.
        fleet: String,
        #[command(flatten)]
        data: DataArg,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a push token and print it (it is shown only once).
    Create {
        /// A name to recognise it by.
        #[arg(long, default_value = "default")]
        name: String,
        /// An operator token: may also pause, resume, abort and promote rollouts, pin
        /// releases and change rollout policies.
        #[arg(long)]
        operator: bool,
        #[command(flatten)]
        data: DataArg,
    },
}

#[derive(Debug, Subcommand)]
enum HookCommand {
    /// The pre-receive hook of a fleet repository.
    PreReceive,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Hook {
        command: HookCommand::PreReceive,
    } = cli.command
    {
        std::process::exit(shoal_builder::http::hook::client_main());
    }
    if let Command::Keys { command } = cli.command {
        return keys_cli::run(command);
    }
    // The operator CLI talks HTTP and needs no runtime.
    let remote = match cli.command {
        Command::Releases { command } => Some(shoal_builder::cli::releases(
            command,
            &mut std::io::stdout().lock(),
        )),
        Command::Rollout { command } => Some(shoal_builder::cli::rollout(
            command,
            &mut std::io::stdout().lock(),
        )),
        Command::Devices { command } => Some(shoal_builder::cli::devices(
            command,
            &mut std::io::stdout().lock(),
        )),
        other => {
            return run_server(other);
        }
    };
    if let Some(Err(e)) = remote {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    Ok(())
}

fn run_server(command: Command) -> anyhow::Result<()> {
    // The local fleet draws progress bars: daemon logs would scroll them away.
    let default_filter = if matches!(command, Command::LocalFleet { .. }) {
        "warn"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Runtime::new().context("tokio runtime")?;
    rt.block_on(run(command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            data,
            listen,
            p2p_listen,
            data_listen,
        } => {
            let app = App::open(&data.data).await.context("open data directory")?;
            println!("data directory: {}", data.data.display());
            println!(
                "root key fingerprint:    {}",
                app.keys
                    .root
                    .as_ref()
                    .map_or("offline".to_string(), |k| k.public_key().fingerprint())
            );
            println!(
                "release key fingerprint: {}",
                app.keys.release.public_key().fingerprint()
            );
            let n = app.db.interrupt_running(now_s()).await?;
            if n > 0 {
                println!("marked {n} release(s) left running as interrupted");
            }
            let app = Arc::new(app);
            let origins = Arc::new(Origins::new(
                &app,
                OriginConfig {
                    p2p_listen,
                    data_listen,
                },
            ));
            let _ = app.origins.set(Arc::new(OriginGossip(origins.clone())));
            let (seeded, reports) = (origins.subscribe_seeded(), origins.subscribe_reports());
            origins
                .start_all(&app)
                .await
                .context("start the origin nodes")?;
            let rollouts = Rollouts::start(
                app.clone(),
                Arc::new(OriginGossip(origins.clone())),
                seeded,
                reports,
                system_clock_ms(),
            )
            .await
            .context("resume the rollouts")?;
            let _ = app.rollouts.set(Arc::new(rollouts));
            for fleet in app.db.fleets().await? {
                shoal_builder::app::configure_repo(&app.repo_path(&fleet))
                    .with_context(|| format!("configure repository of {fleet}"))?;
                println!(
                    "fleet {fleet}: trust root {}",
                    app.trust_root_path(&fleet).display()
                );
                if let Some(b) = origins.with(&fleet, |o| o.bootstrap()).await {
                    println!("fleet {fleet}: origin {}", b.multiaddrs.join(" "));
                }
            }
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("listen on {listen}"))?;
            println!(
                "shoal-builder listening on http://{}",
                listener.local_addr()?
            );
            shoal_builder::http::serve(app, listener).await?;
            Ok(())
        }
        Command::LocalFleet { devices, exit } => local_fleet(devices, exit).await,
        Command::Fleet {
            command:
                FleetCommand::Create {
                    name,
                    arch,
                    device_type,
                    all_at_once,
                    data,
                },
        } => {
            let app = App::open(&data.data).await.context("open data directory")?;
            let plan = if all_at_once {
                RolloutPlan::all_at_once()
            } else {
                RolloutPlan::canary()
            };
            let fleet = app.create_fleet(&name, &arch, &device_type, &plan).await?;
            println!(
                "created fleet {} ({} / {})",
                fleet.name, fleet.arch, fleet.device_type
            );
            println!("git remote:  http://HOST:PORT/git/{}.git", fleet.name);
            println!(
                "trust root:  {}",
                app.trust_root_path(&fleet.name).display()
            );
            Ok(())
        }
        Command::Fleet {
            command: FleetCommand::List { data },
        } => {
            let app = App::open(&data.data).await.context("open data directory")?;
            for f in app.db.fleets().await? {
                println!("{f}");
            }
            Ok(())
        }
        Command::Fleet {
            command: FleetCommand::ProvisioningKey { fleet, data },
        } => {
            let app = App::open(&data.data).await.context("open data directory")?;
            let key = app.create_provisioning_key(&fleet).await?;
            println!("{key}");
            Ok(())
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    name,
                    operator,
                    data,
                },
        } => {
            let app = App::open(&data.data).await.context("open data directory")?;
            let role = if operator { Role::Operator } else { Role::Push };
            let token = app.create_token_with_role(&name, role).await?;
            println!("{token}");
            Ok(())
        }
        Command::Hook { .. }
        | Command::Releases { .. }
        | Command::Rollout { .. }
        | Command::Devices { .. }
        | Command::Keys { .. } => {
            unreachable!("handled before the runtime starts")
        }
    }
}

async fn local_fleet(devices: usize, exit: bool) -> anyhow::Result<()> {
    use shoal_builder::local_fleet::{self, demo};
    use shoal_node::daemon::identity::DeviceKey;
    use shoal_node::daemon::runtime::RuntimeConfig;

    if let Err(e) = shoal_builder::pipeline::engine::connect().await {
        eprintln!("shoal-builder local-fleet: no Docker Engine reachable: {e}");
        eprintln!("Start one (for example `bash scripts/engine.sh`) and run this again.");
        std::process::exit(2);
    }
    let script = std::process::Command::new("bash")
        .arg("-c")
        .arg(local_fleet::BASE_IMAGE_SCRIPT)
        .status()
        .context("run the base image script")?;
    anyhow::ensure!(script.success(), "making the busybox base image failed");

    let prefix = format!("shoal-local-{}", std::process::id());
    let runtime_prefix = prefix.clone();
    let (factory, runtimes) = local_fleet::docker_runtimes(move |_| RuntimeConfig {
        prefix: runtime_prefix.clone(),
        health_window_ms: 3_000,
        stop_timeout_s: 2,
        ..RuntimeConfig::default()
    });
    let listed = runtimes.clone();
    let containers: demo::ContainersFn = Arc::new(move || {
        let rts: Vec<_> = (listed.lock().unwrap_or_else(|p| p.into_inner()))
            .values()
            .cloned()
            .collect();
        Box::pin(async move {
            let mut out = Vec::new();
            for rt in rts {
                for c in rt.containers().await.unwrap_or_default() {
                    out.push((
                        c.name,
                        c.state,
                        format!("{} (release {})", c.service, c.release.unwrap_or(0)),
                    ));
                }
            }
            out
        })
    });
    let result = demo::run(demo::Demo {
        fleet: local_fleet::Options {
            builder_exe: demo::builder_exe()?,
            keys: (0..devices).map(|_| DeviceKey::generate()).collect(),
            runtime: factory,
            plan: local_fleet::quick_plan(3),
        },
        containers,
        exit,
    })
    .await;
    let rts: Vec<_> = (runtimes.lock().unwrap_or_else(|p| p.into_inner()))
        .values()
        .cloned()
        .collect();
    for rt in rts {
        let _ = rt.purge().await;
    }
    match result {
        Ok(true) => Ok(()),
        Ok(false) => std::process::exit(1),
        Err(e) => Err(e.into()),
    }
}
