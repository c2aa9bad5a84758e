//! The core's outputs: one effect per [`Output`], with the results of slow effects (fetches,
//! activation) coming back to the loop as [`Event`]s.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use libp2p::gossipsub;
use shoal_protocol::{DeviceId, ReleaseManifest, ReleaseSeq, encoding};

use super::{Driver, Event, PendingGossip};
use crate::core::{self, Input, Output};
use crate::daemon::handle::PublishError;
use crate::daemon::peer::ControlMsg;
use crate::daemon::transfer::{self, BlobKind, FetchError};

pub(super) fn to_core_error(e: &FetchError) -> core::FetchError {
    match e {
        FetchError::Invalid(_) | FetchError::BadStatus(_) => core::FetchError::DigestMismatch,
        FetchError::NotFound(_) => core::FetchError::NotFound,
        FetchError::Refused | FetchError::Busy => core::FetchError::Busy,
        FetchError::Timeout => core::FetchError::Timeout,
        _ => core::FetchError::Io,
    }
}

impl Driver {
    // ---------------------------------------------------------------- core outputs

    pub(super) fn effect(&mut self, out: Output) {
        match out {
            Output::GossipVerdict { id, verdict } => self.on_verdict(id.0, verdict),
            Output::SyncGossip { peer, messages } => {
                for bytes in messages {
                    self.send_control(&peer, ControlMsg::Gossip { bytes });
                }
            }
            Output::SendBitfield {
                peer,
                sequence,
                have,
            } => self.send_control(
                &peer,
                ControlMsg::Bitfield {
                    sequence,
                    len: have.len(),
                    words: have.words().to_vec(),
                },
            ),
            Output::Advertise { sequence, index } => {
                let targets: Vec<DeviceId> = self
                    .peers
                    .iter()
                    .filter(|(_, p)| p.info.is_some())
                    .map(|(d, _)| *d)
                    .collect();
                for d in targets {
                    self.send_control(&d, ControlMsg::Have { sequence, index });
                }
            }
            Output::FetchManifest {
                peer,
                sequence,
                digest,
                size,
            } => self.fetch_manifest(peer, sequence, digest, size),
            Output::FetchChunk {
                peer,
                sequence,
                index,
                chunk,
            } => self.fetch_chunk(peer, sequence, index, chunk),
            Output::CancelFetch {
                peer,
                sequence,
                index,
            } => {
                if let Some(h) = self.fetches.remove(&(peer, sequence, index)) {
                    h.abort();
                }
            }
            Output::DropPeer { peer, reason } => {
                tracing::info!(peer = %peer.short(), ?reason, "dropping peer");
                self.counters
                    .peers_dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.remove_peer(&peer);
            }
            Output::BanPeer {
                peer,
                reason,
                until,
            } => {
                tracing::warn!(peer = %peer.short(), ?reason, "banning peer");
                let until = self.started + Duration::from_millis(until.as_millis());
                self.banned
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(peer, until);
                if let Some(pid) = crate::daemon::identity::peer_id_of(&peer) {
                    self.swarm.behaviour_mut().gossipsub.blacklist_peer(&pid);
                    let _ = self.swarm.disconnect_peer_id(pid);
                }
                self.remove_peer(&peer);
            }
            Output::Persist(snapshot) => {
                let bytes = encoding::encode(&*snapshot);
                if let Err(e) = crate::daemon::state::write_atomic(&self.state_path, &bytes) {
                    tracing::error!(error = %e, "cannot persist node state");
                }
            }
            Output::Apply { sequence, manifest } => {
                self.manifests.insert(sequence, manifest.clone());
                let runtime = self.runtime.clone();
                let store = self.store.clone();
                let events = self.events_tx.clone();
                self.tasks.spawn(async move {
                    let result = runtime.apply(sequence, manifest, store).await;
                    let _ = events.send(Event::Applied { sequence, result }).await;
                });
            }
            Output::Rollback { from, to } => {
                let runtime = self.runtime.clone();
                self.tasks
                    .spawn(async move { runtime.rollback(from, to).await });
            }
            Output::Report { envelope, report } => {
                tracing::info!(
                    sequence = report.sequence.0,
                    state = report.state.as_str(),
                    "status report"
                );
                self.milestone(report.sequence, report.state.as_str());
                let origins: Vec<DeviceId> = self
                    .peers
                    .iter()
                    .filter(|(_, p)| p.info.as_ref().is_some_and(|i| i.origin))
                    .map(|(d, _)| *d)
                    .collect();
                for d in origins {
                    self.send_control(
                        &d,
                        ControlMsg::Report {
                            envelope: envelope.clone(),
                        },
                    );
                }
                if self.origin {
                    let _ = self.reports.send(report);
                }
                self.publish_status();
            }
            Output::Event(ev) => {
                tracing::info!(event = ?ev, "node event");
                match &ev {
                    core::Event::Announced { sequence } => self.milestone(*sequence, "announced"),
                    core::Event::ManifestAccepted { sequence, .. } => {
                        self.milestone(*sequence, "manifest")
                    }
                    core::Event::Staged { sequence } => self.milestone(*sequence, "staged"),
                    core::Event::Halted { sequence } => self.milestone(*sequence, "halted"),
                    _ => {}
                }
                if let core::Event::Refused { reason, .. } = &ev {
                    self.refused = Some(reason.to_string());
                }
                // Availability peers sent before the announcement was accepted here was dropped
                // by the core: ask for it again.
                if let core::Event::Announced { sequence } = ev {
                    let peers: Vec<DeviceId> = self
                        .peers
                        .iter()
                        .filter(|(_, p)| p.info.is_some())
                        .map(|(d, _)| *d)
                        .collect();
                    for d in peers {
                        self.send_control(&d, ControlMsg::WantBitfield { sequence });
                    }
                }
                self.publish_status();
            }
        }
    }

