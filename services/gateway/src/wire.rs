//! One end of a proxied exchange, framed: a socket with the bytes read from it and not yet used
//! ([`Wire`]), where a message body stands by its framing ([`BodyCursor`]), and the one body relay
//! ([`relay`]) that passes a body from one wire to another in either direction.
//!
//! In the spirit of mini-redis's `Connection`: the proxy reads heads from a wire's buffer
//! (parsed by [`crate::h1`]), writes heads, and relays bodies, without ever touching a socket's
//! bytes one by one itself.

use crate::h1::{ChunkError, ChunkedScanner, Framing};
use bytes::{Buf, BytesMut};
use std::io;
use std::task::{Context, Waker};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Read at least this much room at a time.
const READ_ROOM: usize = 8 * 1024;

/// A socket and the bytes read from it that are not yet handled.
pub struct Wire {
    pub stream: TcpStream,
    pub buf: BytesMut,
}

impl Wire {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(READ_ROOM),
        }
    }

    /// Reads more into `buf` by `deadline`: the count, 0 at the peer's EOF, or an error (one of
    /// kind `TimedOut` when the deadline passed).
    pub async fn read_more(&mut self, deadline: Instant) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_ROOM {
            self.buf.reserve(READ_ROOM);
        }
        tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
            .await
            .map_err(|_| timed_out("reading"))?
    }

    /// Reads more within `limit`, as [`Wire::read_more`].
    pub async fn read_within(&mut self, limit: Duration) -> io::Result<usize> {
        self.read_more(Instant::now() + limit).await
    }

    /// Writes all of `bytes` within `limit`.
    pub async fn write_within(&mut self, bytes: &[u8], limit: Duration) -> io::Result<()> {
        write_within(&mut self.stream, bytes, limit).await
    }

    /// Whether bytes or an EOF arrived while the connection sat idle (the peer closed it, or
    /// sent something unasked): then it must not carry another request. Reads only the readiness
    /// the reactor already recorded, so the healthy case costs no system call.
    pub fn is_stale(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        !self.buf.is_empty() || self.stream.poll_read_ready(&mut cx).is_ready()
    }
}

async fn write_within(stream: &mut TcpStream, bytes: &[u8], limit: Duration) -> io::Result<()> {
    tokio::time::timeout(limit, stream.write_all(bytes))
        .await
        .map_err(|_| timed_out("writing"))?
}

pub fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}

/// Where a body being read stands: which of the next bytes belong to it, and whether it has
/// ended. The same cursor serves the request body on its way up, the response body on its way
/// back and a body read whole for the gateway's own routes.
#[derive(Debug)]
pub struct BodyCursor {
    framing: Framing,
    /// `Length`: bytes still to come.
    left: u64,
    scanner: ChunkedScanner,
    done: bool,
}

impl BodyCursor {
    pub fn new(framing: Framing) -> Self {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        Self {
            framing,
            left,
            scanner: ChunkedScanner::default(),
            done: framing == Framing::Empty || framing == Framing::Length(0),
        }
    }

    /// How many bytes at the start of `buf` belong to the body (the caller consumes them).
    /// With `data`, the body's payload is appended to it: the bytes themselves, or for a
    /// chunked body its chunks' data without the chunk framing.
    pub fn take(&mut self, buf: &[u8], data: Option<&mut Vec<u8>>) -> Result<usize, ChunkError> {
        let used = match self.framing {
            Framing::Empty => 0,
            Framing::Length(_) => {
                let used = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                self.left -= used as u64;
                self.done = self.left == 0;
                used
            }
            Framing::UntilClose => buf.len(),
            Framing::Chunked => {
                let used = self.scanner.scan(buf, data)?;
                self.done = self.scanner.is_done();
                return Ok(used);
            }
        };
        if let Some(data) = data {
            data.extend_from_slice(&buf[..used]);
        }
        Ok(used)
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The peer closed its side: the end of a body that runs until close, else a truncation.
    fn at_eof(&mut self) -> bool {
        self.done |= self.framing == Framing::UntilClose;
        self.done
    }
}

/// How a relay failed: which side, so the caller can tell a client that left from a target
/// that failed.
#[derive(Debug)]
pub enum RelayError {
    /// Reading the body failed, timed out, or the source closed before its end.
    Read(io::Error),
    /// The body's chunked framing is malformed.
    Framing(ChunkError),
    /// Writing to the sink failed or timed out.
    Write(io::Error),
}

/// Time limits for one relay.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// For each read from the source.
    pub read: Duration,
    /// For each write to the sink.
    pub write: Duration,
}

