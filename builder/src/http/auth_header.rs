//! The token in an HTTP `Authorization` header (`Basic` with the token as the password, or as
//! the user name with an empty password; or `Bearer`), decoded before anything else about the
//! request is known: the `parse` feature, fuzzed on its own.

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

/// Standard or URL-safe base64, padding optional; `None` for any other character, a lone
/// trailing symbol, or more than [`MAX_BASE64`] symbols.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    if s.len() > MAX_BASE64 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&bytes[1..4]),
            3 => out.extend_from_slice(&bytes[1..3]),
            2 => out.push(bytes[1]),
            _ => return None,
        }
    }
    Some(out)
}

/// Standard base64 with padding (what clients send; the tests' and the fuzz target's reference).
pub fn base64_encode(data: &[u8]) -> String {
    const SYMBOLS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let mut b = [0u8; 3];
        b[..chunk.len()].copy_from_slice(chunk);
        let acc = u32::from_be_bytes([0, b[0], b[1], b[2]]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(SYMBOLS[((acc >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
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
