//! The daemon's event loop: one [`core::Node`], one libp2p swarm, one QUIC endpoint.
//!
//! Everything reaches the loop as an input — a swarm event, a data-plane [`Event`] from a task, a
//! [`Command`] from the [`Handle`], the core's timer — and after each input the loop drains the
//! core's outputs, carrying out each as one effect ([`Driver::effect`]). Effects that take time
//! (fetches, activation) run as tasks in a [`JoinSet`] owned by the loop and come back as events,
//! so the loop never waits on the network or the disk except for [`core::Output::Persist`], which
//! must be durable before the next output. The loop holds no rollout policy: which chunk from
//! which peer, when to ban, when to apply is the core's.
//!
//! Peers: libp2p carries gossip and discovery; when identify shows a peer of our fleet, the side
//! with the lower device id dials the other's data plane (QUIC, TLS bound to the device key), and
//! that one connection carries both chunk requests (either way) and the control stream
//! ([`super::peer`]). A peer reaches the core once its hello arrived.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, Swarm, gossipsub, identify, mdns};
use shoal_protocol::{DeviceId, ReleaseManifest, ReleaseSeq, StatusReport, encoding, verify};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinSet};

use super::handle::{
    Builder, Command, Handle, PublishError, Runtime, StartError, Status, WallClock,
};
use super::identity::{DeviceKey, device_id_of};
use super::metrics::{Counters, PeerClass};
use super::net::{self, Behaviour, BehaviourEvent};
use super::peer::{self, ControlMsg};
use super::store::Store;
use super::transfer::{self, AdmitFn, BlobSource};
use crate::core::{self, Input};

mod effects;

/// Capacity of the loop's event channel.
const EVENT_CAPACITY: usize = 4096;
/// Capacity of each peer's outgoing control queue; a peer that falls this far behind is
/// disconnected.
const CONTROL_CAPACITY: usize = 8192;
/// Gossip verdicts awaited at once; older pending ones are dropped.
const MAX_PENDING_GOSSIP: usize = 4096;
/// How often the wall clock is sent to the core again.
const WALL_CLOCK_EVERY: Duration = Duration::from_secs(30);

pub(super) enum Event {
    Connected {
        device: DeviceId,
        conn: quinn::Connection,
    },
    DialFailed {
        device: DeviceId,
    },
    Control {
        device: DeviceId,
        conn_id: usize,
        msg: ControlMsg,
    },
    Closed {
        device: DeviceId,
        conn_id: usize,
        /// The peer reset the connection (a stateless reset: it restarted and lost its state).
        reset: bool,
    },
    Chunk {
        peer: DeviceId,
        sequence: ReleaseSeq,
        index: u32,
        result: Result<core::FetchStats, core::FetchError>,
    },
    Manifest {
        peer: DeviceId,
        sequence: ReleaseSeq,
        result: Result<Arc<[u8]>, core::FetchError>,
    },
    Applied {
        sequence: ReleaseSeq,
        result: Result<(), String>,
    },
    Health {
        sequence: ReleaseSeq,
        healthy: bool,
        detail: String,
    },
}

enum PendingGossip {
    Net {
        id: gossipsub::MessageId,
        source: libp2p::PeerId,
    },
    Local {
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<(), PublishError>>,
    },
    Sync,
}

struct Peer {
    conn: quinn::Connection,
    ctrl: mpsc::Sender<ControlMsg>,
    info: Option<core::PeerInfo>,
}

