//! What the fuzz targets share: an outcome that can be compared across splits of the same input,
//! a reference reading of the framing rules (written apart from `gateway::h1`, plainly, to be
//! compared with it), and split points derived from the input.
#![allow(dead_code)] // each target uses part of it

use gateway::h1::{Framing, HeadError};

/// What parsing a buffer decided, comparable between a buffer and its prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The head is not complete yet.
    Partial,
    /// A complete head of `len` bytes, and its framing (or the framing error's text).
    Head {
        len: usize,
        framing: Result<Framing, String>,
    },
    /// Refused: the error's kind (its text may name a different byte).
    Refused(&'static str),
}

pub fn refused(e: &HeadError) -> Outcome {
    Outcome::Refused(match e {
        HeadError::TooLarge => "too large",
        HeadError::TooManyHeaders => "too many headers",
        HeadError::Malformed(_) => "malformed",
        HeadError::Framing(_) => "framing",
        HeadError::TimedOut(_) => "timed out",
    })
}

/// Checks that parsing is decided the same whatever the read boundaries: a prefix of `data` is
/// either still partial or already decided exactly as the whole is.
pub fn check_prefixes(data: &[u8], whole: &Outcome, parse: impl Fn(&[u8]) -> Outcome) {
    let mut points: Vec<usize> = split_points(data, 6);
    if let Outcome::Head { len, .. } = whole {
        points.extend([len - 1, *len]);
        // A complete head is self-delimiting: the same head without what follows it.
        assert_eq!(&parse(&data[..*len]), whole, "head alone");
        assert_eq!(
            parse(&data[..len - 1]),
            Outcome::Partial,
            "head minus a byte"
        );
    }
    for p in points.into_iter().filter(|&p| p < data.len()) {
        let at = parse(&data[..p]);
        assert!(
            at == Outcome::Partial || same_decision(&at, whole),
            "prefix {p} decided {at:?}, the whole {whole:?}"
        );
    }
    // A refusal is final: more bytes cannot make the message acceptable.
    if let Outcome::Refused(_) = whole {
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"\r\n\r\n");
        let then = parse(&longer);
        assert!(
            same_decision(&then, whole),
            "refused, then {then:?} with more bytes"
        );
    }
}

/// Refusals count as one decision: which one is reported (431 or 400) may depend on how much
/// of a bad head has arrived.
fn same_decision(a: &Outcome, b: &Outcome) -> bool {
    matches!((a, b), (Outcome::Refused(_), Outcome::Refused(_))) || a == b
}

fn fields<'a>(headers: &'a [httparse::Header<'a>], name: &str) -> Vec<&'a [u8]> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.trim_ascii())
        .collect()
}

/// `Content-Length` as the gateway's rules read it: `Ok(None)` without the field, `Err` when the
/// values are not one 1-18 digit decimal number.
fn reference_length(headers: &[httparse::Header<'_>]) -> Result<Option<u64>, ()> {
    let mut values = fields(headers, "content-length").into_iter().map(|v| {
        let digits = !v.is_empty() && v.len() <= 18 && v.iter().all(u8::is_ascii_digit);
        if digits {
            std::str::from_utf8(v)
                .map_err(drop)?
                .parse::<u64>()
                .map_err(drop)
        } else {
            Err(())
        }
    });
    let Some(first) = values.next() else {
        return Ok(None);
    };
    let first = first?;
    for v in values {
        if v? != first {
            return Err(());
        }
    }
    Ok(Some(first))
}

/// `None` without Transfer-Encoding; `Some(true)` for exactly one field saying `chunked`.
fn reference_chunked(headers: &[httparse::Header<'_>]) -> Option<bool> {
    let te = fields(headers, "transfer-encoding");
    (!te.is_empty()).then(|| te.len() == 1 && te[0].eq_ignore_ascii_case(b"chunked"))
}

/// A request's framing by the rules in services/gateway/README.md, without the gateway's code.
pub fn reference_request(headers: &[httparse::Header<'_>], http10: bool) -> Option<Framing> {
    let has_cl = !fields(headers, "content-length").is_empty();
    match reference_chunked(headers) {
        Some(true) if !http10 && !has_cl => Some(Framing::Chunked),
        Some(_) => None,
        None => match reference_length(headers).ok()? {
            None | Some(0) => Some(Framing::Empty),
            Some(n) => Some(Framing::Length(n)),
        },
    }
}

/// A response's framing by the same rules, given the status and whether it answers HEAD.
pub fn reference_response(
    headers: &[httparse::Header<'_>],
    status: u16,
    head_request: bool,
    http10: bool,
) -> Option<Framing> {
    if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        return Some(Framing::Empty);
    }
    let has_cl = !fields(headers, "content-length").is_empty();
    match reference_chunked(headers) {
        Some(true) if !http10 && !has_cl => Some(Framing::Chunked),
        Some(_) => None,
        None => match reference_length(headers).ok()? {
            Some(0) => Some(Framing::Empty),
            Some(n) => Some(Framing::Length(n)),
            None => Some(Framing::UntilClose),
        },
    }
}

/// `n` split points in `0..=data.len()`, derived from the data (FNV-1a, then xorshift), so a
/// crash reproduces from the input alone.
pub fn split_points(data: &[u8], n: usize) -> Vec<usize> {
    let mut h = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut points: Vec<usize> = (0..n)
        .map(|_| {
            h ^= h << 13;
            h ^= h >> 7;
            h ^= h << 17;
            (h % (data.len() as u64 + 1)) as usize
        })
        .collect();
    points.sort_unstable();
    points
}
