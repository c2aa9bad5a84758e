//! Any text as a pushed `docker-compose.yml`: parsed, then every service's settings derived as
//! the pipeline derives them (health checks, durations, update strategy labels).
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_builder::pipeline::compose;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = compose::parse(text) else { return };
    for (name, service) in &c.services {
        assert!(compose::valid_name(name));
        let _ = service.settings(name);
    }
    let _ = compose::duration_s(text);
});
