//! Counters and gauges of a running daemon, rendered by prometheus-client in the OpenMetrics
//! text format (which Prometheus scrapes): the data plane counts into [`Counters`], the loop's
//! state is sampled as [`Gauges`] when the endpoint is read, and [`render`] encodes both as one
//! scrape's constant metrics.
//!
//! Bytes are counted by peer class — the same site, another site, the builder's origin, or not
//! yet known — so an operator can see how much of a rollout stayed local and how much the
//! builder sent.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
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

/// One scrape's values, encoded by prometheus-client as constant metrics.
#[derive(Debug)]
struct Sample {
    bytes_in: [u64; 4],
    bytes_out: [u64; 4],
    counters: [(&'static str, &'static str, u64); 7],
    gauges: [(&'static str, &'static str, Option<u64>); 6],
}

impl Sample {
    fn of(c: &Counters, g: &Gauges) -> Sample {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Sample {
            bytes_in: PeerClass::ALL.map(|class| c.bytes_in(class)),
            bytes_out: PeerClass::ALL.map(|class| c.bytes_out(class)),
            // Counter names without `_total`: the encoder appends it.
            counters: [
                (
                    "shoal_peer_resets",
                    "Data-plane connections reset by a peer that restarted (each is dialed again).",
                    load(&c.peer_resets),
                ),
                (
                    "shoal_peers_dropped",
                    "Peers dropped for serving too slowly or failing too often.",
                    load(&c.peers_dropped),
                ),
                (
                    "shoal_gossip_accepted",
                    "Gossip messages accepted and forwarded.",
                    load(&c.gossip_accepted),
                ),
                (
                    "shoal_gossip_rejected",
                    "Gossip messages rejected and not forwarded.",
                    load(&c.gossip_rejected),
                ),
                (
                    "shoal_chunks_verified",
                    "Blobs received that verified.",
                    load(&c.verified),
                ),
                (
                    "shoal_chunks_rejected",
                    "Blobs received that failed verification.",
                    load(&c.rejected),
                ),
                (
                    "shoal_chunks_served",
                    "Blobs served to peers.",
                    load(&c.served),
                ),
            ],
            gauges: [
                ("shoal_peers", "Connected data-plane peers.", Some(g.peers)),
                (
                    "shoal_banned_peers",
                    "Peers currently banned.",
                    Some(g.banned_peers),
                ),
                (
                    "shoal_current_release",
                    "Sequence of the committed release.",
                    g.current_release,
                ),
                (
                    "shoal_target_release",
                    "Sequence of the release being fetched or staged.",
                    g.target_release,
                ),
                (
                    "shoal_store_bytes",
                    "Bytes held by the chunk store.",
                    Some(g.store_bytes),
                ),
                (
                    "shoal_store_quota_bytes",
                    "The chunk store's quota.",
                    Some(g.store_quota_bytes),
                ),
            ],
        }
    }
}

impl Collector for Sample {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, values) in [
            (
                "shoal_bytes_in",
                "Chunk bytes received (compressed, as on the wire), by peer class.",
                &self.bytes_in,
            ),
            (
                "shoal_bytes_out",
                "Chunk bytes sent (compressed, as on the wire), by peer class.",
                &self.bytes_out,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (class, value) in PeerClass::ALL.iter().zip(values) {
                let labels = [("class", class.as_str())];
                ConstCounter::new(*value).encode(family.encode_family(&labels)?)?;
            }
        }
        for (name, help, value) in self.counters {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)?;
        }
        for (name, help, value) in self.gauges {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            // A release not known yet has no sample (rather than a misleading 0).
            if let Some(v) = value {
                ConstGauge::new(v).encode(metric)?;
            }
        }
        Ok(())
    }
}

/// Renders the OpenMetrics text exposition (which Prometheus reads).
pub fn render(counters: &Counters, gauges: &Gauges) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Sample::of(counters, gauges)));
    let mut out = String::new();
    // Writing to a String cannot fail, and every name above is valid.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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
