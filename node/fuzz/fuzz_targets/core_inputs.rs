//! Any sequence of peer inputs to the core: connections, gossip (valid and not), availability,
//! manifests and chunk results, in any order and from any of four peers, with time passing.
//! Checks: nothing panics, every gossip message gets exactly one verdict, and the highest
//! accepted sequence never goes down (no rotation happens here).
#![no_main]
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use shoal_node::core::{
    Bitfield, FetchError, FetchStats, Input, Instant, MessageId, Node, Output, PeerInfo,
};
use shoal_testing::{TEST_EPOCH, TestFleet, TestRelease, device_key, synthetic_chunks};
use shoal_protocol::{DeviceId, ReleaseSeq, RolloutPlan, WaveAction};

struct Fixture {
    fleet: TestFleet,
    releases: Vec<TestRelease>,
    opens: Vec<Vec<u8>>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let fleet = TestFleet::new("fuzz");
        let releases: Vec<TestRelease> = (1..=2)
            .map(|s| {
                fleet.release(
                    s,
                    synthetic_chunks(s * 100, 6, 4096),
                    RolloutPlan::all_at_once(),
                )
            })
            .collect();
        let opens = releases
            .iter()
            .map(|r| fleet.wave_control(r, 1, WaveAction::Open { wave: 0 }))
            .collect();
        Fixture {
            fleet,
            releases,
            opens,
        }
    })
}

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

fn peer(n: u8) -> DeviceId {
    DeviceId::from(device_key(2 + u64::from(n % 4)).public_key())
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut node = Node::new(f.fleet.config(1), 3);
    let mut now = Instant(0);
    node.handle(now, Input::WallClock(TEST_EPOCH));
    let mut input = Bytes(data);
    let mut next_id = 0u64;
    let mut highest = None;
    let mut steps = 0;
    while let Some(op) = input.u8() {
        steps += 1;
        if steps > 256 {
            break;
        }
        let arg = input.u8().unwrap_or(0);
        let p = peer(arg);
        let rel = &f.releases[usize::from(arg >> 7)];
        let seq = rel.announcement.sequence;
        let mut gossip = None;
        let event = match op % 12 {
            0 => Input::PeerConnected {
                peer: p,
                info: PeerInfo {
                    site: (arg & 4 != 0).then(|| "here".to_string()),
                    rtt_ms: u32::from(arg),
                    origin: arg & 8 != 0,
                },
            },
            1 => Input::PeerDisconnected { peer: p },
            2 => {
                next_id += 1;
                gossip = Some(next_id);
                Input::Gossip {
                    from: p,
                    id: MessageId(next_id),
                    bytes: rel.announcement_gossip.clone(),
                }
            }
            3 => {
                next_id += 1;
                gossip = Some(next_id);
                let n = usize::from(input.u8().unwrap_or(0));
                Input::Gossip {
                    from: p,
                    id: MessageId(next_id),
                    bytes: input.take(n).to_vec(),
                }
            }
            4 => {
                let len = u32::from(input.u8().unwrap_or(0) % 16);
                let word = u64::from(input.u8().unwrap_or(0));
                match Bitfield::from_words(len, vec![word]) {
                    Ok(have) => Input::PeerHave {
                        peer: p,
                        sequence: seq,
                        have,
                    },
                    Err(_) => continue,
                }
            }
            5 => Input::PeerHaveChunk {
                peer: p,
                sequence: seq,
                index: u32::from(input.u8().unwrap_or(0) % 10),
            },
            6 => Input::ManifestFetched {
                peer: p,
                sequence: seq,
                result: match arg & 3 {
                    0 => Err(FetchError::Timeout),
                    1 => Ok(Arc::from(input.take(64))),
                    _ => Ok(rel.manifest_bytes.clone()),
                },
            },
            7 => {
                let index = u32::from(input.u8().unwrap_or(0) % 8);
                let result = match input.u8().unwrap_or(0) % 7 {
                    0 => Err(FetchError::DigestMismatch),
                    1 => Err(FetchError::Timeout),
                    2 => Err(FetchError::TooSlow),
                    3 => Err(FetchError::NotFound),
                    4 => Err(FetchError::Busy),
                    5 => Err(FetchError::Io),
                    _ => Ok(FetchStats {
                        bytes: 4096,
                        elapsed_ms: u64::from(arg) * 50,
                    }),
                };
                Input::ChunkFetched {
                    peer: p,
                    sequence: seq,
                    index,
                    result,
                }
            }
            8 => Input::ApplyFinished {
                sequence: seq,
                result: if arg & 1 == 0 {
                    Ok(())
                } else {
                    Err("failed".into())
                },
            },
            9 => Input::HealthResult {
                sequence: seq,
                healthy: arg & 1 == 0,
                detail: String::new(),
            },
            10 => {
                next_id += 1;
                gossip = Some(next_id);
                Input::Gossip {
                    from: p,
                    id: MessageId(next_id),
                    bytes: f.opens[usize::from(arg >> 7)].clone(),
                }
            }
            _ => {
                now = now.plus_ms(u64::from(arg) * 100);
                node.handle_timeout(now);
                while node.poll_output().is_some() {}
                continue;
            }
        };
        node.handle(now, event);
        let mut verdicts = 0;
        while let Some(out) = node.poll_output() {
            if let Output::GossipVerdict { id, .. } = out {
                assert_eq!(Some(id), gossip.map(MessageId));
                verdicts += 1;
            }
        }
        assert_eq!(verdicts, usize::from(gossip.is_some()));
        let h = node.highest().map(|(s, _)| s);
        assert!(h >= highest, "highest went from {highest:?} to {h:?}");
        highest = h;
        let _: Option<ReleaseSeq> = node.applied();
    }
});
