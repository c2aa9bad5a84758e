//! [`MinHeap`]: a 4-ary min-heap of small `Copy` keys, for the event queues.
//!
//! Both of the simulator's queues hold keys with a total order and no two equal (the driver's
//! events are `(time, insertion number, slot)`, the network's completions `(time, flow,
//! version)`), so any correct priority queue pops them in the same order: swapping the standard
//! binary heap for this one changes nothing but speed. A 4-ary heap is half as deep, and its
//! four children share a cache line or two; the keys are a few machine words, where the
//! standard heap moved whole events.

/// A min-heap; `pop` returns the smallest key.
#[derive(Debug, Clone)]
pub struct MinHeap<K> {
    keys: Vec<K>,
}

impl<K> Default for MinHeap<K> {
    fn default() -> Self {
        MinHeap { keys: Vec::new() }
    }
}

const ARITY: usize = 4;

impl<K: Ord + Copy> MinHeap<K> {
    /// An empty heap.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Removes every key.
    pub fn clear(&mut self) {
        self.keys.clear();
    }

    /// The smallest key.
    pub fn peek(&self) -> Option<&K> {
        self.keys.first()
    }

    /// Adds a key.
    pub fn push(&mut self, k: K) {
        let mut i = self.keys.len();
        self.keys.push(k);
        while i > 0 {
            let parent = (i - 1) / ARITY;
            let p = self.keys[parent];
            if k >= p {
                break;
            }
            self.keys[i] = p;
            i = parent;
        }
        self.keys[i] = k;
    }

    /// Removes and returns the smallest key.
    pub fn pop(&mut self) -> Option<K> {
        let last = self.keys.pop()?;
        let n = self.keys.len();
        if n == 0 {
            return Some(last);
        }
        let top = self.keys[0];
        let mut i = 0;
        loop {
            let first = ARITY * i + 1;
            if first >= n {
                break;
            }
            let end = (first + ARITY).min(n);
            let mut c = first;
            let mut ck = self.keys[first];
            for j in first + 1..end {
                let kj = self.keys[j];
                if kj < ck {
                    c = j;
                    ck = kj;
                }
            }
            if ck >= last {
                break;
            }
            self.keys[i] = ck;
            i = c;
        }
        self.keys[i] = last;
        Some(top)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn pops_in_the_order_of_the_standard_heap_under_random_pushes_and_pops() {
        use std::cmp::Reverse;
        let mut rng = Rng::new(5);
        let mut h = MinHeap::new();
        let mut model = std::collections::BinaryHeap::new();
        for step in 0..20_000u32 {
            if rng.below(3) == 0 {
                assert_eq!(h.pop(), model.pop().map(|Reverse(k)| k), "step {step}");
            } else {
                // Few distinct times: many ties, broken by the second field.
                let k = (rng.below(500), step);
                h.push(k);
                model.push(Reverse(k));
            }
            assert_eq!(h.len(), model.len());
            assert_eq!(h.peek().copied(), model.peek().map(|r| r.0));
        }
        while let Some(Reverse(k)) = model.pop() {
            assert_eq!(h.pop(), Some(k));
        }
        assert!(h.is_empty() && h.pop().is_none());
    }
}
