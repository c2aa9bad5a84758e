//! The token in an HTTP `Authorization` header (`Basic` with the token as the password, or as
//! the user name with an empty password; or `Bearer`), decoded before anything else about the
//! request is known: the `parse` feature, fuzzed on its own.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// Longest base64 text decoded (a token is far shorter).
pub const MAX_BASE64: usize = 8192;

/// The token in an `Authorization` header's value, if any.
pub fn token(value: &str) -> Option<String> {
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_string());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64_decode(rest.trim())?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':').unwrap_or((&text, ""));
    let token = if pass.is_empty() { user } else { pass };
    (!token.is_empty()).then(|| token.to_string())
}

/// Decodes like a lenient client: padding optional, stray bits in the last symbol ignored.
const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// Standard or URL-safe base64, padding optional; `None` for any other character, a lone
/// trailing symbol, or more than [`MAX_BASE64`] symbols.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    if s.trim_end_matches('=').len() > MAX_BASE64 {
        return None;
    }
    STANDARD.decode(s).or_else(|_| URL_SAFE.decode(s)).ok()
}

/// Standard base64 with padding (what clients send; the tests' and the fuzz target's reference).
pub fn base64_encode(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_clients_encode() {
        for n in 0..40usize {
            let data: Vec<u8> = (0..n).map(|i| (i * 37 + n) as u8).collect();
            let text = base64_encode(&data);
            assert_eq!(base64_decode(&text), Some(data.clone()), "{text}");
            assert_eq!(base64_decode(text.trim_end_matches('=')), Some(data));
        }
        assert_eq!(base64_encode(b"git:tok"), "Z2l0OnRvaw==");
        assert_eq!(base64_decode("-_"), base64_decode("+/"));
        assert_eq!(base64_decode("A"), None);
        assert_eq!(base64_decode("AB!C"), None);
        assert_eq!(base64_decode(&"A".repeat(MAX_BASE64 + 4)), None);
    }

    #[test]
    fn token_forms() {
        assert_eq!(token("Basic Z2l0OnRvaw==").as_deref(), Some("tok"));
        assert_eq!(token("basic dG9rOg==").as_deref(), Some("tok"));
        assert_eq!(token("Basic Og=="), None); // ":"
        assert_eq!(token("Basic !!!"), None);
        assert_eq!(token("Bearer abc ").as_deref(), Some("abc"));
        assert_eq!(token("Digest abc"), None);
        assert_eq!(token("Basic"), None);
    }
}
