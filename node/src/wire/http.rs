//! The node's reader of an HTTP/1.1 answer (the builder's reply to an enrollment), without the
//! I/O: the daemon reads the whole answer (capped) until the server closes, then parses it here.
//! The bytes come over the network in clear, so every malformed answer is a typed
//! [`HttpAnswerError`], never a panic (fuzz target `http_answer` in `node/fuzz`).

/// Why an HTTP answer cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpAnswerError {
    /// No blank line ends the headers.
    #[error("no end of headers")]
    NoEndOfHeaders,
    /// The header block is not UTF-8.
    #[error("headers are not UTF-8")]
    HeadersNotUtf8,
    /// The status line does not start with `HTTP/1.`.
    #[error("not an HTTP/1 answer")]
    NotHttp1,
    /// The status line has no status code in 100..600.
    #[error("no status code")]
    NoStatus,
    /// A header line has no `:`.
    #[error("a header line without ':'")]
    BadHeaderLine,
    /// `Content-Length` is not a number.
    #[error("bad Content-Length")]
    BadContentLength,
    /// A `Transfer-Encoding` other than `chunked`.
    #[error("unsupported Transfer-Encoding")]
    UnsupportedTransferEncoding,
    /// The chunked body is malformed (size line, chunk end or missing last chunk).
    #[error("bad chunked body")]
    BadChunkedBody,
    /// Fewer body bytes arrived than `Content-Length` announced.
    #[error("the body is shorter than its Content-Length")]
    ShortBody,
}

/// Parses a whole HTTP/1.1 answer (read until the server closed): status and body. The body is
/// cut at `Content-Length`, decoded when chunked (trailers ignored), or everything after the
/// headers otherwise.
pub fn parse_answer(raw: &[u8]) -> Result<(u16, Vec<u8>), HttpAnswerError> {
    use HttpAnswerError as E;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(E::NoEndOfHeaders)?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| E::HeadersNotUtf8)?;
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(E::NotHttp1);
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or(E::NoStatus)?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(E::BadHeaderLine);
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| E::BadContentLength)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
            if !chunked {
                return Err(E::UnsupportedTransferEncoding);
            }
        }
    }
    if chunked {
        return dechunk(body).map(|b| (status, b)).ok_or(E::BadChunkedBody);
    }
    match length {
        Some(n) if body.len() < n => Err(E::ShortBody),
        Some(n) => Ok((status, body[..n].to_vec())),
        None => Ok((status, body.to_vec())),
    }
}

/// Decodes a chunked body (trailers ignored).
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..eol]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        // A size line is the server's text: `ffffffffffffffff` must not overflow.
        let end = size.checked_add(2)?;
        if raw.len() < end || &raw[size..end] != b"\r\n" {
            return None;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[end..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_with_length_chunked_or_until_close() {
        let (s, b) = parse_answer(
            b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}junk",
        )
        .unwrap();
        assert_eq!((s, b.as_slice()), (201, &b"{}"[..]));
        let (s, b) = parse_answer(
            b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((s, b.as_slice()), (401, &b"abcde"[..]));
        let (s, b) = parse_answer(b"HTTP/1.0 500 Oops\r\n\r\nall of it").unwrap();
        assert_eq!((s, b.as_slice()), (500, &b"all of it"[..]));
    }

    #[test]
    fn malformed_answers_are_typed_errors() {
        use HttpAnswerError as E;
        for (bad, want) in [
            (&b"garbage"[..], E::NoEndOfHeaders),
            (b"HTTP/1.1 200 \xff\r\n\r\n", E::HeadersNotUtf8),
            (b"SSH-2.0\r\n\r\n", E::NotHttp1),
            (b"HTTP/1.1 abc\r\n\r\n", E::NoStatus),
            (b"HTTP/1.1 99 Low\r\n\r\n", E::NoStatus),
            (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", E::BadHeaderLine),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                E::BadContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
                E::ShortBody,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                E::BadChunkedBody,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
                E::BadChunkedBody,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                E::UnsupportedTransferEncoding,
            ),
            // A chunk size of usize::MAX (and MAX - 1) overflowed `size + 2`: a panic.
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nab\r\n",
                E::BadChunkedBody,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffe\r\nab\r\n",
                E::BadChunkedBody,
            ),
        ] {
            assert_eq!(
                parse_answer(bad),
                Err(want),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
