//! Chunk + hash throughput of a 256 MiB buffer beside plain `blake3::hash` of the same buffer.
//!
//! `cargo bench -p shoal-protocol` runs it under criterion; the closing figures compare the
//! `chunk_bytes` and `chunk_reader` rows to the `blake3_hash` row of the same run.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shoal_protocol::ChunkParams;
use shoal_protocol::chunking::{chunk_bytes, chunk_reader};

/// Incompressible, deterministic bytes (xorshift from `0x9E37_79B9_7F4A_7C15`, as before).
fn buffer(len: usize) -> Vec<u8> {
    shoal_testing::pseudo_random(len, 1)
}

fn bench(c: &mut Criterion) {
    let data = buffer(256 * 1024 * 1024);
    let mut g = c.benchmark_group("256MiB");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("blake3_hash", |b| b.iter(|| blake3::hash(&data)));
    g.bench_function("chunk_bytes", |b| {
        b.iter(|| chunk_bytes(&data, ChunkParams::DEFAULT))
    });
    g.bench_function("chunk_reader", |b| {
        b.iter(|| chunk_reader(&data[..], ChunkParams::DEFAULT, |_, _| Ok(())).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
