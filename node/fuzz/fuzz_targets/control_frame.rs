//! Any bytes as the body of a control frame from a peer; what decodes re-encodes to a frame
//! that decodes to the same message, and a bitfield in it is checked as the daemon does.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_node::core::Bitfield;
use shoal_node::wire::{self, ControlMsg};

fuzz_target!(|data: &[u8]| {
    if data.len() > wire::MAX_FRAME_BYTES {
        return;
    }
    let Ok(msg) = wire::decode(data) else { return };
    let frame = wire::encode(&msg);
    let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - 4);
    assert_eq!(wire::decode(&frame[4..]).as_ref(), Ok(&msg));
    if let ControlMsg::Bitfield { len, words, .. } = msg
        && let Ok(b) = Bitfield::from_words(len, words)
    {
        assert!(b.count_ones() <= b.len());
    }
});
