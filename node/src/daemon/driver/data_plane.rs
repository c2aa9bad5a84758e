//! Data-plane events: QUIC connections accepted and dialed (one per pair of devices, dialed by
//! the lower device id, refused while banned), their control streams opened, their closing
//! (a peer that restarted is dialed again at once), and the results of the tasks the effects
//! spawned (fetches, activation, health) handed to the core.

use std::net::SocketAddr;
use std::sync::Arc;

use shoal_protocol::DeviceId;
use tokio::sync::mpsc;

use super::control::{read_control, write_control};
use super::{CONTROL_CAPACITY, Driver, Event, Peer};
use crate::core::Input;
use crate::daemon::peer::ControlMsg;
use crate::daemon::transfer::{self, AdmitFn};

impl Driver {
    pub(super) fn admit_fn(&self) -> Arc<AdmitFn> {
        let banned = self.banned.clone();
        Arc::new(move |d: &DeviceId| {
            let map = banned.lock().unwrap_or_else(|e| e.into_inner());
            map.get(d)
                .is_none_or(|until| *until <= tokio::time::Instant::now())
        })
    }

    pub(super) fn spawn_accept_loop(&mut self) {
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
                    let Some(device) = crate::daemon::quic::remote_device(&conn) else {
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

    /// Dials `device`'s data plane at `addr`, unless a connection is up or being made, the
    /// device is banned, or it is the one to dial (one connection per pair: the lower device id
    /// dials).
    pub(super) fn dial_data(&mut self, device: DeviceId, addr: SocketAddr) {
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
            match crate::daemon::quic::connect(&endpoint, &key, addr, &device).await {
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

    pub(super) fn on_event(&mut self, ev: Event) {
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

    pub(super) fn on_connected(&mut self, device: DeviceId, conn: quinn::Connection) {
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

    pub(super) fn remove_peer(&mut self, device: &DeviceId) {
        if let Some(p) = self.peers.remove(device) {
            p.conn.close(0u32.into(), b"bye");
            self.counters.forget(device);
            if p.info.is_some() {
                self.feed(Input::PeerDisconnected { peer: *device });
            }
        }
    }

    /// Tells the core of peers whose RTT moved by more than half (and 5 ms) since it last heard.
    pub(super) fn refresh_rtts(&mut self) {
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
}
