//! A response head, after informational ones, as the proxy reads it: the first input byte's low
//! bit says whether it answers HEAD, the rest is the upstream's bytes. The same invariants as for
//! requests, and a status code of 100 to 999.
#![no_main]

mod support;

use gateway::h1;
use libfuzzer_sys::fuzz_target;
use support::Outcome;

fn outcome(buf: &[u8], head_request: bool) -> Outcome {
    let mut storage = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
    match h1::parse_response(buf, &mut storage) {
        Ok(None) => Outcome::Partial,
        Ok(Some(head)) => Outcome::Head {
            len: head.len,
            framing: h1::response_framing(head.headers, head.status, head_request, head.http10)
                .map_err(|e| e.to_string()),
        },
        Err(e) => support::refused(&e),
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&flags, mut data)) = input.split_first() else {
        return;
    };
    let head_request = flags & 1 == 1;
    // Informational heads are skipped, as the proxy does (at most a few, as any input).
    loop {
        let mut storage = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
        let Ok(Some(head)) = h1::parse_response(data, &mut storage) else {
            break;
        };
        assert!((100..=999).contains(&head.status), "status {}", head.status);
        assert!(head.len > 0 && head.len <= data.len() && head.len <= h1::MAX_HEAD_BYTES);
        assert_eq!(data[head.len - 1], b'\n');
        let framing =
            h1::response_framing(head.headers, head.status, head_request, head.http10).ok();
        let expected =
            support::reference_response(head.headers, head.status, head_request, head.http10);
        assert_eq!(
            framing, expected,
            "framing differs from the reference rules"
        );
        if !(100..200).contains(&head.status) || head.status == 101 {
            break;
        }
        data = &data[head.len..];
    }
    let whole = outcome(data, head_request);
    support::check_prefixes(data, &whole, |b| outcome(b, head_request));
});
