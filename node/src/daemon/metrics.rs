//! Counters and gauges of a running daemon, rendered in the Prometheus text format.
//!
//! Bytes are counted by peer class — the same site, another site, the builder's origin, or not
//! yet known — so an operator can see how much of a rollout stayed local and how much the
//! builder sent.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use shoal_protocol::DeviceId;

/// How a peer relates to this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum PeerClass {
    /// A device with the same site label.
    Site,
    /// A device on another site (or with no label).
    Remote,
    /// The builder's origin node.
    Origin,
    /// Not yet introduced (no hello received).
    Unknown,
}

impl PeerClass {
    const ALL: [PeerClass; 4] = [
        PeerClass::Site,
        PeerClass::Remote,
        PeerClass::Origin,
        PeerClass::Unknown,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerClass::Site => "site",
            PeerClass::Remote => "remote",
            PeerClass::Origin => "origin",
            PeerClass::Unknown => "unknown",
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// Byte and chunk counters of the data plane, shared by its tasks.
#[derive(Debug, Default)]
pub struct Counters {
    classes: Mutex<BTreeMap<DeviceId, PeerClass>>,
    bytes_in: [AtomicU64; 4],
    bytes_out: [AtomicU64; 4],
    /// Requests answered with a blob.
    pub served: AtomicU64,
    /// Blobs received that verified.
    pub verified: AtomicU64,
    /// Blobs received that did not (wrong digest, size, or frame).
    pub rejected: AtomicU64,
    /// Gossip messages the core accepted (and so were forwarded).
    pub gossip_accepted: AtomicU64,
    /// Gossip messages the core rejected (dropped, sender penalised).
    pub gossip_rejected: AtomicU64,
    /// Gossip messages the core ignored (duplicates, stale).
    pub gossip_ignored: AtomicU64,
    /// Peers the core dropped (too slow, too many failures).
    pub peers_dropped: AtomicU64,
    /// Data-plane connections a peer reset because it restarted and lost their state.
    pub peer_resets: AtomicU64,
}

impl Counters {
    /// Records the class of a peer (on its hello).
    pub fn set_class(&self, peer: DeviceId, class: PeerClass) {
        self.classes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer, class);
    }

    /// Forgets a peer (on disconnect), so the map stays bounded by the connected peers.
    pub fn forget(&self, peer: &DeviceId) {
        self.classes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(peer);
    }

    /// The class of a peer.
    pub fn class_of(&self, peer: &DeviceId) -> PeerClass {
        self.classes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
            .copied()
            .unwrap_or(PeerClass::Unknown)
    }

    /// Counts bytes received from `peer`.
    pub fn add_in(&self, peer: &DeviceId, bytes: u64) {
        self.bytes_in[self.class_of(peer).slot()].fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts bytes sent to `peer`.
    pub fn add_out(&self, peer: &DeviceId, bytes: u64) {
        self.bytes_out[self.class_of(peer).slot()].fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes received, all classes.
    pub fn total_in(&self) -> u64 {
        self.bytes_in
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .sum()
    }

    /// Bytes sent, all classes.
    pub fn total_out(&self) -> u64 {
        self.bytes_out
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .sum()
    }

    /// Bytes received from one class.
    pub fn bytes_in(&self, class: PeerClass) -> u64 {
        self.bytes_in[class.slot()].load(Ordering::Relaxed)
    }

    /// Bytes sent to one class.
    pub fn bytes_out(&self, class: PeerClass) -> u64 {
        self.bytes_out[class.slot()].load(Ordering::Relaxed)
    }
}

/// The gauges the daemon's loop knows, sampled when the endpoint is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Connected data-plane peers.
    pub peers: u64,
    /// Peers currently banned.
    pub banned_peers: u64,
    /// The committed release's sequence.
    pub current_release: Option<u64>,
    /// The release being fetched or staged.
    pub target_release: Option<u64>,
    /// Bytes in the store.
    pub store_bytes: u64,
    /// The store's quota.
    pub store_quota_bytes: u64,
}

/// Renders the Prometheus text exposition.
pub fn render(counters: &Counters, gauges: &Gauges) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        name.to_string()
    };
    let _ = metric(
        "shoal_bytes_in_total",
        "counter",
        "Chunk bytes received (compressed, as on the wire), by peer class.",
    );
    for class in PeerClass::ALL {
        let _ = writeln!(
            out,
            "shoal_bytes_in_total{{class=\"{}\"}} {}",
            class.as_str(),
            counters.bytes_in(class)
        );
    }
    let mut metric = |name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    metric(
        "shoal_bytes_out_total",
        "counter",
        "Chunk bytes sent (compressed, as on the wire), by peer class.",
    );
    for class in PeerClass::ALL {
        let _ = writeln!(
            out,
            "shoal_bytes_out_total{{class=\"{}\"}} {}",
            class.as_str(),
            counters.bytes_out(class)
        );
    }
    let lines: [(&str, &str, &str, Option<u64>); 12] = [
        (
            "shoal_peer_resets_total",
            "counter",
            "Data-plane connections reset by a peer that restarted (each is dialed again).",
            Some(counters.peer_resets.load(Ordering::Relaxed)),
        ),
        (
            "shoal_peers_dropped_total",
            "counter",
            "Peers dropped for serving too slowly or failing too often.",
            Some(counters.peers_dropped.load(Ordering::Relaxed)),
        ),
        (
            "shoal_gossip_accepted_total",
            "counter",
            "Gossip messages accepted and forwarded.",
            Some(counters.gossip_accepted.load(Ordering::Relaxed)),
        ),
        (
            "shoal_gossip_rejected_total",
            "counter",
            "Gossip messages rejected and not forwarded.",
            Some(counters.gossip_rejected.load(Ordering::Relaxed)),
        ),
        (
            "shoal_chunks_verified_total",
            "counter",
            "Blobs received that verified.",
            Some(counters.verified.load(Ordering::Relaxed)),
        ),
        (
            "shoal_chunks_rejected_total",
            "counter",
            "Blobs received that failed verification.",
            Some(counters.rejected.load(Ordering::Relaxed)),
        ),
        (
            "shoal_chunks_served_total",
            "counter",
            "Blobs served to peers.",
            Some(counters.served.load(Ordering::Relaxed)),
        ),
        (
            "shoal_peers",
            "gauge",
            "Connected data-plane peers.",
            Some(gauges.peers),
        ),
        (
            "shoal_banned_peers",
            "gauge",
            "Peers currently banned.",
            Some(gauges.banned_peers),
        ),
        (
            "shoal_current_release",
            "gauge",
            "Sequence of the committed release.",
            gauges.current_release,
        ),
        (
            "shoal_target_release",
            "gauge",
            "Sequence of the release being fetched or staged.",
            gauges.target_release,
        ),
        (
            "shoal_store_bytes",
            "gauge",
            "Bytes held by the chunk store.",
            Some(gauges.store_bytes),
        ),
    ];
    for (name, kind, help, value) in lines {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        if let Some(v) = value {
            let _ = writeln!(out, "{name} {v}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP shoal_store_quota_bytes The chunk store's quota.\n# TYPE shoal_store_quota_bytes gauge\nshoal_store_quota_bytes {}",
        gauges.store_quota_bytes
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_counted_by_class_and_rendered() {
        let c = Counters::default();
        let a = DeviceId([1; 32]);
        let b = DeviceId([2; 32]);
        c.set_class(a, PeerClass::Origin);
        c.add_out(&a, 100);
        c.add_in(&b, 7);
        assert_eq!(c.bytes_out(PeerClass::Origin), 100);
        assert_eq!(c.bytes_in(PeerClass::Unknown), 7);
        let text = render(
            &c,
            &Gauges {
                peers: 2,
                target_release: Some(5),
                ..Gauges::default()
            },
        );
        assert!(
            text.contains("shoal_bytes_out_total{class=\"origin\"} 100\n"),
            "{text}"
        );
        assert!(
            text.contains("shoal_bytes_in_total{class=\"unknown\"} 7\n"),
            "{text}"
        );
        assert!(text.contains("shoal_peers 2\n"), "{text}");
        assert!(text.contains("shoal_target_release 5\n"), "{text}");
        assert!(!text.contains("shoal_current_release 0"), "{text}");
    }
}