    pub(super) fn on_verdict(&mut self, id: u64, verdict: core::Verdict) {
        let Some(pending) = self.gossip.remove(&id) else {
            return;
        };
        match pending {
            PendingGossip::Net { id, source } => {
                match verdict {
                    core::Verdict::Accept => &self.counters.gossip_accepted,
                    core::Verdict::Reject => &self.counters.gossip_rejected,
                    core::Verdict::Ignore => &self.counters.gossip_ignored,
                }
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if verdict == core::Verdict::Reject {
                    tracing::info!(from = %source, "gossip message rejected; not forwarded");
                }
                let acceptance = match verdict {
                    core::Verdict::Accept => gossipsub::MessageAcceptance::Accept,
                    core::Verdict::Reject => gossipsub::MessageAcceptance::Reject,
                    core::Verdict::Ignore => gossipsub::MessageAcceptance::Ignore,
                };
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&id, &source, acceptance);
            }
            PendingGossip::Local { bytes, reply } => {
                let result = match verdict {
                    core::Verdict::Accept => {
                        self.gossip_publish(bytes);
                        Ok(())
                    }
                    core::Verdict::Reject => Err(PublishError::Refused("invalid".into())),
                    core::Verdict::Ignore => {
                        Err(PublishError::Refused("ignored (duplicate or stale)".into()))
                    }
                };
                let _ = reply.send(result);
            }
            PendingGossip::Sync => {}
        }
    }

    pub(super) fn fetch_manifest(
        &mut self,
        peer: DeviceId,
        sequence: ReleaseSeq,
        digest: shoal_protocol::Digest,
        size: u64,
    ) {
        let Some(conn) = self.peer_conn(&peer) else {
            self.feed(Input::ManifestFetched {
                peer,
                sequence,
                result: Err(core::FetchError::Io),
            });
            return;
        };
        let (store, counters, events) = (
            self.store.clone(),
            self.counters.clone(),
            self.events_tx.clone(),
        );
        self.tasks.spawn(async move {
            let result = async {
                let local = {
                    let store = store.clone();
                    tokio::task::spawn_blocking(move || store.read(&digest))
                        .await
                        .ok()
                        .and_then(|r| r.ok())
                        .flatten()
                };
                if let Some(bytes) = local {
                    return Ok(Arc::<[u8]>::from(bytes));
                }
                let expected = u32::try_from(size).map_err(|_| core::FetchError::DigestMismatch)?;
                let fetched = transfer::fetch(
                    &conn,
                    &peer,
                    BlobKind::Manifest,
                    &digest,
                    Some(expected),
                    &counters,
                )
                .await
                .map_err(|e| to_core_error(&e))?;
                let raw: Arc<[u8]> = fetched.raw.into();
                let s = store.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    s.put(&digest, fetched.blob.raw_size, &fetched.blob.compressed)
                })
                .await;
                Ok(raw)
            }
            .await;
            let _ = events
                .send(Event::Manifest {
                    peer,
                    sequence,
                    result,
                })
                .await;
        });
    }

    pub(super) fn fetch_chunk(
        &mut self,
        peer: DeviceId,
        sequence: ReleaseSeq,
        index: u32,
        chunk: shoal_protocol::ChunkRef,
    ) {
        if self.store.contains(&chunk.digest) {
            self.feed(Input::ChunkFetched {
                peer,
                sequence,
                index,
                result: Ok(core::FetchStats {
                    bytes: 0,
                    elapsed_ms: 0,
                }),
            });
            return;
        }
        let Some(conn) = self.peer_conn(&peer) else {
            self.feed(Input::ChunkFetched {
                peer,
                sequence,
                index,
                result: Err(core::FetchError::Io),
            });
            return;
        };
        let (store, counters, events) = (
            self.store.clone(),
            self.counters.clone(),
            self.events_tx.clone(),
        );
        let handle = self.tasks.spawn(async move {
            let start = tokio::time::Instant::now();
            let result = match transfer::fetch_chunk_into(&conn, &peer, &store, chunk, &counters).await {
                Ok(_) => Ok(core::FetchStats {
                    bytes: u64::from(chunk.size),
                    elapsed_ms: start.elapsed().as_millis() as u64,
                }),
                Err(e) => {
                    if e.is_peer_fault() {
                        tracing::warn!(peer = %peer.short(), chunk = %chunk.digest.short(), error = %e, "invalid chunk");
                    } else {
                        tracing::debug!(peer = %peer.short(), chunk = %chunk.digest.short(), error = %e, "fetch failed");
                    }
                    Err(to_core_error(&e))
                }
            };
            let _ = events
                .send(Event::Chunk {
                    peer,
                    sequence,
                    index,
                    result,
                })
                .await;
        });
        self.fetches.insert((peer, sequence, index), handle);
    }

    pub(super) fn peer_conn(&self, peer: &DeviceId) -> Option<quinn::Connection> {
        self.peers.get(peer).map(|p| p.conn.clone())
    }

    /// Keeps the blobs of the committed, previous and target releases; evicts the rest.
    pub(super) fn evict(&mut self) {
        let mut keep = BTreeSet::new();
        let committed = self.node.committed();
        // Keep at most the two newest applied manifests (current and previous) plus the target.
        while self.manifests.len() > 2 {
            let Some((&oldest, _)) = self.manifests.iter().next() else {
                break;
            };
            self.manifests.remove(&oldest);
        }
        let mut add = |m: &ReleaseManifest| {
            for c in m.unique_chunks() {
                keep.insert(c.digest);
            }
        };
        for m in self.manifests.values() {
            add(m);
        }
        if let Some(rel) = self.node.release() {
            add(&rel.manifest);
            keep.insert(rel.manifest_digest);
        }
        if committed.is_none() && self.manifests.is_empty() {
            return;
        }
        let store = self.store.clone();
        let stats = store.retain(&keep);
        if stats.blobs > 0 {
            tracing::info!(
                blobs = stats.blobs,
                bytes = stats.bytes,
                "evicted old release blobs"
            );
        }
    }
}
