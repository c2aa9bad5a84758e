//! Flow-level network model in virtual time.
//!
//! Bytes move as *flows*, not packets. Every ordered pair of endpoints that has chunk transfers
//! outstanding is one flow (a connection with pipelined requests): its transfers are served one
//! after another, first in first out, at the flow's rate. A flow crosses a fixed path of
//! capacity-limited links:
//!
//! - device → device on the same site: sender up, receiver down (the site LAN is a non-blocking
//!   switch whose port speed caps every device's up and down);
//! - device → device across sites: sender up, sender site WAN up, receiver site WAN down,
//!   receiver down;
//! - builder → device: builder up, receiver site WAN down, receiver down.
//!
//! Rates are max-min fair by progressive filling, recomputed only when the set of flows changes,
//! and then only around the change: the flows that share a link with a flow that started, ended
//! or changed its cap are refilled together, over what the other flows leave on their links (the
//! other flows keep their rates). All changes of one instant are batched into one refill
//! ([`Net::flush`]). This is exact for the flows next to a change and never allocates more than a
//! link's capacity; capacity freed two hops away is picked up at the next change that reaches it.
//! Completion events live in a priority queue; a rate change reschedules the flow's head
//! transfer and leaves the stale event to be skipped when popped.
//!
//! Chunk streams are reliable (QUIC retransmits); loss applies to control messages, which the
//! driver models, not to flows. A per-flow rate cap models a peer that trickles bytes.

use std::cmp::Reverse;
use std::collections::VecDeque;

use dary_heap::QuaternaryHeap;
use rustc_hash::FxHashMap as HashMap;

/// Virtual time in nanoseconds.
pub type Nanos = u64;

/// One second in [`Nanos`].
pub const SECOND: Nanos = 1_000_000_000;

/// Who sends or receives a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// The builder's origin.
    Builder,
    /// Device by index.
    Device(u32),
}

/// Capacities of the modelled network, in bytes per second.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// Builder uplink.
    pub builder_up: f64,
    /// Per site: (WAN up, WAN down).
    pub sites: Vec<(f64, f64)>,
    /// Per device: (site, up, down), the caps already combined with the LAN port speed.
    pub devices: Vec<(u32, f64, f64)>,
}

/// A finished transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    /// Sender.
    pub from: Endpoint,
    /// Receiver.
    pub to: Endpoint,
    /// The caller's tag given at [`Net::start`].
    pub tag: u64,
}

#[derive(Debug, Clone)]
struct Transfer {
    tag: u64,
    bytes_left: f64,
}

const NONE: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Flow {
    from: Endpoint,
    to: Endpoint,
    links: [u32; 4],
    nlinks: u8,
    /// Position of this flow in each of its links' flow lists.
    link_pos: [u32; 4],
    /// Epoch of the last refill that included it.
    mark: u32,
    rate: f64,
    cap: f64,
    queue: VecDeque<Transfer>,
    since: Nanos,
    version: u32,
    /// When the queued completion event of the head fires (`Nanos::MAX`: none queued).
    due: Nanos,
    /// Site whose WAN down this flow crosses, for ingress accounting.
    ingress_site: u32,
    live: bool,
}

#[derive(Debug, Clone, Copy)]
struct FlowLinks {
    from: Endpoint,
    to: Endpoint,
    links: [u32; 4],
    link_pos: [u32; 4],
    nlinks: u8,
    rate: f64,
}

impl Flow {
    fn clone_links(&self) -> FlowLinks {
        FlowLinks {
            from: self.from,
            to: self.to,
            links: self.links,
            link_pos: self.link_pos,
            nlinks: self.nlinks,
            rate: self.rate,
        }
    }
}

/// Byte counters of the run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// Bytes the builder sent (including transfers cancelled midway).
    pub builder_egress: f64,
    /// Bytes that entered each site over its WAN down.
    pub site_ingress: Vec<f64>,
    /// Bytes moved by all flows.
    pub total: f64,
    /// Refills (one per instant with changes).
    pub recomputes: u64,
    /// Flows refilled, summed over refills.
    pub refilled_flows: u64,
}