struct Driver {
    node: core::Node,
    started: tokio::time::Instant,
    clock: WallClock,
    swarm: Swarm<Behaviour>,
    topic: gossipsub::IdentTopic,
    key: DeviceKey,
    device: DeviceId,
    fleet: String,
    site: Option<String>,
    origin: bool,
    endpoint: quinn::Endpoint,
    store: Arc<Store>,
    counters: Arc<Counters>,
    banned: Arc<Mutex<BTreeMap<DeviceId, tokio::time::Instant>>>,
    peers: BTreeMap<DeviceId, Peer>,
    dialing: BTreeSet<DeviceId>,
    remote_ips: BTreeMap<libp2p::PeerId, IpAddr>,
    gossip: BTreeMap<u64, PendingGossip>,
    next_gossip: u64,
    fetches: BTreeMap<(DeviceId, ReleaseSeq, u32), AbortHandle>,
    tasks: JoinSet<()>,
    events_tx: mpsc::Sender<Event>,
    status_tx: watch::Sender<Status>,
    reports: broadcast::Sender<StatusReport>,
    runtime: Arc<dyn Runtime>,
    state_path: std::path::PathBuf,
    manifests: BTreeMap<ReleaseSeq, Arc<ReleaseManifest>>,
    refused: Option<String>,
    milestones: Vec<super::handle::Milestone>,
    data_addr: SocketAddr,
    listen_addrs: Vec<Multiaddr>,
    server: transfer::Server,
    kad_bootstrapped: bool,
    enrollment: Option<watch::Receiver<super::enroll::EnrollState>>,
}

