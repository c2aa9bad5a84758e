//! The control plane on libp2p: gossip of announcements and wave control, and discovery.
//!
//! [`Behaviour`] combines:
//! - **gossipsub** on one topic per fleet ([`topic`]), in strict validation mode with
//!   `validate_messages`: a received message is held until the core's verdict, and only what the
//!   core accepted is forwarded. Message ids are the BLAKE3 of the bytes (so a message relayed by
//!   many peers is one message), transmissions are capped at [`MAX_GOSSIP_BYTES`], and peer
//!   scoring penalises invalid deliveries.
//! - **identify**, whose agent string carries the fleet and the data plane's UDP port
//!   ([`agent_version`], [`parse_agent`]), so two peers can open their QUIC chunk connection;
//! - **Kademlia** (server mode, switchable) fed with identified addresses and the bootstrap
//!   peers;
//! - **mDNS**, switchable, for peers on the same LAN.
//!
//! The transport is libp2p's QUIC (TLS bound to the device key, as on the data plane).

use std::time::Duration;

use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{Swarm, gossipsub, identify, kad, mdns, swarm::NetworkBehaviour};
use shoal_protocol::Digest;

use super::identity::DeviceKey;
use crate::core::GossipMessage;

/// Most bytes of one gossip transmission (an announcement or wave control and framing).
pub const MAX_GOSSIP_BYTES: usize = GossipMessage::MAX_BYTES + 1024;

/// The libp2p behaviours of a node.
#[derive(NetworkBehaviour)]
#[allow(missing_debug_implementations)]
pub struct Behaviour {
    /// Announcements and wave control.
    pub gossipsub: gossipsub::Behaviour,
    /// Agent string exchange (fleet, data-plane port).
    pub identify: identify::Behaviour,
    /// Peer discovery beyond the bootstrap peers.
    pub kad: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
    /// LAN discovery, when enabled.
    pub mdns: Toggle<mdns::tokio::Behaviour>,
}

/// Why the swarm could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// A libp2p component refused its configuration.
    #[error("libp2p setup failed: {0}")]
    Setup(String),
}

/// The gossip topic of a fleet.
pub fn topic(fleet: &str) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("/shoal/{fleet}/gossip/1"))
}

/// The identify agent string: `shoal-node/1 fleet=<fleet> data=<udp port> origin=<0|1>`.
pub fn agent_version(fleet: &str, data_port: u16, origin: bool) -> String {
    format!(
        "shoal-node/1 fleet={fleet} data={data_port} origin={}",
        u8::from(origin)
    )
}

/// What a peer's agent string says: fleet and data-plane port. `None` for another agent.
pub fn parse_agent(agent: &str) -> Option<(String, u16)> {
    let mut parts = agent.split(' ');
    if parts.next()? != "shoal-node/1" {
        return None;
    }
    let mut fleet = None;
    let mut port = None;
    for p in parts {
        if let Some(f) = p.strip_prefix("fleet=") {
            fleet = Some(f.to_string());
        } else if let Some(d) = p.strip_prefix("data=") {
            port = d.parse().ok();
        }
    }
    Some((fleet?, port?))
}

/// Builds the swarm for `key`, subscribed to `fleet`'s topic.
pub fn swarm(
    key: &DeviceKey,
    fleet: &str,
    data_port: u16,
    origin: bool,
    enable_mdns: bool,
    kademlia: bool,
) -> Result<Swarm<Behaviour>, NetError> {
    let setup = |e: &dyn std::fmt::Display| NetError::Setup(e.to_string());
    let agent = agent_version(fleet, data_port, origin);
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key.keypair())
        .with_tokio()
        .with_quic()
        .with_behaviour(|kp| {
            let config = gossipsub::ConfigBuilder::default()
                .validation_mode(gossipsub::ValidationMode::Strict)
                .validate_messages()
                .message_id_fn(|m: &gossipsub::Message| {
                    gossipsub::MessageId::from(Digest::of(&m.data).0.to_vec())
                })
                .max_transmit_size(MAX_GOSSIP_BYTES)
                .heartbeat_interval(Duration::from_millis(500))
                .build()
                .map_err(|e| NetError::Setup(e.to_string()))?;
            let mut gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(kp.clone()),
                config,
            )
            .map_err(|e| NetError::Setup(e.to_string()))?;
            let mut params = gossipsub::PeerScoreParams::default();
            let topic_params = gossipsub::TopicScoreParams {
                invalid_message_deliveries_weight: -100.0,
                invalid_message_deliveries_decay: 0.9,
                ..Default::default()
            };
            params.topics.insert(topic(fleet).hash(), topic_params);
            gossipsub
                .with_peer_score(params, gossipsub::PeerScoreThresholds::default())
                .map_err(|e| NetError::Setup(e.to_string()))?;
            let identify = identify::Behaviour::new(
                identify::Config::new("/shoal/id/1".into(), kp.public())
                    .with_agent_version(agent.clone())
                    .with_interval(Duration::from_secs(60)),
            );
            let peer_id = kp.public().to_peer_id();
            let kad = kademlia.then(|| {
                let mut kad = kad::Behaviour::new(peer_id, kad::store::MemoryStore::new(peer_id));
                kad.set_mode(Some(kad::Mode::Server));
                kad
            });
            let mdns = if enable_mdns {
                Some(
                    mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                        .map_err(|e| NetError::Setup(e.to_string()))?,
                )
            } else {
                None
            };
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Behaviour {
                gossipsub,
                identify,
                kad: kad.into(),
                mdns: mdns.into(),
            })
        })
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&topic(fleet))
        .map_err(|e| setup(&e))?;
    Ok(swarm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_string_round_trip() {
        let a = agent_version("demo", 7401, true);
        assert_eq!(parse_agent(&a), Some(("demo".into(), 7401)));
        assert_eq!(parse_agent("rust-libp2p/0.1"), None);
        assert_eq!(parse_agent("shoal-node/1 fleet=x"), None);
    }
}
