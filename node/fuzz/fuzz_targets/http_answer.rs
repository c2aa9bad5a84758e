//! The builder's HTTP/1.1 answer to an enrollment, as the node reads it (plain HTTP: anyone on
//! the path can answer): a typed error or a status in 100..600 and a body no longer than the bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_node::wire::http::parse_answer;

fuzz_target!(|data: &[u8]| {
    if let Ok((status, body)) = parse_answer(data) {
        assert!((100..600).contains(&status));
        assert!(body.len() <= data.len());
    }
});