/// The network: flows, rates and completion events.
#[derive(Debug)]
pub struct Net {
    caps: Vec<f64>,
    /// Sum of the rates of the flows on each link.
    used: Vec<f64>,
    /// Flows on each link.
    link_flows: Vec<Vec<u32>>,
    link_dirty: Vec<bool>,
    dirty_links: Vec<u32>,
    device_site: Vec<u32>,
    nsites: u32,
    flows: Vec<Flow>,
    free: Vec<u32>,
    pairs: HashMap<(Endpoint, Endpoint), u32>,
    /// Completion events, earliest first: (time, flow, version).
    events: QuaternaryHeap<Reverse<(Nanos, u32, u32)>>,
    counters: Counters,
    scratch: Scratch,
    epoch: u32,
}

#[derive(Debug, Default)]
struct Scratch {
    /// The flows of the refill, by position.
    flows: Vec<u32>,
    /// Per link: its row in [`Scratch::row_start`] (touched links only).
    link_row: Vec<u32>,
    /// Per row: where the next flow position goes while the rows are filled.
    row_fill: Vec<u32>,
    /// Per link: the capacity left to share.
    remaining: Vec<f64>,
    /// Per link: the refill's flows on it not frozen yet.
    unfrozen: Vec<u32>,
    /// Per link: the refill (`epoch`) that last touched it.
    seen_in: Vec<u32>,
    epoch: u32,
    /// The links of this refill.
    touched: Vec<u32>,
    /// Per row (touched link): where its flow positions start in [`Scratch::rows`] (CSR).
    row_start: Vec<u32>,
    /// Flow positions, row by row.
    rows: Vec<u32>,
    /// Per flow position: its new rate.
    rate: Vec<f64>,
    /// Per flow position: whether its rate is set.
    frozen: Vec<bool>,
    /// Filling levels, lowest first: (share, link or `CAP_BIT | flow position`).
    heap: QuaternaryHeap<Reverse<(OrdF64, u32)>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct OrdF64(f64);
impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Entries of the filling heap: links have their index, caps have `CAP_BIT | flow position`.
const CAP_BIT: u32 = 1 << 31;

impl Net {
    /// A network with no flows.
    pub fn new(topo: &Topology) -> Net {
        let nsites = topo.sites.len() as u32;
        let mut caps = vec![topo.builder_up];
        for &(up, down) in &topo.sites {
            caps.push(up);
            caps.push(down);
        }
        for &(_, up, down) in &topo.devices {
            caps.push(up);
            caps.push(down);
        }
        let nlinks = caps.len();
        Net {
            used: vec![0.0; nlinks],
            link_flows: vec![Vec::new(); nlinks],
            link_dirty: vec![false; nlinks],
            dirty_links: Vec::new(),
            caps,
            device_site: topo.devices.iter().map(|d| d.0).collect(),
            nsites,
            flows: Vec::new(),
            free: Vec::new(),
            pairs: HashMap::default(),
            events: QuaternaryHeap::new(),
            counters: Counters {
                site_ingress: vec![0.0; nsites as usize],
                ..Counters::default()
            },
            epoch: 0,
            scratch: Scratch {
                link_row: vec![0; nlinks],
                seen_in: vec![0; nlinks],
                remaining: vec![0.0; nlinks],
                unfrozen: vec![0; nlinks],
                ..Scratch::default()
            },
        }
    }

    fn wan_up(&self, site: u32) -> u32 {
        1 + 2 * site
    }
    fn wan_down(&self, site: u32) -> u32 {
        2 + 2 * site
    }
    fn dev_up(&self, d: u32) -> u32 {
        1 + 2 * self.nsites + 2 * d
    }
    fn dev_down(&self, d: u32) -> u32 {
        2 + 2 * self.nsites + 2 * d
    }

    /// The site of a device endpoint.
    pub fn site_of(&self, e: Endpoint) -> Option<u32> {
        match e {
            Endpoint::Builder => None,
            Endpoint::Device(d) => self.device_site.get(d as usize).copied(),
        }
    }

