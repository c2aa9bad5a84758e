//! libp2p events: connections (remote addresses, the first Kademlia bootstrap), gossip messages
//! (handed to the core for a verdict), identify (a peer of our fleet gets its data plane
//! dialed) and mDNS discoveries; publishing on the gossip topic; and dialing bootstrap peers
//! ([`dial_bootstrap`]: the configured ones at start, the builder's later).

use std::net::{IpAddr, SocketAddr};

use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, Swarm, gossipsub, identify, mdns};

use super::{Driver, PendingGossip};
use crate::core::Input;
use crate::daemon::identity::device_id_of;
use crate::daemon::net::{self, Behaviour, BehaviourEvent};

/// Dials bootstrap peers (multiaddrs ending in `/p2p/<peer id>`): each address goes into the
/// Kademlia table and is dialed, unless its peer is connected already.
pub(super) fn dial_bootstrap(swarm: &mut Swarm<Behaviour>, addrs: &[Multiaddr]) {
    for addr in addrs {
        let peer = match addr.iter().last() {
            Some(Protocol::P2p(peer)) => Some(peer),
            _ => None,
        };
        if let Some(peer) = peer
            && let Some(kad) = swarm.behaviour_mut().kad.as_mut()
        {
            kad.add_address(&peer, addr.clone());
        }
        if peer.is_some_and(|p| swarm.is_connected(&p)) {
            continue;
        }
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer");
        }
    }
}

impl Driver {
    pub(super) fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
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

    pub(super) fn on_identified(&mut self, peer_id: libp2p::PeerId, info: identify::Info) {
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

    pub(super) fn gossip_publish(&mut self, bytes: Vec<u8>) {
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
}

fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}
