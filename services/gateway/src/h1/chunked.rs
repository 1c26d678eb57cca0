//! The chunked transfer coding (RFC 9112 §7.1) as it streams past: where a chunked body ends, so
//! it can be passed through unchanged, and optionally its data (for an HTTP/1.0 client, which
//! cannot be sent chunks). Byte by byte, so any split of the input gives the same result, with no
//! allocation of its own and every line bounded.
//!
//! As strict as hyper's decoder or stricter: after the size only whitespace, `;` or CR (`5 5` is
//! not a size of 5), trailer fields must be fields (`name: value`, no bare LF, no folding).

/// The longest chunk-size line (with extensions) and the largest trailer section accepted.
const MAX_CHUNK_LINE: usize = 1024;
/// At most 15 hex digits: the size stays below 2^60, far from overflowing.
const MAX_SIZE_DIGITS: u8 = 15;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct ChunkError(&'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Hex digits of the chunk size.
    Size {
        value: u64,
        digits: u8,
    },
    /// Whitespace after the size: only more of it, `;` or CR may follow.
    SizeWs {
        value: u64,
    },
    /// After `;`: a chunk extension, ignored up to CR.
    Ext {
        value: u64,
    },
    SizeLf {
        value: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the final CRLF.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

/// `tchar` (RFC 9110 §5.6.2): what a field name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Field-value bytes (RFC 9110 §5.5): visible characters, space, tab, obs-text.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

const START: Chunk = Chunk::Size {
    value: 0,
    digits: 0,
};

/// Walks a chunked body as it streams past, to find where it ends.
#[derive(Debug)]
pub struct ChunkedScanner {
    state: Chunk,
    /// Bytes of the current chunk-size line, or of the trailer section so far.
    line: usize,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        Self {
            state: START,
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
            self.state = self.step(b)?;
        }
        Ok(i)
    }

    /// The state after one byte outside chunk data.
    fn step(&mut self, b: u8) -> Result<Chunk, ChunkError> {
        Ok(match (self.state, b) {
            (Chunk::Size { value, digits }, _) if b.is_ascii_hexdigit() => {
                if digits == MAX_SIZE_DIGITS {
                    return Err(ChunkError("chunk size too large"));
                }
                let d = u64::from((b as char).to_digit(16).unwrap_or(0));
                Chunk::Size {
                    value: value * 16 + d,
                    digits: digits + 1,
                }
            }
            (Chunk::Size { digits: 0, .. }, _) => return Err(ChunkError("missing chunk size")),
            (Chunk::Size { value, .. } | Chunk::SizeWs { value }, b' ' | b'\t') => {
                Chunk::SizeWs { value }
            }
            (Chunk::Size { value, .. } | Chunk::SizeWs { value }, b';') => Chunk::Ext { value },
            (Chunk::Size { value, .. } | Chunk::SizeWs { value } | Chunk::Ext { value }, b'\r') => {
                Chunk::SizeLf { value }
            }
            (Chunk::Size { .. } | Chunk::SizeWs { .. }, _) => {
                return Err(ChunkError("invalid chunk-size line"))
            }
            (s @ Chunk::Ext { .. }, _) if is_field_byte(b) => s,
            (Chunk::Ext { .. }, _) => return Err(ChunkError("invalid chunk extension")),
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
                START
            }
            (Chunk::TrailerStart, b'\r') => Chunk::EndLf,
            (Chunk::TrailerStart | Chunk::TrailerName, _) if is_tchar(b) => Chunk::TrailerName,
            (Chunk::TrailerName, b':') => Chunk::TrailerValue,
            (Chunk::TrailerValue, b'\r') => Chunk::TrailerLf,
            (Chunk::TrailerValue, _) if is_field_byte(b) => Chunk::TrailerValue,
            (Chunk::TrailerStart | Chunk::TrailerValue, b'\n') => {
                return Err(ChunkError("bare LF in the trailer section"))
            }
            (Chunk::TrailerStart | Chunk::TrailerName | Chunk::TrailerValue, _) => {
                return Err(ChunkError("malformed trailer field"))
            }
            (Chunk::TrailerLf, b'\n') => Chunk::TrailerStart,
            (Chunk::EndLf, b'\n') => Chunk::Done,
            _ => return Err(ChunkError("expected CRLF")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `input` in pieces of `step` bytes; `Ok(end)` once the body is done.
    fn scan_in_steps(input: &[u8], step: usize) -> Result<Option<usize>, ChunkError> {
        let mut s = ChunkedScanner::default();
        let mut at = 0;
        while at < input.len() && !s.is_done() {
            let piece = &input[at..(at + step).min(input.len())];
            at += s.scan(piece, None)?;
        }
        Ok(s.is_done().then_some(at))
    }

    #[test]
    fn chunked_scanner_finds_the_end_in_any_split_and_extracts_the_data() {
        let body =
            b"5;name=v\r\nhello\r\n10 ; a=\"b c\"\r\n0123456789abcdef\r\n0\r\nX-Trailer: 1\r\n\r\n";
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
        for step in 1..8 {
            assert_eq!(scan_in_steps(&input, step), Ok(Some(body.len())));
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
            // Found by the differential test against hyper: accepted before.
            b"5 5\r\nhello\r\n0\r\n\r\n",
            b"0 x\r\n\r\n",
            b"0\r\n X: y\r\n\r\n",
            b"0\r\nbad\r\n\r\n",
            b"0\r\nX : y\r\n\r\n",
            b"0\r\nX: a\x01b\r\n\r\n",
            b"0\r\nX: 1\n\r\n",
            b"1;\x01\r\na\r\n0\r\n\r\n",
        ] {
            let mut s = ChunkedScanner::default();
            assert!(
                s.scan(bad, None).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn chunked_scanner_accepts_what_rfc_9112_allows() {
        for good in [
            &b"0\r\n\r\n"[..],
            b"A\r\n0123456789\r\n0\r\n\r\n",
            b"1 \t ;x\r\na\r\n0\r\n\r\n",
            b"1;a=\"q s\";b\r\na\r\n0\r\n\r\n",
            b"0\r\nX-A: 1\r\nX-B:\r\n\r\n",
            b"0\r\nX: caf\xc3\xa9\r\n\r\n",
        ] {
            let mut s = ChunkedScanner::default();
            assert_eq!(s.scan(good, None), Ok(good.len()));
            assert!(s.is_done(), "{:?}", String::from_utf8_lossy(good));
        }
    }
}