/// Relays the rest of a body from `from` to `to`, by `body`'s framing: what `from` has buffered,
/// then reads as they come. `out` holds what must reach `to` first (a head, say) and is written
/// together with the first body bytes, then used as the write buffer. With `decode`, a chunked
/// body goes out as its bare data (for an HTTP/1.0 client, which reads until close).
pub async fn relay(
    body: &mut BodyCursor,
    from: &mut Wire,
    to: &mut TcpStream,
    out: &mut Vec<u8>,
    decode: bool,
    limits: Limits,
) -> Result<(), RelayError> {
    loop {
        let used = if decode {
            body.take(&from.buf, Some(out))
        } else {
            body.take(&from.buf, None).inspect(|&used| {
                out.extend_from_slice(&from.buf[..used]);
            })
        }
        .map_err(RelayError::Framing)?;
        from.buf.advance(used);
        if !out.is_empty() {
            write_within(to, out, limits.write)
                .await
                .map_err(RelayError::Write)?;
            out.clear();
        }
        if body.is_done() {
            return Ok(());
        }
        match from.read_within(limits.read).await {
            Ok(0) if body.at_eof() => return Ok(()),
            Ok(0) => {
                let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "closed mid-body");
                return Err(RelayError::Read(eof));
            }
            Ok(_) => {}
            Err(e) => return Err(RelayError::Read(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn a_length_body_takes_exactly_its_bytes_across_reads() {
        let mut body = BodyCursor::new(Framing::Length(5));
        let mut data = Vec::new();
        assert_eq!(body.take(b"abc", Some(&mut data)), Ok(3));
        assert!(!body.is_done());
        assert_eq!(body.take(b"deGET /", Some(&mut data)), Ok(2));
        assert!(body.is_done());
        assert_eq!(data, b"abcde");
        assert_eq!(body.take(b"more", None), Ok(0));
    }

    #[test]
    fn empty_and_zero_length_bodies_are_done_at_once() {
        assert!(BodyCursor::new(Framing::Empty).is_done());
        assert!(BodyCursor::new(Framing::Length(0)).is_done());
        assert!(!BodyCursor::new(Framing::UntilClose).is_done());
    }

    #[test]
    fn a_chunked_body_ends_after_its_last_chunk_and_decodes_on_request() {
        let raw = b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        let mut body = BodyCursor::new(Framing::Chunked);
        let mut data = Vec::new();
        assert_eq!(body.take(raw, Some(&mut data)), Ok(13));
        assert!(body.is_done());
        assert_eq!(data, b"abc");
        assert!(BodyCursor::new(Framing::Chunked)
            .take(b"zz\r\n", None)
            .is_err());
    }

    #[test]
    fn only_a_body_that_runs_until_close_ends_at_eof() {
        assert!(BodyCursor::new(Framing::UntilClose).at_eof());
        assert!(!BodyCursor::new(Framing::Length(3)).at_eof());
        assert!(!BodyCursor::new(Framing::Chunked).at_eof());
    }

    /// Two connected sockets: the wire's peer and the relay's sink with its reader.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.expect("connect"), b.expect("accept").0)
    }

    const LIMITS: Limits = Limits {
        read: Duration::from_secs(5),
        write: Duration::from_secs(5),
    };

    #[tokio::test]
    async fn relay_sends_the_head_with_the_body_and_stops_at_its_end() {
        let (mut source_peer, source) = pair().await;
        let (mut sink, mut sink_peer) = pair().await;
        let mut from = Wire::new(source);
        from.buf.extend_from_slice(b"4\r\nwiki\r\n");
        source_peer
            .write_all(b"0\r\n\r\nNEXT")
            .await
            .expect("write");
        let mut out = b"HEAD\r\n".to_vec();
        let mut body = BodyCursor::new(Framing::Chunked);
        relay(&mut body, &mut from, &mut sink, &mut out, false, LIMITS)
            .await
            .expect("relayed");
        drop(sink);
        let mut got = Vec::new();
        sink_peer.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"HEAD\r\n4\r\nwiki\r\n0\r\n\r\n");
        // What follows the body stays in the wire's buffer, for the next message.
        assert_eq!(&from.buf[..], b"NEXT");
    }

    #[tokio::test]
    async fn relay_reports_a_source_that_closes_mid_body_as_a_read_failure() {
        let (mut source_peer, source) = pair().await;
        let (mut sink, _sink_peer) = pair().await;
        source_peer.write_all(b"abc").await.expect("write");
        drop(source_peer);
        let mut from = Wire::new(source);
        let mut body = BodyCursor::new(Framing::Length(10));
        let failed = relay(
            &mut body,
            &mut from,
            &mut sink,
            &mut Vec::new(),
            false,
            LIMITS,
        )
        .await;
        assert!(matches!(failed, Err(RelayError::Read(_))), "{failed:?}");
    }

    #[tokio::test]
    async fn relay_decodes_chunks_and_ends_an_until_close_body_at_eof() {
        let (mut source_peer, source) = pair().await;
        let (mut sink, mut sink_peer) = pair().await;
        source_peer
            .write_all(b"2\r\nhi\r\n0\r\n\r\n")
            .await
            .expect("write");
        let mut from = Wire::new(source);
        let mut out = Vec::new();
        let mut body = BodyCursor::new(Framing::Chunked);
        relay(&mut body, &mut from, &mut sink, &mut out, true, LIMITS)
            .await
            .expect("decoded");
        source_peer.write_all(b" there").await.expect("write");
        drop(source_peer);
        let mut body = BodyCursor::new(Framing::UntilClose);
        relay(&mut body, &mut from, &mut sink, &mut out, false, LIMITS)
            .await
            .expect("until close");
        drop(sink);
        let mut got = Vec::new();
        sink_peer.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"hi there");
    }
}
