//! Start-up: from a [`Launcher`] to a running daemon. Checks the enrollment, opens the store and
//! the saved state, builds the core, lets the runtime recover, binds the data plane and libp2p
//! (waiting for the listeners), dials the bootstrap peers, binds the local endpoints, starts
//! enrollment (then the origin's addresses from the builder, dialed as a command), and spawns
//! the event loop ([`Driver::run`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use shoal_protocol::{DeviceId, encoding};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;

use super::{Driver, EVENT_CAPACITY};
use crate::core::{self, Input};
use crate::daemon::enroll;
use crate::daemon::handle::{Command, Handle};
use crate::daemon::launcher::{Launcher, StartError};
use crate::daemon::metrics::Counters;
use crate::daemon::net;
use crate::daemon::status::{self, Status};
use crate::daemon::store::Store;
use crate::daemon::transfer::{self, BlobSource};

impl Launcher {
    /// Starts the daemon on the current tokio runtime; the [`Handle`] controls it. Fails
    /// before the event loop runs if any part cannot be set up.
    pub async fn start(self) -> Result<Handle, StartError> {
        crate::daemon::quic::install_crypto_provider();
        let device = self.key.device_id();
        // A registration the builder will be sent (checked before anything is bound).
        let enroll = match &self.enroll {
            Some(e) => {
                let url = enroll::HttpUrl::parse(&e.builder_url).map_err(StartError::Enroll)?;
                let name = e
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("device-{}", device.short()));
                let device_type = e
                    .device_type
                    .clone()
                    .unwrap_or_else(|| format!("generic-{}", self.arch));
                let registration = shoal_protocol::registration::sign_registration(
                    &self.key.signing_key(),
                    &e.provisioning_key,
                    &name,
                    self.site.as_deref().unwrap_or(""),
                    &self.arch,
                    &device_type,
                );
                Some((url, registration))
            }
            None => None,
        };
        std::fs::create_dir_all(&self.data_dir).map_err(|source| StartError::Bind {
            what: "data directory",
            addr: self.data_dir.display().to_string(),
            source,
        })?;
        let store = Arc::new(Store::open(&self.data_dir.join("store"), self.quota_bytes)?);
        let state_path = self.data_dir.join("node-state.bin");
        let snapshot =
            match std::fs::read(&state_path) {
                Ok(bytes) => Some(encoding::decode::<core::Snapshot>(&bytes).map_err(
                    |source| StartError::Snapshot {
                        path: state_path.clone(),
                        source,
                    },
                )?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(source) => {
                    return Err(crate::daemon::state::StateError::Io {
                        path: state_path,
                        source,
                    }
                    .into());
                }
            };
        let mut config = core::Config::new(
            self.key.signing_key(),
            self.trust.clone(),
            self.arch.clone(),
        );
        config.site = self.site.clone();
        config.store_quota_bytes = self.quota_bytes;
        config.origin = self.origin;
        if let Some(tune) = self.tune {
            tune(&mut config);
        }
        let mut node = match snapshot {
            Some(s) => core::Node::resume(config, s, self.seed),
            None => core::Node::new(config, self.seed),
        };
        if !self.trust_chain.is_empty() {
            node.relay_trust_chain(self.trust_chain.clone())
                .map_err(StartError::TrustChain)?;
        }
        if !self.origin {
            // Back to the committed release before anything else happens (a crash may have
            // interrupted an apply); the core then reports the interrupted release as failed.
            if let Err(e) = self.runtime.recover(node.committed(), store.clone()).await {
                tracing::error!(error = %e, "runtime recovery failed");
            }
        }

        let endpoint = crate::daemon::quic::endpoint(&self.key, self.data_listen)?;
        let data_addr = endpoint.local_addr().map_err(|source| StartError::Bind {
            what: "data plane",
            addr: self.data_listen.to_string(),
            source,
        })?;
        let mut swarm = net::swarm(
            &self.key,
            &self.fleet,
            data_addr.port(),
            self.origin,
            self.mdns,
            self.kademlia,
        )?;
        let mut listen_addrs = Vec::new();
        for addr in &self.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| StartError::Listen {
                    addr: addr.clone(),
                    message: e.to_string(),
                })?;
        }
        // Wait for the listeners to report their bound addresses (or fail: a taken port).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while listen_addrs.len() < self.listen.len() {
            let ev = tokio::time::timeout_at(deadline, swarm.select_next_some()).await;
            match ev {
                Ok(SwarmEvent::NewListenAddr { address, .. }) => {
                    listen_addrs.push(address.with(Protocol::P2p(self.key.peer_id())));
                }
                Ok(SwarmEvent::ListenerError { error, .. })
                | Ok(SwarmEvent::ListenerClosed {
                    reason: Err(error), ..
                }) => {
                    return Err(StartError::Listen {
                        addr: self.listen[listen_addrs.len()].clone(),
                        message: error.to_string(),
                    });
                }
                Ok(_) => {}
                Err(_) => {
                    return Err(StartError::Listen {
                        addr: self.listen[listen_addrs.len()].clone(),
                        message: "no listen address within 5 s".into(),
                    });
                }
            }
        }
        super::swarm::dial_bootstrap(&mut swarm, &self.bootstrap);

        let counters = Arc::new(Counters::default());
        let (events_tx, mut events_rx) = mpsc::channel(EVENT_CAPACITY);
        let (cmd_tx, mut cmd_rx) = mpsc::channel(64);
        let (status_tx, status_rx) = watch::channel(Status::default());
        let (reports, _) = broadcast::channel(1024);
        let banned: Arc<Mutex<BTreeMap<DeviceId, tokio::time::Instant>>> = Arc::default();

        let mut local_tasks: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> =
            Vec::new();
        let metrics_addr = match self.metrics {
            Some(addr) => {
                let (bound, fut) = status::serve_metrics(addr, counters.clone(), status_rx.clone())
                    .await
                    .map_err(|source| StartError::Bind {
                        what: "metrics endpoint",
                        addr: addr.to_string(),
                        source,
                    })?;
                local_tasks.push(Box::pin(fut));
                Some(bound)
            }
            None => None,
        };
        if self.control_socket {
            let path = self.data_dir.join("control.sock");
            let fut = status::serve_control(&path, status_rx.clone()).map_err(|source| {
                StartError::Bind {
                    what: "control socket",
                    addr: path.display().to_string(),
                    source,
                }
            })?;
            local_tasks.push(Box::pin(fut));
        }
        let source: Arc<dyn BlobSource> = match self.source {
            Some(wrap) => wrap(store.clone()),
            None => store.clone(),
        };

        let mut driver = Driver {
            node,
            started: tokio::time::Instant::now(),
            clock: self.clock,
            swarm,
            topic: net::topic(&self.fleet),
            key: self.key,
            device,
            fleet: self.fleet,
            site: self.site,
            origin: self.origin,
            endpoint: endpoint.clone(),
            store: store.clone(),
            counters: counters.clone(),
            banned,
            peers: BTreeMap::new(),
            dialing: BTreeSet::new(),
            remote_ips: BTreeMap::new(),
            gossip: BTreeMap::new(),
            next_gossip: 0,
            fetches: BTreeMap::new(),
            tasks: JoinSet::new(),
            events_tx,
            status_tx,
            reports: reports.clone(),
            runtime: self.runtime,
            state_path,
            manifests: BTreeMap::new(),
            refused: None,
            milestones: Vec::new(),
            data_addr,
            listen_addrs: listen_addrs.clone(),
            server: transfer::Server::new(source, counters.clone(), self.max_uploads),
            kad_bootstrapped: false,
            enrollment: None,
        };
        if let Some((url, registration)) = enroll {
            let (tx, rx) = watch::channel(enroll::EnrollState::Pending {
                attempts: 0,
                last_error: None,
            });
            // Registered, the daemon learns the origin's addresses from the same builder and
            // dials them like the configured ones (a command: the loop stops when the handle
            // goes, whatever this task holds).
            let commands = cmd_tx.downgrade();
            let fleet = driver.fleet.clone();
            driver.tasks.spawn(async move {
                let Some(registered) = enroll::run(url.clone(), registration, fleet, tx).await
                else {
                    return;
                };
                let found = enroll::bootstrap::run(&url, &registered.bootstrap_url, &device).await;
                if let (Some(addrs), Some(commands)) = (found, commands.upgrade()) {
                    let _ = commands.send(Command::Bootstrap { addrs }).await;
                }
            });
            driver.enrollment = Some(rx);
        }
        for fut in local_tasks {
            driver.tasks.spawn(fut);
        }
        driver.spawn_accept_loop();
        let now = driver.now();
        let wall = (driver.clock)();
        driver.node.handle(now, Input::WallClock(wall));
        driver.drain();
        driver.publish_status();

        let enrollment = driver.enrollment.clone();
        let task = tokio::spawn(async move {
            driver.run(&mut events_rx, &mut cmd_rx).await;
        });
        Ok(Handle {
            device,
            data_addr,
            listen_addrs,
            store,
            counters,
            status: status_rx,
            commands: cmd_tx,
            reports,
            task,
            metrics_addr,
            endpoint,
            enrollment,
        })
    }
}