pub(super) async fn start(b: Builder) -> Result<Handle, StartError> {
    super::quic::install_crypto_provider();
    let device = b.key.device_id();
    // A registration the builder will be sent (checked before anything is bound).
    let enroll = match &b.enroll {
        Some(e) => {
            let url = super::enroll::HttpUrl::parse(&e.builder_url).map_err(StartError::Enroll)?;
            let name = e
                .name
                .clone()
                .unwrap_or_else(|| format!("device-{}", device.short()));
            let device_type = e
                .device_type
                .clone()
                .unwrap_or_else(|| format!("generic-{}", b.arch));
            let registration = shoal_protocol::registration::sign_registration(
                &b.key.signing_key(),
                &e.provisioning_key,
                &name,
                b.site.as_deref().unwrap_or(""),
                &b.arch,
                &device_type,
            );
            Some((url, registration))
        }
        None => None,
    };
    std::fs::create_dir_all(&b.data_dir).map_err(|source| StartError::Bind {
        what: "data directory",
        addr: b.data_dir.display().to_string(),
        source,
    })?;
    let store = Arc::new(Store::open(&b.data_dir.join("store"), b.quota_bytes)?);
    let state_path = b.data_dir.join("node-state.bin");
    let snapshot = match std::fs::read(&state_path) {
        Ok(bytes) => Some(
            encoding::decode::<core::Snapshot>(&bytes).map_err(|source| StartError::Snapshot {
                path: state_path.clone(),
                source,
            })?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(super::state::StateError::Io {
                path: state_path,
                source,
            }
            .into());
        }
    };
    let mut config = core::Config::new(b.key.signing_key(), b.trust.clone(), b.arch.clone());
    config.site = b.site.clone();
    config.store_quota_bytes = b.quota_bytes;
    config.origin = b.origin;
    if let Some(tune) = b.tune {
        tune(&mut config);
    }
    let mut node = match snapshot {
        Some(s) => core::Node::resume(config, s, b.seed),
        None => core::Node::new(config, b.seed),
    };
    if !b.trust_chain.is_empty() {
        node.relay_trust_chain(b.trust_chain.clone())
            .map_err(StartError::TrustChain)?;
    }
    if !b.origin {
        // Back to the committed release before anything else happens (a crash may have
        // interrupted an apply); the core then reports the interrupted release as failed.
        if let Err(e) = b.runtime.recover(node.committed(), store.clone()).await {
            tracing::error!(error = %e, "runtime recovery failed");
        }
    }

    let endpoint = super::quic::endpoint(&b.key, b.data_listen)?;
    let data_addr = endpoint.local_addr().map_err(|source| StartError::Bind {
        what: "data plane",
        addr: b.data_listen.to_string(),
        source,
    })?;
    let mut swarm = net::swarm(
        &b.key,
        &b.fleet,
        data_addr.port(),
        b.origin,
        b.mdns,
        b.kademlia,
    )?;
    let mut listen_addrs = Vec::new();
    for addr in &b.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| StartError::Listen {
                addr: addr.clone(),
                message: e.to_string(),
            })?;
    }
    // Wait for the listeners to report their bound addresses (or fail: a taken port).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while listen_addrs.len() < b.listen.len() {
        let ev = tokio::time::timeout_at(deadline, swarm.select_next_some()).await;
        match ev {
            Ok(SwarmEvent::NewListenAddr { address, .. }) => {
                listen_addrs.push(address.with(Protocol::P2p(b.key.peer_id())));
            }
            Ok(SwarmEvent::ListenerError { error, .. })
            | Ok(SwarmEvent::ListenerClosed {
                reason: Err(error), ..
            }) => {
                return Err(StartError::Listen {
                    addr: b.listen[listen_addrs.len()].clone(),
                    message: error.to_string(),
                });
            }
            Ok(_) => {}
            Err(_) => {
                return Err(StartError::Listen {
                    addr: b.listen[listen_addrs.len()].clone(),
                    message: "no listen address within 5 s".into(),
                });
            }
        }
    }
    for addr in &b.bootstrap {
        if let Some(Protocol::P2p(peer)) = addr.iter().last()
            && let Some(kad) = swarm.behaviour_mut().kad.as_mut()
        {
            kad.add_address(&peer, addr.clone());
        }
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer");
        }
    }

    let counters = Arc::new(Counters::default());
    let (events_tx, mut events_rx) = mpsc::channel(EVENT_CAPACITY);
    let (cmd_tx, mut cmd_rx) = mpsc::channel(64);
    let (status_tx, status_rx) = watch::channel(Status::default());
    let (reports, _) = broadcast::channel(1024);
    let banned: Arc<Mutex<BTreeMap<DeviceId, tokio::time::Instant>>> = Arc::default();

    let mut local_tasks: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> =
        Vec::new();
    let metrics_addr = match b.metrics {
        Some(addr) => {
            let (bound, fut) =
                super::local::serve_metrics(addr, counters.clone(), status_rx.clone())
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
    if b.control_socket {
        let path = b.data_dir.join("control.sock");
        let fut = super::local::serve_control(&path, status_rx.clone()).map_err(|source| {
            StartError::Bind {
                what: "control socket",
                addr: path.display().to_string(),
                source,
            }
        })?;
        local_tasks.push(Box::pin(fut));
    }
    let source: Arc<dyn BlobSource> = match b.source {
        Some(wrap) => wrap(store.clone()),
        None => store.clone(),
    };

    let mut driver = Driver {
        node,
        started: tokio::time::Instant::now(),
        clock: b.clock,
        swarm,
        topic: net::topic(&b.fleet),
        key: b.key,
        device,
        fleet: b.fleet,
        site: b.site,
        origin: b.origin,
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
        runtime: b.runtime,
        state_path,
        manifests: BTreeMap::new(),
        refused: None,
        milestones: Vec::new(),
        data_addr,
        listen_addrs: listen_addrs.clone(),
        server: transfer::Server::new(source, counters.clone(), b.max_uploads),
        kad_bootstrapped: false,
        enrollment: None,
    };
    if let Some((url, registration)) = enroll {
        let (tx, rx) = watch::channel(super::enroll::EnrollState::Pending {
            attempts: 0,
            last_error: None,
        });
        driver.tasks.spawn(super::enroll::run(
            url,
            registration,
            driver.fleet.clone(),
            tx,
        ));
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

impl Driver {
    fn now(&self) -> core::Instant {
        core::Instant(self.started.elapsed().as_millis() as u64)
    }

    fn admit_fn(&self) -> Arc<AdmitFn> {
        let banned = self.banned.clone();
        Arc::new(move |d: &DeviceId| {
            let map = banned.lock().unwrap_or_else(|e| e.into_inner());
            map.get(d)
                .is_none_or(|until| *until <= tokio::time::Instant::now())
        })
    }

    fn spawn_accept_loop(&mut self) {
        let endpoint = self.endpoint.clone();
        let admit = self.admit_fn();
        let events = self.events_tx.clone();
        let server = self.server.clone();
        self.tasks.spawn(async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(transfer::MAX_CONNECTIONS));
            while let Some(incoming) = endpoint.accept().await {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    incoming.refuse();
                    continue;
                };
                let (admit, events, server) = (admit.clone(), events.clone(), server.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let Ok(conn) = incoming.await else { return };
                    let Some(device) = super::quic::remote_device(&conn) else {
                        conn.close(1u32.into(), b"no device identity");
                        return;
                    };
                    if !admit(&device) {
                        conn.close(2u32.into(), b"banned");
                        return;
                    }
                    if events
                        .send(Event::Connected {
                            device,
                            conn: conn.clone(),
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    transfer::serve_connection(conn, device, server).await;
                });
            }
        });
    }

    async fn run(
        &mut self,
        events: &mut mpsc::Receiver<Event>,
        cmds: &mut mpsc::Receiver<Command>,
    ) {
        let mut wall_tick = tokio::time::interval(WALL_CLOCK_EVERY);
        let mut status_tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            let wake = self
                .node
                .poll_timeout()
                .map(|t| self.started + Duration::from_millis(t.as_millis()))
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                cmd = cmds.recv() => match cmd {
                    None | Some(Command::Shutdown) => break,
                    Some(cmd) => self.on_command(cmd),
                },
                Some(ev) = events.recv() => self.on_event(ev),
                ev = self.swarm.select_next_some() => self.on_swarm(ev),
                _ = tokio::time::sleep_until(wake) => {
                    let now = self.now();
                    self.node.handle_timeout(now);
                }
                _ = wall_tick.tick() => {
                    if self.kad_bootstrapped
                        && let Some(kad) = self.swarm.behaviour_mut().kad.as_mut()
                    {
                        let _ = kad.bootstrap();
                    }
                    let now = self.now();
                    let wall = (self.clock)();
                    self.node.handle(now, Input::WallClock(wall));
                    self.refresh_rtts();
                }
                _ = status_tick.tick() => self.publish_status(),
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
            }
            self.drain();
        }
        self.publish_status();
        self.endpoint.close(0u32.into(), b"shutdown");
        self.tasks.shutdown().await;
    }

    fn drain(&mut self) {
        while let Some(out) = self.node.poll_output() {
            self.effect(out);
        }
    }

    fn feed(&mut self, input: Input) {
        let now = self.now();
        self.node.handle(now, input);
    }

    fn new_gossip_id(&mut self, pending: PendingGossip) -> core::MessageId {
        if self.gossip.len() >= MAX_PENDING_GOSSIP
            && let Some((&oldest, _)) = self.gossip.iter().next()
        {
            self.gossip.remove(&oldest);
        }
        let id = self.next_gossip;
        self.next_gossip += 1;
        self.gossip.insert(id, pending);
        core::MessageId(id)
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Publish { bytes, reply } => {
                let id = self.new_gossip_id(PendingGossip::Local {
                    bytes: bytes.clone(),
                    reply,
                });
                let from = self.device;
                self.feed(Input::Gossip { from, id, bytes });
            }
            Command::Seed {
                announcement,
                manifest,
                reply,
            } => {
                let now = self.now();
                let result = self
                    .node
                    .seed(now, announcement.clone(), manifest)
                    .map_err(|e| PublishError::Refused(e.to_string()));
                if result.is_ok() {
                    let msg = core::GossipMessage::Announcement(announcement).encode();
                    self.gossip_publish(msg);
                }
                let _ = reply.send(result);
            }
            Command::PublishUnchecked { bytes } => self.gossip_publish(bytes),
            Command::OfferTrustRoot { bytes, reply } => {
                let result = self.node.offer_trust_root(bytes.clone());
                if let Ok(version) = result {
                    tracing::info!(version, "trust root rotated; gossiping the rotation");
                    self.gossip_publish(core::GossipMessage::TrustRoot(bytes).encode());
                }
                let _ = reply.send(result);
            }
            Command::Dial { addr } => {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    tracing::warn!(%addr, error = %e, "dial failed");
                }
            }
            Command::Shutdown => {}
        }
    }

    fn gossip_publish(&mut self, bytes: Vec<u8>) {
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.topic.clone(), bytes)
        {
            Ok(_) | Err(gossipsub::PublishError::Duplicate) => {}
            // Peers that connect later get it through the core's SyncGossip.
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
            Err(e) => tracing::warn!(error = %e, "gossip publish failed"),
        }
    }

    // ---------------------------------------------------------------- libp2p

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                if let Some(ip) = ip_of(endpoint.get_remote_address()) {
                    self.remote_ips.insert(peer_id, ip);
                }
                if !self.kad_bootstrapped
                    && let Some(kad) = self.swarm.behaviour_mut().kad.as_mut()
                {
                    self.kad_bootstrapped = true;
                    let _ = kad.bootstrap();
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.remote_ips.remove(&peer_id);
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "libp2p listening");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                let Some(from) = device_id_of(&propagation_source) else {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .gossipsub
                        .report_message_validation_result(
                            &message_id,
                            &propagation_source,
                            gossipsub::MessageAcceptance::Reject,
                        );
                    return;
                };
                let id = self.new_gossip_id(PendingGossip::Net {
                    id: message_id,
                    source: propagation_source,
                });
                self.feed(Input::Gossip {
                    from,
                    id,
                    bytes: message.data,
                });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => self.on_identified(peer_id, info),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_identified(&mut self, peer_id: libp2p::PeerId, info: identify::Info) {
        let Some((fleet, port)) = net::parse_agent(&info.agent_version) else {
            return;
        };
        if fleet != self.fleet {
            return;
        }
        if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
            for addr in info.listen_addrs.iter().take(8) {
                kad.add_address(&peer_id, addr.clone());
            }
        }
        let Some(device) = device_id_of(&peer_id) else {
            return;
        };
        let Some(ip) = self.remote_ips.get(&peer_id).copied() else {
            return;
        };
        self.dial_data(device, SocketAddr::new(ip, port));
    }

    /// Dials `device`'s data plane at `addr`, unless a connection is up or being made, the
    /// device is banned, or it is the one to dial (one connection per pair: the lower device id
    /// dials).
    fn dial_data(&mut self, device: DeviceId, addr: SocketAddr) {
        if device <= self.device
            || self.peers.contains_key(&device)
            || self.dialing.contains(&device)
            || !(self.admit_fn())(&device)
        {
            return;
        }
        self.dialing.insert(device);
        let (endpoint, key, events) = (
            self.endpoint.clone(),
            self.key.clone(),
            self.events_tx.clone(),
        );
        let server = self.server.clone();
        self.tasks.spawn(async move {
            match super::quic::connect(&endpoint, &key, addr, &device).await {
                Ok(conn) => {
                    if events
                        .send(Event::Connected {
                            device,
                            conn: conn.clone(),
                        })
                        .await
                        .is_ok()
                    {
                        tokio::spawn(transfer::serve_connection(conn, device, server));
                    }
                }
                Err(e) => {
                    tracing::debug!(peer = %device.short(), %addr, error = %e, "data-plane dial failed");
                    let _ = events.send(Event::DialFailed { device }).await;
                }
            }
        });
    }

    // ---------------------------------------------------------------- data plane events

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Connected { device, conn } => self.on_connected(device, conn),
            Event::DialFailed { device } => {
                self.dialing.remove(&device);
            }
            Event::Control {
                device,
                conn_id,
                msg,
            } => {
                if self.peers.get(&device).map(|p| p.conn.stable_id()) == Some(conn_id) {
                    self.on_control(device, msg);
                }
            }
            Event::Closed {
                device,
                conn_id,
                reset,
            } => {
                let Some(peer) = self.peers.get(&device) else {
                    return;
                };
                if peer.conn.stable_id() != conn_id {
                    return;
                }
                // A stateless reset means the peer lost the connection's state: it restarted
                // (on the same address, with the same key; see `quic::endpoint_config`). It is
                // back already, so it is dialed again now rather than at its next identify.
                let addr = peer.conn.remote_address();
                self.remove_peer(&device);
                if reset {
                    self.counters
                        .peer_resets
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(peer = %device.short(), %addr, "peer restarted (data-plane connection reset); reconnecting");
                    self.dial_data(device, addr);
                }
            }
            Event::Chunk {
                peer,
                sequence,
                index,
                result,
            } => {
                self.fetches.remove(&(peer, sequence, index));
                self.feed(Input::ChunkFetched {
                    peer,
                    sequence,
                    index,
                    result,
                });
            }
            Event::Manifest {
                peer,
                sequence,
                result,
            } => self.feed(Input::ManifestFetched {
                peer,
                sequence,
                result,
            }),
            Event::Applied { sequence, result } => {
                let ok = result.is_ok();
                self.feed(Input::ApplyFinished { sequence, result });
                if ok {
                    let runtime = self.runtime.clone();
                    let events = self.events_tx.clone();
                    self.tasks.spawn(async move {
                        let (healthy, detail) = runtime.health(sequence).await;
                        let _ = events
                            .send(Event::Health {
                                sequence,
                                healthy,
                                detail,
                            })
                            .await;
                    });
                }
            }
            Event::Health {
                sequence,
                healthy,
                detail,
            } => {
                self.feed(Input::HealthResult {
                    sequence,
                    healthy,
                    detail,
                });
                if healthy {
                    self.evict();
                }
            }
        }
    }

    fn on_connected(&mut self, device: DeviceId, conn: quinn::Connection) {
        self.dialing.remove(&device);
        if device == self.device {
            conn.close(3u32.into(), b"self");
            return;
        }
        if let Some(old) = self.peers.remove(&device) {
            old.conn.close(4u32.into(), b"replaced");
            if old.info.is_some() {
                self.feed(Input::PeerDisconnected { peer: device });
            }
        }
        let (ctrl, ctrl_rx) = mpsc::channel(CONTROL_CAPACITY);
        let hello = ControlMsg::Hello {
            fleet: self.fleet.clone(),
            site: self.site.clone(),
            origin: self.origin,
        };
        let _ = ctrl.try_send(hello);
        let conn_id = conn.stable_id();
        let events = self.events_tx.clone();
        let c = conn.clone();
        self.tasks.spawn(async move {
            let writer = write_control(c.clone(), ctrl_rx);
            let reader = read_control(c.clone(), device, conn_id, events.clone());
            tokio::select! {
                _ = writer => {}
                _ = reader => {}
                _ = c.closed() => {}
            }
            // Read before closing: closing replaces the reason with `LocallyClosed`.
            let reset = matches!(c.close_reason(), Some(quinn::ConnectionError::Reset));
            c.close(0u32.into(), b"control stream ended");
            let _ = events
                .send(Event::Closed {
                    device,
                    conn_id,
                    reset,
                })
                .await;
        });
        self.peers.insert(
            device,
            Peer {
                conn,
                ctrl,
                info: None,
            },
        );
    }

    fn remove_peer(&mut self, device: &DeviceId) {
        if let Some(p) = self.peers.remove(device) {
            p.conn.close(0u32.into(), b"bye");
            self.counters.forget(device);
            if p.info.is_some() {
                self.feed(Input::PeerDisconnected { peer: *device });
            }
        }
    }

    fn on_control(&mut self, device: DeviceId, msg: ControlMsg) {
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        match msg {
            ControlMsg::Hello {
                fleet,
                site,
                origin,
            } => {
                if fleet != self.fleet {
                    tracing::debug!(peer = %device.short(), %fleet, "peer of another fleet");
                    self.remove_peer(&device);
                    return;
                }
                let class = if origin {
                    PeerClass::Origin
                } else if site.is_some() && site == self.site {
                    PeerClass::Site
                } else {
                    PeerClass::Remote
                };
                self.counters.set_class(device, class);
                let info = core::PeerInfo {
                    site,
                    rtt_ms: u32::try_from(peer.conn.rtt().as_millis()).unwrap_or(u32::MAX),
                    origin,
                };
                peer.info = Some(info.clone());
                self.feed(Input::PeerConnected { peer: device, info });
            }
            _ if peer.info.is_none() => {
                tracing::debug!(peer = %device.short(), "control message before hello");
                self.remove_peer(&device);
            }
            ControlMsg::Bitfield {
                sequence,
                len,
                words,
            } => match core::Bitfield::from_words(len, words) {
                Ok(have) => self.feed(Input::PeerHave {
                    peer: device,
                    sequence,
                    have,
                }),
                Err(e) => {
                    tracing::debug!(peer = %device.short(), error = %e, "malformed bitfield");
                    self.remove_peer(&device);
                }
            },
            ControlMsg::Have { sequence, index } => self.feed(Input::PeerHaveChunk {
                peer: device,
                sequence,
                index,
            }),
            ControlMsg::Gossip { bytes } => {
                let id = self.new_gossip_id(PendingGossip::Sync);
                self.feed(Input::Gossip {
                    from: device,
                    id,
                    bytes,
                });
            }
            ControlMsg::WantBitfield { sequence } => {
                if let (Some(progress), Some(have)) = (self.node.progress(), self.node.have())
                    && progress.sequence == sequence
                {
                    let msg = ControlMsg::Bitfield {
                        sequence,
                        len: have.len(),
                        words: have.words().to_vec(),
                    };
                    self.send_control(&device, msg);
                }
            }
            ControlMsg::Report { envelope } => match verify::status_report(&envelope) {
                Ok(report) => {
                    let _ = self.reports.send(report);
                }
                Err(e) => tracing::debug!(peer = %device.short(), error = %e, "bad status report"),
            },
        }
    }

    /// Tells the core of peers whose RTT moved by more than half (and 5 ms) since it last heard.
    fn refresh_rtts(&mut self) {
        let mut changed = Vec::new();
        for (d, p) in &mut self.peers {
            let Some(info) = &mut p.info else { continue };
            let rtt = u32::try_from(p.conn.rtt().as_millis()).unwrap_or(u32::MAX);
            if rtt.abs_diff(info.rtt_ms) > (info.rtt_ms / 2).max(5) {
                info.rtt_ms = rtt;
                changed.push((*d, info.clone()));
            }
        }
        for (peer, info) in changed {
            self.feed(Input::PeerConnected { peer, info });
        }
    }

    fn send_control(&mut self, device: &DeviceId, msg: ControlMsg) {
        let Some(peer) = self.peers.get(device) else {
            return;
        };
        if peer.ctrl.try_send(msg).is_err() {
            tracing::warn!(peer = %device.short(), "control queue full; disconnecting");
            self.remove_peer(device);
        }
    }
}

fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

async fn write_control(conn: quinn::Connection, mut rx: mpsc::Receiver<ControlMsg>) {
    let Ok(mut send) = conn.open_uni().await else {
        return;
    };
    while let Some(msg) = rx.recv().await {
        if send.write_all(&peer::encode(&msg)).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

async fn read_control(
    conn: quinn::Connection,
    device: DeviceId,
    conn_id: usize,
    events: mpsc::Sender<Event>,
) {
    let Ok(mut recv) = conn.accept_uni().await else {
        return;
    };
    loop {
        match peer::read(&mut recv).await {
            Ok(Some(msg)) => {
                if events
                    .send(Event::Control {
                        device,
                        conn_id,
                        msg,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(peer = %device.short(), error = %e, "control stream failed");
                return;
            }
        }
    }
}
