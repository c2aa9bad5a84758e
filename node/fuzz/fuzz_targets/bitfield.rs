//! A peer's bitfield (length and words as it sent them), then HAVE indexes against it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_node::core::Bitfield;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let len = u32::from_le_bytes(data[..4].try_into().unwrap());
    let words: Vec<u64> = data[4..]
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
        .collect();
    let Ok(mut b) = Bitfield::from_words(len, words.clone()) else {
        return;
    };
    assert_eq!(b.len(), len);
    let ones = b.count_ones();
    assert!(ones <= len);
    assert_eq!(b.ones().count() as u32, ones);
    assert_eq!(b.is_full(), ones == len);
    // HAVE indexes: the words again, read as indexes (in range or not).
    for w in words.iter().take(64) {
        let i = *w as u32;
        let was = b.get(i);
        let changed = b.set(i);
        assert!(!changed || (!was && i < len));
        assert!(i >= len || b.get(i));
    }
    assert!(b.count_ones() <= len);
});
