//! [`Bitfield`]: one bit per chunk of a release, in compact `u64` words.

use serde::{Deserialize, Serialize};

/// A fixed-length set of bits, `len` bits in `len.div_ceil(64)` words; bits past `len` are
/// always zero. Bit `i` is chunk `i` of a release's unique chunk list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawBitfield")]
pub struct Bitfield {
    len: u32,
    words: Vec<u64>,
}

#[derive(Deserialize)]
struct RawBitfield {
    len: u32,
    words: Vec<u64>,
}

/// Words that do not make a bitfield of the stated length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a bitfield of {len} bits cannot have {words} words or bits past its end")]
pub struct BitfieldError {
    /// The stated length.
    pub len: u32,
    /// The number of words given.
    pub words: usize,
}

impl TryFrom<RawBitfield> for Bitfield {
    type Error = BitfieldError;
    fn try_from(raw: RawBitfield) -> Result<Self, BitfieldError> {
        Bitfield::from_words(raw.len, raw.words)
    }
}

fn words_for(len: u32) -> usize {
    (len as usize).div_ceil(64)
}

impl Bitfield {
    /// `len` zero bits.
    pub fn new(len: u32) -> Bitfield {
        Bitfield {
            len,
            words: vec![0; words_for(len)],
        }
    }

    /// `len` one bits.
    pub fn full(len: u32) -> Bitfield {
        let mut b = Bitfield {
            len,
            words: vec![u64::MAX; words_for(len)],
        };
        b.clear_tail();
        b
    }

    /// From raw words (as received from a peer): checked, never panics.
    pub fn from_words(len: u32, words: Vec<u64>) -> Result<Bitfield, BitfieldError> {
        let err = BitfieldError {
            len,
            words: words.len(),
        };
        if words.len() != words_for(len) {
            return Err(err);
        }
        let b = Bitfield { len, words };
        let mut trimmed = b.clone();
        trimmed.clear_tail();
        if trimmed != b {
            return Err(err);
        }
        Ok(b)
    }

    fn clear_tail(&mut self) {
        let rem = self.len % 64;
        if rem != 0
            && let Some(last) = self.words.last_mut()
        {
            *last &= (1u64 << rem) - 1;
        }
    }

    /// Number of bits.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether it has no bits at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The raw words.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Bit `i`; `false` past the end.
    pub fn get(&self, i: u32) -> bool {
        if i >= self.len {
            return false;
        }
        self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Sets bit `i` and returns whether it was clear; past the end does nothing.
    pub fn set(&mut self, i: u32) -> bool {
        if i >= self.len {
            return false;
        }
        let w = &mut self.words[(i / 64) as usize];
        let mask = 1 << (i % 64);
        let was_clear = *w & mask == 0;
        *w |= mask;
        was_clear
    }

    /// Clears bit `i` and returns whether it was set.
    pub fn clear(&mut self, i: u32) -> bool {
        if i >= self.len {
            return false;
        }
        let w = &mut self.words[(i / 64) as usize];
        let mask = 1 << (i % 64);
        let was_set = *w & mask != 0;
        *w &= !mask;
        was_set
    }

    /// Number of set bits.
    pub fn count_ones(&self) -> u32 {
        self.words.iter().map(|w| w.count_ones()).sum()
    }

    /// Whether every bit is set.
    pub fn is_full(&self) -> bool {
        self.count_ones() == self.len
    }

    /// Indices of set bits, ascending.
    pub fn ones(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros();
                w &= w - 1;
                Some(wi as u32 * 64 + b)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_count_and_tail() {
        let mut b = Bitfield::new(70);
        assert!(b.set(0));
        assert!(!b.set(0));
        assert!(b.set(69));
        assert!(!b.set(70), "past the end is ignored");
        assert_eq!(b.count_ones(), 2);
        assert_eq!(b.ones().collect::<Vec<_>>(), vec![0, 69]);
        assert!(Bitfield::full(70).is_full());
        assert_eq!(Bitfield::full(70).count_ones(), 70);
    }

    #[test]
    fn from_words_rejects_bad_shapes() {
        assert!(Bitfield::from_words(70, vec![0]).is_err());
        assert!(Bitfield::from_words(70, vec![0, 1 << 6]).is_err());
        assert!(Bitfield::from_words(70, vec![u64::MAX, 0b11_1111]).is_ok());
    }
}
