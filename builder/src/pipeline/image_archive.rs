//! The `docker save` archive reader: a tar stream in, the image's config and its layers cut into
//! chunks out, or a typed [`SaveError`] (the `parse` feature: no Engine, no store).
//!
//! The tar is walked once, as a stream: every large regular entry (a layer tar) is cut with
//! [`chunk_reader`] as it is read, each chunk handed to the caller (the builder's export hands
//! them to the store's writers, [`crate::pipeline::engine`]); small entries (the image config,
//! `manifest.json`, small layers) are kept in memory; links are remembered. `manifest.json`
//! then names the config and the layer order. Both the legacy (`<id>/layer.tar`) and the OCI
//! (`blobs/sha256/<hex>`, with `<id>/layer.tar` links to them) layouts of `docker save` are
//! understood, with GNU long names and pax `path` / `linkpath` records.
//!
//! Headers, pax records and numeric fields are the `tar` crate's ([`tar::Header`],
//! [`tar::PaxExtensions`]); the walk is this module's, not [`tar::Archive::entries`], whose
//! entries borrow the archive through a `Cell` and so cannot be read on [`chunk_reader`]'s
//! reading thread, and which reads long-name and pax records without a bound.

use std::collections::HashMap;
use std::io::{self, Read};

use shoal_protocol::chunking::{ChunkParams, chunk_reader, cut_points};
use shoal_protocol::{ChunkRef, Digest, ImageRef, LayerRef};

use crate::pipeline::build_config::{join, normalize};

/// Entries of a `docker save` tar up to this size are kept in memory.
pub const SMALL_ENTRY_BYTES: u64 = 256 * 1024;
/// Largest GNU long-name or pax extension record.
pub const MAX_EXTENSION_BYTES: u64 = 1024 * 1024;

/// Why an archive is not a usable `docker save` archive.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SaveError {
    /// The stream ends inside a header, an entry or its padding.
    #[error("truncated tar")]
    Truncated,
    /// A header's size field is not a number (or is too large to pad to a block).
    #[error("bad tar size")]
    BadSize,
    /// A GNU long-name or pax record is larger than [`MAX_EXTENSION_BYTES`].
    #[error("oversized tar extension header")]
    OversizedExtension,
    /// Reading the stream failed (outside a layer).
    #[error("{0}")]
    Read(io::Error),
    /// A layer ends before the size its header gives.
    #[error("{0}: truncated")]
    LayerTruncated(String),
    /// Cutting a layer failed: reading it, or the caller's chunk handler.
    #[error("{0}")]
    Chunking(io::Error),
    /// No `manifest.json` entry.
    #[error("no manifest.json in the archive")]
    NoManifest,
    /// `manifest.json` is not JSON.
    #[error("manifest.json: {0}")]
    Manifest(String),
    /// `manifest.json` lists no image.
    #[error("manifest.json lists no image")]
    NoImage,
    /// The first image has no `Config` string.
    #[error("manifest.json has no Config")]
    NoConfig,
    /// The config it names is not a small entry of the archive.
    #[error("config {0} missing or too large")]
    ConfigMissing(String),
    /// The first image has no `Layers` list.
    #[error("manifest.json has no Layers")]
    NoLayers,
    /// A layer it names is not in the archive.
    #[error("layer {0} missing from the archive")]
    LayerMissing(String),
}

fn read_err(e: io::Error) -> SaveError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        SaveError::Truncated
    } else {
        SaveError::Read(e)
    }
}

/// One entry header of a tar stream.
#[derive(Debug)]
struct TarEntry {
    path: String,
    kind: u8,
    size: u64,
    /// `size` rounded up to whole 512-byte blocks.
    padded: u64,
    link: String,
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// Fills `buf`; `false` at a clean end of stream before its first byte.
fn read_exact_or_eof<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<bool, SaveError> {
    let mut off = 0;
    while off < buf.len() {
        match r.read(&mut buf[off..]) {
            Ok(0) if off == 0 => return Ok(false),
            Ok(0) => return Err(SaveError::Truncated),
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_err(e)),
        }
    }
    Ok(true)
}

fn skip<R: Read>(r: &mut R, n: u64) -> Result<(), SaveError> {
    let copied = io::copy(&mut r.by_ref().take(n), &mut io::sink()).map_err(read_err)?;
    if copied != n {
        return Err(SaveError::Truncated);
    }
    Ok(())
}

