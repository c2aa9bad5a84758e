//! Who reaches whom: endpoints and their latencies, partitions, and opening and closing the
//! connections between devices and to the builder's origin (each side's core hears
//! `PeerConnected` / `PeerDisconnected`; closing a connection cancels its transfers).

use shoal_node_core::{Input, PeerInfo};

use super::{BUILDER, Connection, Event, Sim, nanos};
use crate::net::{Endpoint, Nanos};

impl Sim {
    pub(crate) fn endpoint(i: u32) -> Endpoint {
        if i == BUILDER {
            Endpoint::Builder
        } else {
            Endpoint::Device(i)
        }
    }

    pub(crate) fn peer_id(&self, i: u32) -> shoal_protocol::DeviceId {
        if i == BUILDER {
            self.origin_id
        } else {
            self.devices[i as usize].id
        }
    }

    pub(crate) fn index_of(&self, id: &shoal_protocol::DeviceId) -> Option<u32> {
        if *id == self.origin_id {
            Some(BUILDER)
        } else {
            self.ids.get(id).copied()
        }
    }

    pub(crate) fn site(&self, i: u32) -> Option<u32> {
        (i != BUILDER).then(|| self.devices[i as usize].site)
    }

    /// One-way latency between two endpoints.
    pub(crate) fn latency(&self, a: u32, b: u32) -> Nanos {
        let same = matches!((self.site(a), self.site(b)), (Some(x), Some(y)) if x == y);
        let latency_ms = if same {
            self.scenario.network.lan_latency_ms
        } else {
            self.scenario.network.wan_latency_ms
        };
        nanos(latency_ms / 1000.0).max(1)
    }

    /// Latency of a control message on a reliable stream: a lost packet costs a round trip.
    pub(crate) fn message_delay(&mut self, a: u32, b: u32) -> Nanos {
        let l = self.latency(a, b);
        let same = matches!((self.site(a), self.site(b)), (Some(x), Some(y)) if x == y);
        let loss = if same {
            self.scenario.network.lan_loss
        } else {
            self.scenario.network.wan_loss
        };
        if self.rng.chance(loss) { 3 * l } else { l }
    }

    /// Whether `a` and `b` can reach each other: both online, no partition between them.
    pub(crate) fn reachable(&self, a: u32, b: u32) -> bool {
        let online = |i: u32| i == BUILDER || self.devices[i as usize].online;
        if !online(a) || !online(b) {
            return false;
        }
        match (self.site(a), self.site(b)) {
            (Some(x), Some(y)) if x == y => true,
            (x, y) => {
                !x.is_some_and(|s| self.partitioned[s as usize])
                    && !y.is_some_and(|s| self.partitioned[s as usize])
            }
        }
    }

    pub(crate) fn conn_mut(&mut self, a: u32, b: u32) -> Option<&mut Connection> {
        self.devices[a as usize]
            .connections
            .iter_mut()
            .find(|c| c.peer == b)
    }

    /// Whether `a` has an open connection to `b` (either may be the builder).
    pub(crate) fn connected(&self, a: u32, b: u32) -> bool {
        match (a, b) {
            (BUILDER, BUILDER) => false,
            (BUILDER, d) | (d, BUILDER) => self.devices[d as usize].origin_up,
            (a, b) => self.devices[a as usize]
                .connections
                .iter()
                .any(|c| c.peer == b && c.up),
        }
    }

    pub(crate) fn info(&self, about: u32, rtt: Nanos) -> PeerInfo {
        PeerInfo {
            site: self.site(about).map(|s| format!("site-{s}")),
            rtt_ms: (rtt / 1_000_000).max(1) as u32,
            origin: about == BUILDER,
        }
    }

    /// Open the connection between devices `a` and `b` if they can reach each other.
    pub(crate) fn connect(&mut self, a: u32, b: u32) {
        let now = self.now;
        let ok = self.reachable(a, b)
            && self.devices[a as usize]
                .connections
                .iter()
                .any(|c| c.peer == b && !c.up && c.blocked_until <= now);
        if !ok {
            return;
        }
        for (x, y) in [(a, b), (b, a)] {
            if let Some(c) = self.conn_mut(x, y) {
                c.up = true;
            }
        }
        let rtt = 2 * self.latency(a, b);
        for (x, y) in [(a, b), (b, a)] {
            let peer = self.peer_id(y);
            let info = self.info(y, rtt);
            self.feed(x, Input::PeerConnected { peer, info });
            self.byzantine_hello(y, x);
        }
    }

    /// Open the origin's connection to device `d`.
    pub(crate) fn connect_origin(&mut self, d: u32) {
        if self.devices[d as usize].origin_up || !self.reachable(d, BUILDER) {
            return;
        }
        self.devices[d as usize].origin_up = true;
        for (envelope, healthy) in std::mem::take(&mut self.devices[d as usize].queued_reports) {
            self.send_report(d, envelope, healthy);
        }
        let rtt = 2 * self.latency(d, BUILDER);
        let info = self.info(BUILDER, rtt);
        let peer = self.origin_id;
        self.feed(d, Input::PeerConnected { peer, info });
        let info = self.info(d, rtt);
        let peer = self.devices[d as usize].id;
        self.feed_origin(Input::PeerConnected { peer, info });
    }

    /// A byzantine device claims every chunk to a peer it just connected to.
    pub(crate) fn byzantine_hello(&mut self, byzantine: u32, to: u32) {
        if byzantine == BUILDER
            || self.devices[byzantine as usize].byzantine.is_none()
            || !self.announced
        {
            return;
        }
        let t = self.now + self.latency(byzantine, to);
        let have = Box::new(self.full.clone());
        self.push(
            t,
            Event::Bitfield {
                to,
                from: byzantine,
                have,
            },
        );
    }

    /// Close the connection `a`–`b` (builder included); `block` keeps it closed until then.
    pub(crate) fn disconnect(&mut self, a: u32, b: u32, block: Option<Nanos>) {
        let was = self.connected(a, b);
        if a == BUILDER || b == BUILDER {
            let d = if a == BUILDER { b } else { a };
            self.devices[d as usize].origin_up = false;
        } else {
            for (x, y) in [(a, b), (b, a)] {
                if let Some(c) = self.conn_mut(x, y) {
                    c.up = false;
                    if let Some(until) = block {
                        c.blocked_until = c.blocked_until.max(until);
                    }
                }
            }
        }
        let (ea, eb) = (Self::endpoint(a), Self::endpoint(b));
        let gone = self.net.cancel_where(self.now, |x, y| {
            (x == ea && y == eb) || (x == eb && y == ea)
        });
        for g in gone {
            self.free_transfer(g.tag as u32, false);
        }
        if was {
            for (x, y) in [(a, b), (b, a)] {
                let peer = self.peer_id(y);
                if x == BUILDER {
                    self.feed_origin(Input::PeerDisconnected { peer });
                } else {
                    self.feed(x, Input::PeerDisconnected { peer });
                }
            }
        }
    }
}
