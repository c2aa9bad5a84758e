//! Any bytes as the `docker save` stream of an image the builder just built: walked as the
//! export walks it, every chunk checked against its digest, every layer against its chunks.
#![no_main]
use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use shoal_builder::pipeline::image_archive;
use shoal_protocol::{Digest, chunking};

fuzz_target!(|data: &[u8]| {
    let mut chunks: HashMap<Digest, u32> = HashMap::new();
    let Ok(image) = image_archive::read_archive(data, |c, bytes| {
        assert_eq!(c.size as usize, bytes.len());
        assert_eq!(Digest::of(bytes), c.digest);
        chunks.insert(c.digest, c.size);
        Ok(())
    }) else {
        return;
    };
    assert_eq!(image.config_digest, Digest::of(&image.config));
    assert!(image.config.len() as u64 <= image_archive::SMALL_ENTRY_BYTES);
    for layer in &image.layers {
        let total: u64 = layer.chunks.iter().map(|c| u64::from(c.size)).sum();
        assert_eq!(total, layer.size);
        assert_eq!(chunking::layer_digest(&layer.chunks), layer.digest);
        for c in &layer.chunks {
            assert_eq!(chunks.get(&c.digest), Some(&c.size));
        }
    }
});