    fn mark_links(&mut self, fi: u32) {
        let f = &self.flows[fi as usize];
        for &l in &f.links[..f.nlinks as usize] {
            if !self.link_dirty[l as usize] {
                self.link_dirty[l as usize] = true;
                self.dirty_links.push(l);
            }
        }
    }

    /// Queue a transfer of `bytes` from `from` to `to`, tagged `tag`; `cap` limits the pair's
    /// rate (bytes/s; a trickling sender). The transfer starts when the pair's earlier transfers
    /// are done. Sending to oneself or between unknown endpoints is ignored and returns false.
    pub fn start(
        &mut self,
        now: Nanos,
        from: Endpoint,
        to: Endpoint,
        bytes: u64,
        tag: u64,
        cap: f64,
    ) -> bool {
        if from == to || matches!(to, Endpoint::Builder) {
            return false;
        }
        let known = |e: Endpoint| match e {
            Endpoint::Builder => true,
            Endpoint::Device(d) => (d as usize) < self.device_site.len(),
        };
        if !known(from) || !known(to) {
            return false;
        }
        let t = Transfer {
            tag,
            bytes_left: bytes.max(1) as f64,
        };
        if let Some(&fi) = self.pairs.get(&(from, to)) {
            let f = &mut self.flows[fi as usize];
            if cap < f.cap {
                f.cap = cap;
                self.mark_links(fi);
            }
            self.flows[fi as usize].queue.push_back(t);
            return true;
        }
        let Endpoint::Device(dst) = to else {
            return false;
        };
        let dst_site = self.device_site[dst as usize];
        let mut links = [0u32; 4];
        let (n, ingress) = match from {
            Endpoint::Builder => {
                links[0] = 0;
                links[1] = self.wan_down(dst_site);
                links[2] = self.dev_down(dst);
                (3, dst_site)
            }
            Endpoint::Device(src) => {
                let src_site = self.device_site[src as usize];
                if src_site == dst_site {
                    links[0] = self.dev_up(src);
                    links[1] = self.dev_down(dst);
                    (2, NONE)
                } else {
                    links[0] = self.dev_up(src);
                    links[1] = self.wan_up(src_site);
                    links[2] = self.wan_down(dst_site);
                    links[3] = self.dev_down(dst);
                    (4, dst_site)
                }
            }
        };
        let mut link_pos = [0u32; 4];
        for k in 0..n as usize {
            link_pos[k] = self.link_flows[links[k] as usize].len() as u32;
        }
        let flow = Flow {
            from,
            to,
            links,
            nlinks: n,
            link_pos,
            mark: 0,
            rate: 0.0,
            cap,
            queue: VecDeque::from([t]),
            since: now,
            version: 0,
            due: Nanos::MAX,
            ingress_site: ingress,
            live: true,
        };
        let fi = match self.free.pop() {
            Some(i) => {
                let v = self.flows[i as usize].version;
                self.flows[i as usize] = Flow {
                    version: v.wrapping_add(1),
                    ..flow
                };
                i
            }
            None => {
                self.flows.push(flow);
                self.flows.len() as u32 - 1
            }
        };
        for &l in &links[..n as usize] {
            self.link_flows[l as usize].push(fi);
        }
        self.pairs.insert((from, to), fi);
        self.mark_links(fi);
        true
    }

    /// Account the bytes a flow moved since it was last settled.
    fn settle(&mut self, fi: u32, now: Nanos) {
        let f = &mut self.flows[fi as usize];
        let dt = now.saturating_sub(f.since) as f64 / SECOND as f64;
        f.since = now;
        if f.rate <= 0.0 || dt <= 0.0 {
            return;
        }
        let Some(head) = f.queue.front_mut() else {
            return;
        };
        let moved = (f.rate * dt).min(head.bytes_left);
        head.bytes_left -= moved;
        self.counters.total += moved;
        if f.from == Endpoint::Builder {
            self.counters.builder_egress += moved;
        }
        if f.ingress_site != NONE {
            self.counters.site_ingress[f.ingress_site as usize] += moved;
        }
    }