fn read_vec<R: Read>(r: &mut R, size: u64) -> Result<Vec<u8>, SaveError> {
    let mut data = Vec::new();
    r.by_ref()
        .take(size)
        .read_to_end(&mut data)
        .map_err(read_err)?;
    if data.len() as u64 != size {
        return Err(SaveError::Truncated);
    }
    Ok(data)
}

/// Reads the next header (handling GNU long names and pax `path`/`linkpath`); `None` at the end.
fn next_header<R: Read>(r: &mut R) -> Result<Option<TarEntry>, SaveError> {
    let mut long_name: Option<String> = None;
    let mut long_link: Option<String> = None;
    loop {
        let mut block = [0u8; 512];
        if !read_exact_or_eof(r, &mut block)? || block.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        let h = tar::Header::from_byte_slice(&block);
        let size = h.entry_size().map_err(|_| SaveError::BadSize)?;
        let padded = size
            .checked_next_multiple_of(512)
            .ok_or(SaveError::BadSize)?;
        let kind = h.entry_type().as_byte();
        match kind {
            b'L' | b'K' | b'x' => {
                if size > MAX_EXTENSION_BYTES {
                    return Err(SaveError::OversizedExtension);
                }
                let data = read_vec(r, size)?;
                skip(r, padded - size)?;
                match kind {
                    b'L' => long_name = Some(cstr(&data)),
                    b'K' => long_link = Some(cstr(&data)),
                    _ => {
                        for rec in tar::PaxExtensions::new(&data).flatten() {
                            let value = String::from_utf8_lossy(rec.value_bytes()).into_owned();
                            match rec.key_bytes() {
                                b"path" => long_name = Some(value),
                                b"linkpath" => long_link = Some(value),
                                _ => {}
                            }
                        }
                    }
                }
                continue;
            }
            b'g' => {
                skip(r, padded)?;
                continue;
            }
            _ => {}
        }
        let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        return Ok(Some(TarEntry {
            path: long_name.unwrap_or_else(|| lossy(&h.path_bytes())),
            kind,
            size,
            padded,
            link: long_link
                .or_else(|| h.link_name_bytes().map(|l| lossy(&l)))
                .unwrap_or_default(),
        }));
    }
}

/// Cuts a small layer held in memory on this thread: the cuts [`chunk_reader`] makes, without
/// its reading thread and 8 MiB blocks.
fn chunk_in_memory(
    bytes: &[u8],
    on_chunk: &mut impl FnMut(ChunkRef, &[u8]) -> io::Result<()>,
) -> io::Result<LayerRef> {
    let mut chunks = Vec::new();
    let mut offset = 0;
    for len in cut_points(bytes, ChunkParams::DEFAULT) {
        let piece = &bytes[offset..offset + len];
        offset += len;
        let c = ChunkRef {
            digest: Digest::of(piece),
            size: len as u32,
        };
        on_chunk(c, piece)?;
        chunks.push(c);
    }
    Ok(LayerRef::from_chunks(chunks))
}

