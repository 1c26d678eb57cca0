//! HTTP/1.1 on the wire, as much of it as a forwarding proxy needs: message heads parsed with
//! `httparse` (strict: no obsolete line folding, no spaces in names, no control characters in
//! values), the body framing of RFC 9112 §6, and a chunked-encoding scanner that finds where a
//! chunked body ends so it can be passed through unchanged.
//!
//! Why by hand rather than hyper: on the 2-core benchmark machine the proxy, the upstream and the
//! load generator share the cores, and hyper's server plus pooled client cost about as much CPU
//! per request as the whole direct path (docs/performance.md). Forwarding bytes between two
//! sockets that each client connection keeps to itself costs about half as much. The price is
//! that framing is ours to get right, so this module refuses every message whose framing is
//! ambiguous (both `Transfer-Encoding` and `Content-Length`, differing lengths, codings other than
//! `chunked`) instead of guessing: that is what request smuggling feeds on.

/// The largest head accepted (request line or status line plus header fields).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The most header fields accepted in one head.
pub const MAX_HEADERS: usize = 100;
/// The longest chunk-size line (with extensions) and the largest trailer section accepted.
const MAX_CHUNK_LINE: usize = 1024;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Responses only: the body runs until the upstream closes the connection.
    UntilClose,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("the message head is larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("the message has more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("malformed HTTP/1.1 message head: {0}")]
    Malformed(httparse::Error),
    #[error("ambiguous or unsupported body framing: {0}")]
    Framing(&'static str),
    #[error("the request head did not arrive whole within {0:?}")]
    TimedOut(std::time::Duration),
}

impl From<httparse::Error> for HeadError {
    fn from(e: httparse::Error) -> Self {
        match e {
            httparse::Error::TooManyHeaders => Self::TooManyHeaders,
            other => Self::Malformed(other),
        }
    }
}

/// A complete request head borrowed from the read buffer.
pub struct RequestHead<'b, 'h> {
    pub method: &'b str,
    pub target: &'b str,
    pub http10: bool,
    pub headers: &'h [httparse::Header<'b>],
    /// Bytes of the head, including the blank line.
    pub len: usize,
}

/// Parses a request head at the start of `buf`; `Ok(None)` until the head is complete.
pub fn parse_request<'b, 'h>(
    buf: &'b [u8],
    storage: &'h mut [httparse::Header<'b>],
) -> Result<Option<RequestHead<'b, 'h>>, HeadError> {
    let mut req = httparse::Request::new(storage);
    match req.parse(buf)? {
        httparse::Status::Complete(len) => Ok(Some(RequestHead {
            method: req.method.unwrap_or("GET"),
            target: req.path.unwrap_or("/"),
            http10: req.version == Some(0),
            headers: req.headers,
            len,
        })),
        httparse::Status::Partial if buf.len() >= MAX_HEAD_BYTES => Err(HeadError::TooLarge),
        httparse::Status::Partial => Ok(None),
    }
}

/// A complete response head borrowed from the read buffer.
pub struct ResponseHead<'b, 'h> {
    pub status: u16,
    pub reason: &'b str,
    pub http10: bool,
    pub headers: &'h [httparse::Header<'b>],
    pub len: usize,
}

/// Parses a response head at the start of `buf`; `Ok(None)` until the head is complete.
pub fn parse_response<'b, 'h>(
    buf: &'b [u8],
    storage: &'h mut [httparse::Header<'b>],
) -> Result<Option<ResponseHead<'b, 'h>>, HeadError> {
    let mut resp = httparse::Response::new(storage);
    match resp.parse(buf)? {
        httparse::Status::Complete(len) => Ok(Some(ResponseHead {
            status: resp.code.unwrap_or(0),
            reason: resp.reason.unwrap_or(""),
            http10: resp.version == Some(0),
            headers: resp.headers,
            len,
        })),
        httparse::Status::Partial if buf.len() >= MAX_HEAD_BYTES => Err(HeadError::TooLarge),
        httparse::Status::Partial => Ok(None),
    }
}

pub fn is(header: &httparse::Header<'_>, name: &str) -> bool {
    header.name.eq_ignore_ascii_case(name)
}