    /// (Re)schedule the completion of a flow's head. A new event is queued only when the head
    /// changed (`force`) or the new finish is meaningfully earlier (by more than 1% of the time
    /// left) than the queued one; otherwise the queued event stays and, if it fires before the
    /// head is done (the rate went down), [`Net::pop_done`] queues the real finish then. This
    /// keeps the queue from filling with stale entries when many flows share a busy link; a
    /// head can finish up to 1% of its remaining time late.
    fn schedule(&mut self, fi: u32, now: Nanos, force: bool) {
        let f = &mut self.flows[fi as usize];
        let Some(head) = f.queue.front().filter(|_| f.rate > 0.0) else {
            f.version = f.version.wrapping_add(1);
            f.due = Nanos::MAX;
            return;
        };
        let secs = head.bytes_left / f.rate;
        let dt = if secs > 1e9 {
            u64::MAX / 4
        } else {
            (secs * SECOND as f64).ceil() as u64
        };
        let t = now.saturating_add(dt);
        let slack = f.due.saturating_sub(now) / 100;
        if force || t < f.due.saturating_sub(slack) {
            f.version = f.version.wrapping_add(1);
            f.due = t;
            self.events.push(Reverse((t, fi, f.version)));
        }
    }

    fn remove_flow(&mut self, fi: u32) {
        self.mark_links(fi);
        let f = self.flows[fi as usize].clone_links();
        for k in 0..f.nlinks as usize {
            let l = f.links[k] as usize;
            self.used[l] = (self.used[l] - f.rate).max(0.0);
            let list = &mut self.link_flows[l];
            let pos = f.link_pos[k] as usize;
            list.swap_remove(pos);
            if let Some(&moved) = list.get(pos) {
                let m = &mut self.flows[moved as usize];
                for j in 0..m.nlinks as usize {
                    if m.links[j] as usize == l {
                        m.link_pos[j] = pos as u32;
                    }
                }
            }
        }
        self.pairs.remove(&(f.from, f.to));
        let f = &mut self.flows[fi as usize];
        f.live = false;
        f.queue.clear();
        f.rate = 0.0;
        f.version = f.version.wrapping_add(1);
        self.free.push(fi);
    }

    /// Cancel one queued or running transfer; returns whether it existed.
    pub fn cancel(&mut self, now: Nanos, from: Endpoint, to: Endpoint, tag: u64) -> bool {
        let Some(&fi) = self.pairs.get(&(from, to)) else {
            return false;
        };
        let Some(pos) = self.flows[fi as usize]
            .queue
            .iter()
            .position(|t| t.tag == tag)
        else {
            return false;
        };
        if pos == 0 {
            self.settle(fi, now);
            self.flows[fi as usize].queue.pop_front();
            if self.flows[fi as usize].queue.is_empty() {
                self.remove_flow(fi);
            } else {
                self.schedule(fi, now, true);
            }
        } else {
            self.flows[fi as usize].queue.remove(pos);
        }
        true
    }

    /// Cancel every transfer matching `pred(from, to)`; returns them, sorted for determinism.
    pub fn cancel_where(
        &mut self,
        now: Nanos,
        mut pred: impl FnMut(Endpoint, Endpoint) -> bool,
    ) -> Vec<Done> {
        let mut hit: Vec<u32> = self
            .pairs
            .iter()
            .filter(|((a, b), _)| pred(*a, *b))
            .map(|(_, &fi)| fi)
            .collect();
        hit.sort_unstable_by_key(|&fi| (self.flows[fi as usize].from, self.flows[fi as usize].to));
        let mut out = Vec::new();
        for fi in hit {
            self.settle(fi, now);
            let f = &self.flows[fi as usize];
            out.extend(f.queue.iter().map(|t| Done {
                from: f.from,
                to: f.to,
                tag: t.tag,
            }));
            self.remove_flow(fi);
        }
        out
    }

