//! The daemon's event loop: one [`core::Node`], one libp2p swarm, one QUIC endpoint.
//!
//! Everything reaches the loop as an input — a swarm event ([`swarm`]), a data-plane [`Event`]
//! from a task ([`data_plane`], [`control`]), a [`Command`] from the
//! [`Handle`](super::Handle) ([`commands`]), the core's timer — and after each input the loop
//! drains the core's outputs, carrying out each as one effect ([`effects`]). Effects that take time
//! (fetches, activation) run as tasks in a [`JoinSet`] owned by the loop and come back as events,
//! so the loop never waits on the network or the disk except for [`core::Output::Persist`], which
//! must be durable before the next output. The loop holds no rollout policy: which chunk from
//! which peer, when to ban, when to apply is the core's.
//!
//! Peers: libp2p carries gossip and discovery; when identify shows a peer of our fleet, the side
//! with the lower device id dials the other's data plane (QUIC, TLS bound to the device key), and
//! that one connection carries both chunk requests (either way) and the control stream
//! ([`super::peer`]). A peer reaches the core once its hello arrived.
//!
//! [`start`] sets it all up ([`Launcher::start`](super::Launcher::start)); [`status`] publishes
//! what it sees as the daemon's [`Status`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::futures::StreamExt;
use libp2p::{Multiaddr, Swarm, gossipsub};
use shoal_protocol::{DeviceId, ReleaseManifest, ReleaseSeq, StatusReport};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinSet};

use super::enroll::EnrollState;
use super::handle::{Command, PublishError};
use super::identity::DeviceKey;
use super::launcher::WallClock;
use super::metrics::Counters;
use super::net::Behaviour;
use super::peer::ControlMsg;
use super::runtime::Runtime;
use super::status::{Milestone, Status};
use super::store::Store;
use super::transfer;
use crate::core::{self, Input};

mod commands;
mod control;
mod data_plane;
mod effects;
mod start;
mod status;
mod swarm;

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
    milestones: Vec<Milestone>,
    data_addr: SocketAddr,
    listen_addrs: Vec<Multiaddr>,
    server: transfer::Server,
    kad_bootstrapped: bool,
    enrollment: Option<watch::Receiver<EnrollState>>,
}

impl Driver {
    fn now(&self) -> core::Instant {
        core::Instant(self.started.elapsed().as_millis() as u64)
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
}