/// The comma-separated tokens of every `name` field, trimmed, empty ones skipped.
pub fn tokens<'a, 'b>(
    headers: &'a [httparse::Header<'b>],
    name: &'static str,
) -> impl Iterator<Item = &'b [u8]> + 'a {
    headers
        .iter()
        .filter(move |h| is(h, name))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether the `Connection` fields carry `token`.
pub fn connection_has(headers: &[httparse::Header<'_>], token: &str) -> bool {
    tokens(headers, "connection").any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether the connection stays open after this message, by version and `Connection` tokens.
pub fn keep_alive(headers: &[httparse::Header<'_>], http10: bool) -> bool {
    if http10 {
        connection_has(headers, "keep-alive")
    } else {
        !connection_has(headers, "close")
    }
}

/// The `Content-Length`, if any: every field and list element must be the same decimal number.
fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<u64>, HeadError> {
    let mut length = None;
    for value in tokens(headers, "content-length") {
        if value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
            return Err(HeadError::Framing("Content-Length is not a decimal number"));
        }
        let n = value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        match length {
            Some(m) if m != n => return Err(HeadError::Framing("differing Content-Length values")),
            _ => length = Some(n),
        }
    }
    // A field whose value is empty is as bad as a malformed one.
    if length.is_none() && headers.iter().any(|h| is(h, "content-length")) {
        return Err(HeadError::Framing("empty Content-Length"));
    }
    Ok(length)
}

/// A request's body framing (RFC 9112 §6.3), refusing anything ambiguous.
pub fn request_framing(
    headers: &[httparse::Header<'_>],
    http10: bool,
) -> Result<Framing, HeadError> {
    let length = content_length(headers)?;
    let mut codings = tokens(headers, "transfer-encoding");
    match codings.next() {
        None => Ok(length.map_or(Framing::Empty, |n| {
            if n == 0 {
                Framing::Empty
            } else {
                Framing::Length(n)
            }
        })),
        Some(_) if http10 => Err(HeadError::Framing(
            "Transfer-Encoding in an HTTP/1.0 request",
        )),
        Some(_) if length.is_some() => Err(HeadError::Framing(
            "both Transfer-Encoding and Content-Length",
        )),
        Some(coding) if coding.eq_ignore_ascii_case(b"chunked") && codings.next().is_none() => {
            Ok(Framing::Chunked)
        }
        Some(_) => Err(HeadError::Framing("a Transfer-Encoding other than chunked")),
    }
}

/// A response's body framing (RFC 9112 §6.3), given the request's method and the status.
pub fn response_framing(
    headers: &[httparse::Header<'_>],
    status: u16,
    head_request: bool,
) -> Result<Framing, HeadError> {
    if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::Empty);
    }
    let codings: Vec<&[u8]> = tokens(headers, "transfer-encoding").collect();
    if let Some(last) = codings.last() {
        if headers.iter().any(|h| is(h, "content-length")) {
            return Err(HeadError::Framing(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        return Ok(if last.eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    Ok(match content_length(headers)? {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

/// Hop-by-hop fields (RFC 9110 §7.6.1) and the ones a proxy writes itself: never copied through.
pub fn is_hop_by_hop(name: &str) -> bool {
    const FIELDS: [&str; 10] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    ];
    FIELDS.iter().any(|f| name.eq_ignore_ascii_case(f))
}

/// Whether `name` is hop-by-hop or named by one of the message's `Connection` fields.
pub fn is_connection_specific(headers: &[httparse::Header<'_>], name: &str) -> bool {
    is_hop_by_hop(name)
        || tokens(headers, "connection").any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
}

pub fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct ChunkError(&'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size { value: u64, digits: u8, ext: bool },
    SizeLf { value: u64 },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// Walks a chunked body as it streams past, to find where it ends; optionally extracts the data
/// (for an HTTP/1.0 client, which cannot be sent chunks).
#[derive(Debug)]
pub struct ChunkedScanner {
    state: Chunk,
    line: usize,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        Self {
            state: Chunk::Size {
                value: 0,
                digits: 0,
                ext: false,
            },
            line: 0,
        }
    }
}

impl ChunkedScanner {
    pub fn is_done(&self) -> bool {
        self.state == Chunk::Done
    }

    /// Scans `input`; returns how many bytes belong to this body (all of `input` unless the body
    /// ends inside it). With `data`, the chunks' data is appended to it.
    pub fn scan(
        &mut self,
        input: &[u8],
        mut data: Option<&mut Vec<u8>>,
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() && self.state != Chunk::Done {
            if let Chunk::Data(left) = self.state {
                let n = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(input.len() - i);
                if let Some(out) = data.as_deref_mut() {
                    out.extend_from_slice(&input[i..i + n]);
                }
                i += n;
                let left = left - n as u64;
                self.state = if left == 0 {
                    Chunk::DataCr
                } else {
                    Chunk::Data(left)
                };
                continue;
            }
            let b = input[i];
            i += 1;
            self.line += 1;
            if self.line > MAX_CHUNK_LINE {
                return Err(ChunkError("chunk-size line or trailer section too long"));
            }
            self.state = match (self.state, b) {
                (
                    Chunk::Size {
                        value,
                        digits,
                        ext: false,
                    },
                    _,
                ) if b.is_ascii_hexdigit() => {
                    if digits == 15 {
                        return Err(ChunkError("chunk size too large"));
                    }
                    let d = u64::from((b as char).to_digit(16).unwrap_or(0));
                    Chunk::Size {
                        value: value * 16 + d,
                        digits: digits + 1,
                        ext: false,
                    }
                }
                (Chunk::Size { digits: 0, .. }, _) => return Err(ChunkError("missing chunk size")),
                (Chunk::Size { value, .. }, b'\r') => Chunk::SizeLf { value },
                (Chunk::Size { value, digits, .. }, b';' | b' ' | b'\t') => Chunk::Size {
                    value,
                    digits,
                    ext: true,
                },
                (s @ Chunk::Size { ext: true, .. }, _) if b >= 0x20 && b != 0x7f => s,
                (Chunk::Size { .. }, _) => return Err(ChunkError("invalid chunk-size line")),
                (Chunk::SizeLf { value }, b'\n') => {
                    self.line = 0;
                    if value == 0 {
                        Chunk::TrailerStart
                    } else {
                        Chunk::Data(value)
                    }
                }
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => {
                    self.line = 0;
                    Chunk::Size {
                        value: 0,
                        digits: 0,
                        ext: false,
                    }
                }
                (Chunk::TrailerStart, b'\r') => Chunk::EndLf,
                (Chunk::TrailerLine, b'\r') => Chunk::TrailerLf,
                (Chunk::TrailerStart | Chunk::TrailerLine, b'\n') => {
                    return Err(ChunkError("bare LF in the trailer section"))
                }
                (Chunk::TrailerStart | Chunk::TrailerLine, _) => Chunk::TrailerLine,
                (Chunk::TrailerLf, b'\n') => Chunk::TrailerStart,
                (Chunk::EndLf, b'\n') => Chunk::Done,
                _ => return Err(ChunkError("expected CRLF")),
            };
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing_of(raw: &str) -> Result<Framing, HeadError> {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let head = parse_request(raw.as_bytes(), &mut storage)?.expect("complete head");
        request_framing(head.headers, head.http10)
    }

    #[test]
    fn request_framing_accepts_the_unambiguous_and_refuses_the_rest() {
        let ok = [
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", Framing::Empty),
            (
                "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                Framing::Empty,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n",
                Framing::Length(12),
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 7, 7\r\nContent-Length: 7\r\n\r\n",
                Framing::Length(7),
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n",
                Framing::Chunked,
            ),
        ];
        for (raw, expected) in ok {
            assert_eq!(framing_of(raw), Ok(expected), "{raw:?}");
        }
        let refused = [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5 5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        for raw in refused {
            assert!(
                matches!(framing_of(raw), Err(HeadError::Framing(_))),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn malformed_and_oversized_heads_are_errors_and_partial_ones_wait() {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        assert!(
            parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n", &mut storage)
                .expect("partial is fine")
                .is_none()
        );
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nBad Name: a\r\n\r\n", &mut storage),
            Err(HeadError::Malformed(_))
        ));
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", &mut storage),
            Err(HeadError::Malformed(_))
        ));
        let big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD_BYTES));
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        assert!(matches!(
            parse_request(big.as_bytes(), &mut storage),
            Err(HeadError::TooLarge)
        ));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        assert!(matches!(
            parse_request(raw.as_bytes(), &mut storage),
            Err(HeadError::TooManyHeaders)
        ));
    }

    #[test]
    fn response_framing_follows_status_method_and_fields() {
        let framing = |raw: &str, head: bool| {
            let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let r = parse_response(raw.as_bytes(), &mut storage)
                .expect("valid")
                .expect("complete");
            response_framing(r.headers, r.status, head)
        };
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false),
            Ok(Framing::Length(3))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true),
            Ok(Framing::Empty)
        );
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\n\r\n", false),
            Ok(Framing::Empty)
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\n\r\n", false),
            Ok(Framing::UntilClose)
        );
        assert!(framing(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            false
        )
        .is_err());
    }

    #[test]
    fn connection_tokens_decide_keep_alive_and_name_extra_hop_by_hop_fields() {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let h = parse_request(
            b"GET / HTTP/1.1\r\nConnection: x-private, Close\r\n\r\n",
            &mut storage,
        )
        .expect("valid")
        .expect("complete");
        assert!(!keep_alive(h.headers, false));
        assert!(is_connection_specific(h.headers, "X-Private"));
        assert!(is_connection_specific(h.headers, "Transfer-Encoding"));
        assert!(!is_connection_specific(h.headers, "x-request-id"));
        assert!(keep_alive(&[], false));
        assert!(!keep_alive(&[], true));
    }

    #[test]
    fn chunked_scanner_finds_the_end_in_any_split_and_extracts_the_data() {
        let body = b"5;name=v\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let mut next = b"GET / HTTP/1.1".to_vec();
        let mut input = body.to_vec();
        input.append(&mut next);
        for split in 0..input.len() {
            let mut s = ChunkedScanner::default();
            let mut data = Vec::new();
            let a = s.scan(&input[..split], Some(&mut data)).expect("valid");
            assert_eq!(a, split.min(body.len()));
            let b = s.scan(&input[a..], Some(&mut data)).expect("valid");
            assert!(s.is_done());
            assert_eq!(a + b, body.len(), "split at {split}");
            assert_eq!(data, b"hello0123456789abcdef");
        }
    }

    #[test]
    fn chunked_scanner_refuses_malformed_bodies() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXY",
            b"5\nhello\r\n",
            b"fffffffffffffffff\r\n",
            b"\r\n",
            b"0\r\nbad\ntrailer\r\n\r\n",
        ] {
            let mut s = ChunkedScanner::default();
            assert!(s.scan(bad, None).is_err(), "{bad:?}");
        }
    }
}
