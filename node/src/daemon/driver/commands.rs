//! Commands from the [`Handle`](crate::daemon::Handle): publish (after the node's own core
//! accepts), seed a release, gossip unchecked, offer a trust root, dial; and bootstrap peers
//! learned from the builder after enrollment.

use super::{Driver, PendingGossip};
use crate::core::{self, Input};
use crate::daemon::handle::{Command, PublishError};

impl Driver {
    pub(super) fn on_command(&mut self, cmd: Command) {
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
            Command::Bootstrap { addrs } => {
                super::swarm::dial_bootstrap(&mut self.swarm, &addrs);
            }
            Command::Shutdown => {}
        }
    }
}
