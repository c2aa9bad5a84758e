//! The per-connection control stream ([`crate::daemon::peer`]): the hello that makes a peer known
//! to the core, its bitfields and HAVEs, relayed gossip and status reports; and the tasks that
//! write and read the stream.

use shoal_protocol::{DeviceId, verify};
use tokio::sync::mpsc;

use super::{Driver, Event, PendingGossip};
use crate::core::{self, Input};
use crate::daemon::metrics::PeerClass;
use crate::daemon::peer::{self, ControlMsg};

impl Driver {
    pub(super) fn on_control(&mut self, device: DeviceId, msg: ControlMsg) {
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

    pub(super) fn send_control(&mut self, device: &DeviceId, msg: ControlMsg) {
        let Some(peer) = self.peers.get(device) else {
            return;
        };
        if peer.ctrl.try_send(msg).is_err() {
            tracing::warn!(peer = %device.short(), "control queue full; disconnecting");
            self.remove_peer(device);
        }
    }
}

pub(super) async fn write_control(conn: quinn::Connection, mut rx: mpsc::Receiver<ControlMsg>) {
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

pub(super) async fn read_control(
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