    /// Whether a rate recomputation is pending.
    pub fn is_dirty(&self) -> bool {
        !self.dirty_links.is_empty()
    }

    /// Refill the flows on every link touched by a change since the last flush.
    pub fn flush(&mut self, now: Nanos) {
        if self.dirty_links.is_empty() {
            return;
        }
        self.epoch = self.epoch.wrapping_add(1);
        let epoch = self.epoch;
        let mut flows = std::mem::take(&mut self.scratch.flows);
        flows.clear();
        let dirty = std::mem::take(&mut self.dirty_links);
        for &l in &dirty {
            self.link_dirty[l as usize] = false;
            for &fi in &self.link_flows[l as usize] {
                let f = &mut self.flows[fi as usize];
                if f.mark != epoch {
                    f.mark = epoch;
                    flows.push(fi);
                }
            }
        }
        self.dirty_links = dirty;
        self.dirty_links.clear();
        flows.sort_unstable();
        // Take the refilled flows' own use off their links: what is left is what they share.
        for &fi in &flows {
            let f = &self.flows[fi as usize];
            for &l in &f.links[..f.nlinks as usize] {
                self.used[l as usize] -= f.rate;
            }
        }
        self.fill(&flows, now);
        for &fi in &flows {
            let f = &self.flows[fi as usize];
            for &l in &f.links[..f.nlinks as usize] {
                self.used[l as usize] = (self.used[l as usize] + f.rate).max(0.0);
            }
        }
        self.counters.refilled_flows += flows.len() as u64;
        self.scratch.flows = flows;
    }

    /// Progressive filling over `flows`, sharing what the other flows leave on each link.
    fn fill(&mut self, flows: &[u32], now: Nanos) {
        self.counters.recomputes += 1;
        let scratch = &mut self.scratch;
        scratch.epoch = scratch.epoch.wrapping_add(1);
        let epoch = scratch.epoch;
        scratch.touched.clear();
        for &fi in flows {
            let f = &self.flows[fi as usize];
            for &l in &f.links[..f.nlinks as usize] {
                let li = l as usize;
                if scratch.seen_in[li] != epoch {
                    scratch.seen_in[li] = epoch;
                    scratch.remaining[li] = (self.caps[li] - self.used[li]).max(0.0);
                    scratch.unfrozen[li] = 0;
                    scratch.touched.push(l);
                }
                scratch.unfrozen[li] += 1;
            }
        }
        // Adjacency (link -> flow positions), CSR over the touched links.
        scratch.row_start.clear();
        let mut acc = 0u32;
        for &l in &scratch.touched {
            scratch.link_row[l as usize] = scratch.row_start.len() as u32;
            scratch.row_start.push(acc);
            acc += scratch.unfrozen[l as usize];
        }
        scratch.row_start.push(acc);
        scratch.rows.clear();
        scratch.rows.resize(acc as usize, 0);
        scratch.row_fill.clear();
        scratch
            .row_fill
            .extend_from_slice(&scratch.row_start[..scratch.row_start.len() - 1]);
        for (i, &fi) in flows.iter().enumerate() {
            let f = &self.flows[fi as usize];
            for &l in &f.links[..f.nlinks as usize] {
                let p = scratch.link_row[l as usize] as usize;
                scratch.rows[scratch.row_fill[p] as usize] = i as u32;
                scratch.row_fill[p] += 1;
            }
        }
        scratch.rate.clear();
        scratch.rate.resize(flows.len(), 0.0);
        scratch.frozen.clear();
        scratch.frozen.resize(flows.len(), false);
        scratch.heap.clear();
        for &l in &scratch.touched {
            let li = l as usize;
            scratch.heap.push(Reverse((
                OrdF64(scratch.remaining[li] / f64::from(scratch.unfrozen[li])),
                l,
            )));
        }
        for (i, &fi) in flows.iter().enumerate() {
            let cap = self.flows[fi as usize].cap;
            if cap.is_finite() {
                scratch
                    .heap
                    .push(Reverse((OrdF64(cap), CAP_BIT | i as u32)));
            }
        }
        let mut remaining = flows.len();
        while remaining > 0 {
            let Some(Reverse((OrdF64(share), e))) = scratch.heap.pop() else {
                break;
            };
            let freeze = |i: usize, r: f64, scratch: &mut Scratch| {
                scratch.frozen[i] = true;
                scratch.rate[i] = r;
                let f = &self.flows[flows[i] as usize];
                for &l in &f.links[..f.nlinks as usize] {
                    scratch.remaining[l as usize] = (scratch.remaining[l as usize] - r).max(0.0);
                    scratch.unfrozen[l as usize] -= 1;
                }
            };
            if e & CAP_BIT != 0 {
                let i = (e & !CAP_BIT) as usize;
                if !scratch.frozen[i] {
                    freeze(i, share, scratch);
                    remaining -= 1;
                }
                continue;
            }
            let li = e as usize;
            if scratch.unfrozen[li] == 0 {
                continue;
            }
            let actual = scratch.remaining[li] / f64::from(scratch.unfrozen[li]);
            if actual > share * (1.0 + 1e-12) + 1e-9 {
                scratch.heap.push(Reverse((OrdF64(actual), e)));
                continue;
            }
            let p = scratch.link_row[li] as usize;
            let (a, b) = (
                scratch.row_start[p] as usize,
                scratch.row_start[p + 1] as usize,
            );
            for k in a..b {
                let i = scratch.rows[k] as usize;
                if !scratch.frozen[i] {
                    freeze(i, actual, scratch);
                    remaining -= 1;
                }
            }
        }
        for (i, &fi) in flows.iter().enumerate() {
            let new = self.scratch.rate[i];
            let old = self.flows[fi as usize].rate;
            if (new - old).abs() > 1e-9 * new.max(old) || (old == 0.0 && new > 0.0) {
                self.settle(fi, now);
                self.flows[fi as usize].rate = new;
                self.schedule(fi, now, false);
            }
        }
    }

