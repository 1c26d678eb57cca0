//! The chunked scanner fed the same bytes in one piece, a byte at a time and in pieces split at
//! points derived from the input: the same decision, the same end and the same data every time;
//! the data never larger than the input; a body that ended is self-delimiting.
#![no_main]

mod support;

use gateway::h1::ChunkedScanner;
use libfuzzer_sys::fuzz_target;

/// `Err(())` if refused; else whether the body ended, where, and its data.
type Scan = Result<(bool, usize, Vec<u8>), ()>;

fn scan_in(data: &[u8], cuts: &[usize]) -> Scan {
    let mut scanner = ChunkedScanner::default();
    let mut out = Vec::new();
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&data.len())) {
        if scanner.is_done() || cut <= at {
            continue;
        }
        let used = scanner.scan(&data[at..cut], Some(&mut out)).map_err(drop)?;
        assert!(used <= cut - at);
        at += used;
        assert!(
            scanner.is_done() || at == cut,
            "stopped early without ending"
        );
    }
    Ok((scanner.is_done(), at, out))
}

fuzz_target!(|data: &[u8]| {
    let whole = scan_in(data, &[]);
    let bytewise: Vec<usize> = (1..data.len()).collect();
    assert_eq!(scan_in(data, &bytewise), whole, "byte at a time");
    assert_eq!(
        scan_in(data, &support::split_points(data, 8)),
        whole,
        "split"
    );
    if let Ok((done, end, out)) = &whole {
        assert!(out.len() <= *end && *end <= data.len());
        if *done {
            assert!(data[..*end].ends_with(b"\r\n"));
            assert_eq!(scan_in(&data[..*end], &[]), whole, "an ended body alone");
        } else {
            assert_eq!(*end, data.len());
        }
    }
});
