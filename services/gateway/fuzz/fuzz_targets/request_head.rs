//! A request head: parsed, framed, and, when chunked, its body scanned. No panic; a head no longer
//! than the input and the limit, ending in LF, self-delimiting; the same decision for every
//! prefix; the framing the reference rules give.
#![no_main]

mod support;

use gateway::h1::{self, ChunkedScanner, Framing};
use libfuzzer_sys::fuzz_target;
use support::Outcome;

fn outcome(buf: &[u8]) -> Outcome {
    let mut storage = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
    match h1::parse_request(buf, &mut storage) {
        Ok(None) => Outcome::Partial,
        Ok(Some(head)) => Outcome::Head {
            len: head.len,
            framing: h1::request_framing(head.headers, head.http10).map_err(|e| e.to_string()),
        },
        Err(e) => support::refused(&e),
    }
}

fuzz_target!(|data: &[u8]| {
    let whole = outcome(data);
    let mut storage = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
    if let Ok(Some(head)) = h1::parse_request(data, &mut storage) {
        assert!(head.len > 0 && head.len <= data.len() && head.len <= h1::MAX_HEAD_BYTES);
        assert_eq!(data[head.len - 1], b'\n');
        let framing = h1::request_framing(head.headers, head.http10).ok();
        let expected = support::reference_request(head.headers, head.http10);
        assert_eq!(
            framing, expected,
            "framing differs from the reference rules"
        );
        if framing == Some(Framing::Chunked) {
            // Whatever follows the head is scanned as its body; the decision must not panic.
            let _ = ChunkedScanner::default().scan(&data[head.len..], None);
        }
    }
    support::check_prefixes(data, &whole, outcome);
});
