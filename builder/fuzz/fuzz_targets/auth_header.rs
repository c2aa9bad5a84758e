//! Any text as an `Authorization` header's value, decoded before the request is authenticated;
//! and any bytes encoded as a client would, which must decode back to themselves.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_builder::http::auth_header;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(t) = auth_header::token(text) {
            assert!(text.len() >= t.len());
        }
        if let Some(bytes) = auth_header::base64_decode(text) {
            assert!(bytes.len() <= text.len());
        }
    }
    if data.len() * 4 / 3 < auth_header::MAX_BASE64 {
        let encoded = auth_header::base64_encode(data);
        assert_eq!(auth_header::base64_decode(&encoded).as_deref(), Some(data));
        let url_safe = encoded.replace('+', "-").replace('/', "_");
        assert_eq!(auth_header::base64_decode(&url_safe).as_deref(), Some(data));
    }
});