/// Walks a `docker save` archive from `reader`, handing every chunk of every layer to
/// `on_chunk` (a chunk can come more than once: the same bytes in two layers, or a layer listed
/// twice), and returns the image: its config and its layers in `manifest.json`'s order.
pub fn read_archive<R: Read + Send>(
    mut reader: R,
    mut on_chunk: impl FnMut(ChunkRef, &[u8]) -> io::Result<()>,
) -> Result<ImageRef, SaveError> {
    let mut small: HashMap<String, Vec<u8>> = HashMap::new();
    let mut layers: HashMap<String, LayerRef> = HashMap::new();
    let mut links: HashMap<String, String> = HashMap::new();
    while let Some(entry) = next_header(&mut reader)? {
        let path = entry.path.trim_start_matches("./").to_string();
        let padding = entry.padded - entry.size;
        match entry.kind {
            b'0' | 0 | b'7' => {
                if entry.size <= SMALL_ENTRY_BYTES {
                    let buf = read_vec(&mut reader, entry.size)?;
                    small.insert(path, buf);
                } else {
                    let mut body = (&mut reader).take(entry.size);
                    let layer = chunk_reader(&mut body, ChunkParams::DEFAULT, &mut on_chunk)
                        .map_err(SaveError::Chunking)?;
                    if layer.size != entry.size {
                        return Err(SaveError::LayerTruncated(path));
                    }
                    layers.insert(path, layer);
                }
                skip(&mut reader, padding)?;
            }
            b'1' | b'2' => {
                let target = if entry.kind == b'2' {
                    // A symbolic link is relative to its own directory.
                    let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                    join(dir, &entry.link)
                } else {
                    entry.link.clone()
                };
                links.insert(path, normalize(&target).unwrap_or_default());
                skip(&mut reader, entry.padded)?;
            }
            _ => skip(&mut reader, entry.padded)?,
        }
    }
    let manifest = small.get("manifest.json").ok_or(SaveError::NoManifest)?;
    let manifest: serde_json::Value =
        serde_json::from_slice(manifest).map_err(|e| SaveError::Manifest(e.to_string()))?;
    let first = manifest.get(0).ok_or(SaveError::NoImage)?;
    let config_path = first
        .get("Config")
        .and_then(|c| c.as_str())
        .ok_or(SaveError::NoConfig)?;
    let resolve = |p: &str| links.get(p).cloned().unwrap_or_else(|| p.to_string());
    let config = small
        .get(&resolve(config_path))
        .cloned()
        .ok_or_else(|| SaveError::ConfigMissing(config_path.to_string()))?;
    let mut out_layers = Vec::new();
    for l in first
        .get("Layers")
        .and_then(|l| l.as_array())
        .ok_or(SaveError::NoLayers)?
    {
        let p = resolve(l.as_str().unwrap_or_default());
        let layer = if let Some(layer) = layers.get(&p) {
            layer.clone()
        } else if let Some(bytes) = small.get(&p) {
            chunk_in_memory(bytes, &mut on_chunk).map_err(SaveError::Chunking)?
        } else {
            return Err(SaveError::LayerMissing(p));
        };
        out_layers.push(layer);
    }
    Ok(ImageRef {
        config_digest: Digest::of(&config),
        config,
        layers: out_layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar of `entries`: (path, kind, link, data), with the `tar` crate.
    fn archive(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, link, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            if link.is_empty() {
                b.append_data(&mut h, path, *data).unwrap();
            } else {
                b.append_link(&mut h, path, link).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    fn layer_bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
            .collect()
    }

    fn read(bytes: &[u8]) -> (Result<ImageRef, SaveError>, HashMap<Digest, Vec<u8>>) {
        let mut chunks = HashMap::new();
        let r = read_archive(bytes, |c, b| {
            assert_eq!(Digest::of(b), c.digest);
            chunks.insert(c.digest, b.to_vec());
            Ok(())
        });
        (r, chunks)
    }

    fn reassemble(l: &LayerRef, chunks: &HashMap<Digest, Vec<u8>>) -> Vec<u8> {
        l.chunks
            .iter()
            .flat_map(|c| chunks[&c.digest].clone())
            .collect()
    }

    #[test]
    fn legacy_and_oci_layouts() {
        use tar::EntryType::{Regular, Symlink};
        let big = layer_bytes(600_000, 1);
        let small = layer_bytes(3_000, 2);
        let config = br#"{"architecture":"amd64"}"#;
        let legacy = archive(&[
            ("abc/layer.tar", Regular, "", &big),
            ("def/layer.tar", Regular, "", &small),
            ("cfg.json", Regular, "", config),
            (
                "manifest.json",
                Regular,
                "",
                br#"[{"Config":"cfg.json","Layers":["def/layer.tar","abc/layer.tar"]}]"#,
            ),
        ]);
        let (img, chunks) = read(&legacy);
        let img = img.unwrap();
        assert_eq!(img.config, config);
        assert_eq!(img.config_digest, Digest::of(config));
        assert_eq!(img.layers.len(), 2);
        assert_eq!(reassemble(&img.layers[0], &chunks), small);
        assert_eq!(reassemble(&img.layers[1], &chunks), big);
        // A layer cut in memory is cut as the streaming path cuts it.
        let mid = layer_bytes(3_000_000, 5);
        let streamed = chunk_reader(mid.as_slice(), ChunkParams::DEFAULT, |_, _| Ok(())).unwrap();
        assert!(streamed.chunks.len() > 1);
        assert_eq!(chunk_in_memory(&mid, &mut |_, _| Ok(())).unwrap(), streamed);

        // OCI: blobs, with links from the legacy names (one relative to its directory).
        let oci = archive(&[
            ("blobs/sha256/aa", Regular, "", &big),
            ("blobs/sha256/cc", Regular, "", config),
            ("abc/layer.tar", Symlink, "../blobs/sha256/aa", b""),
            (
                "manifest.json",
                Regular,
                "",
                br#"[{"Config":"blobs/sha256/cc","Layers":["abc/layer.tar"]}]"#,
            ),
        ]);
        let (img, chunks) = read(&oci);
        let img = img.unwrap();
        assert_eq!(img.config, config);
        assert_eq!(reassemble(&img.layers[0], &chunks), big);
    }

    #[test]
    fn bad_archives_are_typed_errors() {
        use tar::EntryType::Regular;
        let cfg = ("c.json", Regular, "", &b"{}"[..]);
        type Want = fn(&SaveError) -> bool;
        let cases: Vec<(Vec<u8>, Want)> = vec![
            (archive(&[cfg]), |e| matches!(e, SaveError::NoManifest)),
            (
                archive(&[cfg, ("manifest.json", Regular, "", b"[{")]),
                |e| matches!(e, SaveError::Manifest(_)),
            ),
            (
                archive(&[cfg, ("manifest.json", Regular, "", b"[]")]),
                |e| matches!(e, SaveError::NoImage),
            ),
            (
                archive(&[cfg, ("manifest.json", Regular, "", br#"[{"Layers":[]}]"#)]),
                |e| matches!(e, SaveError::NoConfig),
            ),
            (
                archive(&[(
                    "manifest.json",
                    Regular,
                    "",
                    br#"[{"Config":"c.json","Layers":[]}]"#,
                )]),
                |e| matches!(e, SaveError::ConfigMissing(_)),
            ),
            (
                archive(&[
                    cfg,
                    ("manifest.json", Regular, "", br#"[{"Config":"c.json"}]"#),
                ]),
                |e| matches!(e, SaveError::NoLayers),
            ),
            (
                archive(&[
                    cfg,
                    (
                        "manifest.json",
                        Regular,
                        "",
                        br#"[{"Config":"c.json","Layers":["x/layer.tar"]}]"#,
                    ),
                ]),
                |e| matches!(e, SaveError::LayerMissing(p) if p == "x/layer.tar"),
            ),
        ];
        for (bytes, want) in cases {
            let e = read(&bytes).0.unwrap_err();
            assert!(want(&e), "{e:?}");
        }
        // Cut anywhere inside an entry, the stream is truncated.
        let big = layer_bytes(300_000, 3);
        let whole = archive(&[("l/layer.tar", Regular, "", &big)]);
        for cut in [100, 512, 600, 512 + 100_000, 512 + 300_000 + 10] {
            let e = read(&whole[..cut]).0.unwrap_err();
            assert!(
                matches!(e, SaveError::Truncated | SaveError::LayerTruncated(_)),
                "cut at {cut}: {e:?}"
            );
        }
    }

    /// A size field of GNU base-256 near `u64::MAX` overflowed the padding arithmetic (a panic
    /// with overflow checks, a wrong skip without); it is now a typed error.
    #[test]
    fn a_huge_size_field_is_a_typed_error() {
        let mut whole = archive(&[("a", tar::EntryType::Regular, "", b"x")]);
        // 0x80, then big-endian u64::MAX - 1 in the last 8 bytes of the 12.
        whole[124..128].copy_from_slice(&[0x80, 0, 0, 0]);
        whole[128..136].copy_from_slice(&(u64::MAX - 1).to_be_bytes());
        // Recompute the checksum the way tar does (the reader does not check it, but keep the
        // header otherwise valid).
        whole[148..156].copy_from_slice(b"        ");
        let sum: u32 = whole[..512].iter().map(|b| u32::from(*b)).sum();
        whole[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let e = read(&whole).0.unwrap_err();
        assert!(matches!(e, SaveError::BadSize), "{e:?}");
    }

    #[test]
    fn the_chunk_handlers_error_stops_the_walk() {
        use tar::EntryType::Regular;
        let big = layer_bytes(400_000, 4);
        let bytes = archive(&[("l/layer.tar", Regular, "", &big)]);
        let r = read_archive(bytes.as_slice(), |_, _| Err(io::Error::other("disk full")));
        assert!(matches!(r, Err(SaveError::Chunking(e)) if e.to_string() == "disk full"));
    }
}