    /// Time of the next completion, dropping stale events.
    pub fn next_time(&mut self) -> Option<Nanos> {
        while let Some(&Reverse((t, fi, v))) = self.events.peek() {
            let f = &self.flows[fi as usize];
            if f.live && f.version == v {
                return Some(t);
            }
            self.events.pop();
        }
        None
    }

    /// The next transfer finishing at or before `now`, if any.
    pub fn pop_done(&mut self, now: Nanos) -> Option<Done> {
        let t = self.next_time()?;
        if t > now {
            return None;
        }
        let Reverse((_, fi, _)) = self.events.pop()?;
        self.settle(fi, now);
        if self.flows[fi as usize]
            .queue
            .front()
            .is_some_and(|h| h.bytes_left > 0.5)
        {
            // The rate went down since this event was queued: not done yet.
            self.schedule(fi, now, true);
            return None;
        }
        let f = &mut self.flows[fi as usize];
        let head = f.queue.pop_front()?;
        let done = Done {
            from: f.from,
            to: f.to,
            tag: head.tag,
        };
        if f.queue.is_empty() {
            self.remove_flow(fi);
        } else {
            self.schedule(fi, now, true);
        }
        Some(done)
    }

    /// Current rate of the pair's flow in bytes/s, if it exists.
    pub fn rate(&self, from: Endpoint, to: Endpoint) -> Option<f64> {
        self.pairs
            .get(&(from, to))
            .map(|&fi| self.flows[fi as usize].rate)
    }

    /// Number of live flows.
    pub fn flow_count(&self) -> usize {
        self.pairs.len()
    }

    /// Byte counters so far (settle with [`Net::settle_all`] first for exact figures).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Account progress of every flow up to `now`.
    pub fn settle_all(&mut self, now: Nanos) {
        let mut live: Vec<u32> = self.pairs.values().copied().collect();
        live.sort_unstable();
        for fi in live {
            self.settle(fi, now);
        }
    }
}

#[cfg(test)]
mod tests;
