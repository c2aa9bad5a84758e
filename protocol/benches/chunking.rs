//! Chunk + hash throughput of a 256 MiB buffer beside plain `blake3::hash` of the same buffer.
//!
//! `cargo bench -p shoal-protocol` runs it under criterion; the closing figures compare the
//! `chunk_bytes` and `chunk_reader` rows to the `blake3_hash` row of the same run.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shoal_protocol::ChunkParams;
use shoal_protocol::chunking::{chunk_bytes, chunk_reader};

fn buffer(len: usize) -> Vec<u8> {
    // xorshift: incompressible, deterministic.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
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
