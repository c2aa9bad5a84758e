//! Any bytes as the node's saved state: what decodes is resumed from (trust chain walked,
//! release checked again) and the node then takes a clock reading, a peer and a timeout.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_node::core::{Input, Instant, Node, PeerInfo, Snapshot};
use shoal_testing::{TEST_EPOCH, TestFleet, device_key};
use shoal_protocol::DeviceId;
use shoal_protocol::encoding::decode;

fuzz_target!(|data: &[u8]| {
    let Ok(snapshot) = decode::<Snapshot>(data) else {
        return;
    };
    let fleet = TestFleet::new("fuzz");
    let mut node = Node::resume(fleet.config(1), snapshot, 7);
    node.handle(Instant(0), Input::WallClock(TEST_EPOCH));
    node.handle(
        Instant(1),
        Input::PeerConnected {
            peer: DeviceId::from(device_key(2).public_key()),
            info: PeerInfo {
                site: None,
                rtt_ms: 5,
                origin: false,
            },
        },
    );
    node.handle_timeout(Instant(60_000));
    while node.poll_output().is_some() {}
    let _ = node.snapshot();
});
