//! The gateway's HTTP/1.1 engine (`gateway::h1`) against an established one: hyper 1's server for
//! requests and its client for responses, fed the same generated messages over an in-memory
//! duplex. Both must make the same accept/reject decision and frame the body the same way (the same
//! body bytes, and the next pipelined request found at the same place).
//!
//! The gateway is deliberately stricter than hyper where a message's framing is ambiguous or
//! oversized; those refusals are listed in [`ALLOWED_STRICTER`] (the gateway refuses, hyper
//! accepts). The other way round (the gateway accepts what hyper refuses, or frames it
//! differently) is always a failure.
//!
//! `H1_DIFF_SEED` and `H1_DIFF_CASES` change the generated sample (defaults: fixed, 3000 each).

mod h1_gen;

use bytes::Bytes;
use gateway::h1::{self, ChunkedScanner, Framing, HeadError};
use h1_gen::{Rng, NEXT};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Gateway refusals that hyper accepts, each a documented choice (services/gateway/README.md):
/// refusing an ambiguous or oversized message costs a client a 4xx (a target a 502); accepting one
/// is what request smuggling feeds on.
const ALLOWED_STRICTER: [&str; 9] = [
    // hyper takes the last coding of the last field (`gzip, chunked`, `chunked, chunked`, two
    // fields); the gateway takes exactly one field that says `chunked`.
    "a Transfer-Encoding other than chunked",
    // hyper drops Content-Length when Transfer-Encoding is present (RFC 9112 §6.3 allows either).
    "both Transfer-Encoding and Content-Length",
    // hyper reads lengths up to u64::MAX - 2; the gateway 18 digits.
    "Content-Length has more than 18 digits",
    // hyper's client accepts `Content-Length: 5, 5` (its server does not).
    "Content-Length is a list",
    // hyper's heads may grow to ~400 KiB; the gateway's to 16 KiB.
    "the message head is larger than",
    // Leading zeros past 15 hex digits.
    "chunk size too large",
    // hyper allows 16 KiB of chunk extensions and trailers; the gateway 1 KiB.
    "chunk-size line or trailer section too long",
    // hyper accepts control characters in chunk extensions and bare LF inside trailers.
    "invalid chunk extension",
    "bare LF in the trailer section",
];

fn allowed(reason: &str) -> bool {
    ALLOWED_STRICTER.iter().any(|a| reason.contains(a))
}

/// What a parser made of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Refused (or the message ended before its framing did); the reason is informative.
    Refused(String),
    /// The first message's body, and whether the next message started right after it (`None`:
    /// no next message was read, as when hyper closes after an HTTP/1.0 request).
    Accepted {
        body: Vec<u8>,
        next_found: Option<bool>,
    },
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------- the gateway's reading

/// The body of a message with `framing` at the start of `rest`, and how many bytes it took.
fn read_body(framing: Framing, rest: &[u8]) -> Result<(Vec<u8>, usize), String> {
    match framing {
        Framing::Empty => Ok((Vec::new(), 0)),
        Framing::Length(n) => {
            let n = usize::try_from(n).map_err(|e| e.to_string())?;
            if rest.len() < n {
                return Err("incomplete body".into());
            }
            Ok((rest[..n].to_vec(), n))
        }
        Framing::Chunked => {
            let mut scanner = ChunkedScanner::default();
            let mut data = Vec::new();
            let used = scanner
                .scan(rest, Some(&mut data))
                .map_err(|e| e.to_string())?;
            if !scanner.is_done() {
                return Err("incomplete chunked body".into());
            }
            Ok((data, used))
        }
        Framing::UntilClose => Ok((rest.to_vec(), rest.len())),
    }
}

/// The request as the proxy reads it: head, method, framing, body.
fn gateway_request(raw: &[u8]) -> Verdict {
    let mut storage = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
    let head = match h1::parse_request(raw, &mut storage) {
        Ok(Some(head)) => head,
        Ok(None) => return Verdict::Refused("incomplete head".into()),
        Err(e) => return Verdict::Refused(e.to_string()),
    };
    if http::Method::from_bytes(head.method.as_bytes()).is_err() {
        return Verdict::Refused("invalid method".into());
    }
    let framing = match h1::request_framing(head.headers, head.http10) {
        Ok(f) => f,
        Err(e) => return Verdict::Refused(e.to_string()),
    };
    match read_body(framing, &raw[head.len..]) {
        Ok((body, used)) => Verdict::Accepted {
            body,
            next_found: Some(raw[head.len + used..] == *NEXT),
        },
        Err(e) => Verdict::Refused(e),
    }
}

/// The response as the proxy reads it: informational heads skipped, framing by status and method.
fn gateway_response(raw: &[u8], head_request: bool) -> Verdict {
    let mut at = 0;
    loop {
        let mut storage = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
        let head = match h1::parse_response(&raw[at..], &mut storage) {
            Ok(Some(head)) => head,
            Ok(None) => return Verdict::Refused("incomplete head".into()),
            Err(e) => return Verdict::Refused(e.to_string()),
        };
        if (100..200).contains(&head.status) {
            at += head.len;
            continue;
        }
        let framing =
            match h1::response_framing(head.headers, head.status, head_request, head.http10) {
                Ok(f) => f,
                Err(e) => return Verdict::Refused(e.to_string()),
            };
        return match read_body(framing, &raw[at + head.len..]) {
            Ok((body, _)) => Verdict::Accepted {
                body,
                next_found: None,
            },
            Err(e) => Verdict::Refused(e),
        };
    }
}

// ---------------------------------------------------------------- hyper's reading

type Seen = Arc<Mutex<Vec<(String, Result<Vec<u8>, String>)>>>;

/// hyper's server fed `raw`, then end of input; what its service saw, request by request.
async fn hyper_request(raw: &[u8]) -> Verdict {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let record = Arc::clone(&record);
        async move {
            let path = req.uri().path().to_string();
            let body = match req.into_body().collect().await {
                Ok(b) => Ok(b.to_bytes().to_vec()),
                Err(e) => Err(e.to_string()),
            };
            record.lock().expect("lock").push((path, body));
            Ok::<_, Infallible>(hyper::Response::new(Empty::<Bytes>::new()))
        }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(server), service);
    let driver = tokio::spawn(conn);
    // The input is far below the duplex's capacity, so this cannot wait on hyper's answers.
    client.write_all(raw).await.expect("write to the duplex");
    client.shutdown().await.expect("shut the duplex");
    let mut answers = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answers)).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
    let seen = seen.lock().expect("lock").clone();
    match seen.first() {
        None => Verdict::Refused(format!(
            "no request: {}",
            String::from_utf8_lossy(answers.get(..12).unwrap_or(&answers))
        )),
        Some((_, Err(e))) => Verdict::Refused(e.clone()),
        Some((_, Ok(body))) => Verdict::Accepted {
            body: body.clone(),
            next_found: seen.get(1).map(|(path, _)| path == "/next"),
        },
    }
}

/// hyper's client sending GET or HEAD and fed `raw` as the answer, then end of input.
async fn hyper_response(raw: &[u8], head_request: bool) -> Verdict {
    let (client, mut server) = tokio::io::duplex(1 << 20);
    let answer = raw.to_vec();
    let upstream = tokio::spawn(async move {
        let mut request = Vec::new();
        let mut byte = [0u8; 1];
        while !request.ends_with(b"\r\n\r\n") && server.read(&mut byte).await.unwrap_or(0) == 1 {
            request.push(byte[0]);
        }
        let _ = server.write_all(&answer).await;
        let _ = server.shutdown().await;
        // Keep reading so hyper's writes never wait.
        let mut sink = Vec::new();
        let _ = server.read_to_end(&mut sink).await;
    });
    let outcome = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let method = if head_request { "HEAD" } else { "GET" };
        let request = hyper::Request::builder()
            .method(method)
            .uri("/")
            .header("host", "upstream")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(body.to_bytes().to_vec())
    };
    let verdict = match tokio::time::timeout(Duration::from_secs(5), outcome).await {
        Ok(Ok(body)) => Verdict::Accepted {
            body,
            next_found: None,
        },
        Ok(Err(e)) => Verdict::Refused(e),
        Err(_) => Verdict::Refused("hyper timed out".into()),
    };
    upstream.abort();
    verdict
}

// ---------------------------------------------------------------- the comparison

/// `None` when the two agree (or the gateway's refusal is an allowed one), else what differs.
fn disagreement(gateway: &Verdict, hyper: &Verdict, check_next: bool) -> Option<String> {
    match (gateway, hyper) {
        (Verdict::Refused(_), Verdict::Refused(_)) => None,
        (Verdict::Refused(reason), Verdict::Accepted { .. }) if allowed(reason) => None,
        (Verdict::Refused(reason), Verdict::Accepted { .. }) => {
            Some(format!("the gateway refuses ({reason}) what hyper accepts"))
        }
        (Verdict::Accepted { .. }, Verdict::Refused(reason)) => {
            Some(format!("the gateway accepts what hyper refuses ({reason})"))
        }
        (
            Verdict::Accepted {
                body: ours,
                next_found: our_next,
            },
            Verdict::Accepted {
                body: theirs,
                next_found: their_next,
            },
        ) => {
            if ours != theirs {
                Some(format!(
                    "different bodies: gateway {:?}, hyper {:?}",
                    String::from_utf8_lossy(ours),
                    String::from_utf8_lossy(theirs)
                ))
            } else if check_next && their_next.is_some_and(|t| Some(t) != *our_next) {
                Some(format!(
                    "the next request after the body: gateway {our_next:?}, hyper {their_next:?}"
                ))
            } else {
                None
            }
        }
    }
}

fn report(kind: &str, failures: &[(Vec<u8>, String)], cases: u64) -> String {
    let mut out = format!("{} of {cases} {kind} differ:\n", failures.len());
    for (raw, why) in failures.iter().take(12) {
        let shown: String = String::from_utf8_lossy(&raw[..raw.len().min(600)]).into();
        out.push_str(&format!("- {why}\n  {shown:?}\n"));
    }
    out
}

#[tokio::test]
async fn generated_requests_get_the_same_decision_and_framing_as_hypers_server() {
    let seed = env_u64("H1_DIFF_SEED", 0x9112);
    let cases = env_u64("H1_DIFF_CASES", 3000);
    let mut rng = Rng::new(seed);
    let (mut failures, mut accepted_by_both, mut allowed_refusals) = (Vec::new(), 0, 0);
    let mut next_compared = 0;
    for _ in 0..cases {
        let message = h1_gen::request(&mut rng);
        let ours = gateway_request(&message.raw);
        let theirs = hyper_request(&message.raw).await;
        if let Some(why) = disagreement(&ours, &theirs, true) {
            failures.push((message.raw, why));
        } else if let Verdict::Accepted { next_found, .. } = ours {
            accepted_by_both += 1;
            next_compared += u64::from(next_found == Some(true));
        } else if matches!(theirs, Verdict::Accepted { .. }) {
            allowed_refusals += 1;
        }
    }
    eprintln!(
        "{cases} requests: {accepted_by_both} accepted by both ({next_compared} with the next \
         request found after the body), {allowed_refusals} refused by the gateway only (allowed), \
         {} refused by both",
        cases - accepted_by_both - allowed_refusals - failures.len() as u64
    );
    assert!(
        failures.is_empty(),
        "{}",
        report("requests", &failures, cases)
    );
    // The sample must exercise both sides of every decision, or the comparison proves little.
    assert!(
        accepted_by_both > cases / 5,
        "only {accepted_by_both} accepted"
    );
    assert!(allowed_refusals > 0, "no allowed difference was exercised");
    assert!(next_compared > cases / 10, "only {next_compared} pipelined");
}

#[tokio::test]
async fn generated_responses_get_the_same_decision_and_framing_as_hypers_client() {
    let seed = env_u64("H1_DIFF_SEED", 0x9112) ^ 0xffff;
    let cases = env_u64("H1_DIFF_CASES", 3000);
    let mut rng = Rng::new(seed);
    let (mut failures, mut accepted_by_both) = (Vec::new(), 0);
    for _ in 0..cases {
        let message = h1_gen::response(&mut rng);
        let head_request = rng.chance(0.15);
        let ours = gateway_response(&message.raw, head_request);
        let theirs = hyper_response(&message.raw, head_request).await;
        if let Some(why) = disagreement(&ours, &theirs, false) {
            let why = format!("{why} (HEAD request: {head_request})");
            failures.push((message.raw, why));
        } else if matches!(ours, Verdict::Accepted { .. }) {
            accepted_by_both += 1;
        }
    }
    eprintln!("{cases} responses: {accepted_by_both} accepted by both");
    assert!(
        failures.is_empty(),
        "{}",
        report("responses", &failures, cases)
    );
    assert!(
        accepted_by_both > cases / 5,
        "only {accepted_by_both} accepted"
    );
}

/// The comparison itself must be able to fail: a message framed one way by the gateway and
/// another by hyper is reported.
#[tokio::test]
async fn the_comparison_reports_a_framing_difference() {
    // `Content-Length: 5` that the gateway's model reads as 5 and a verdict claiming 4 bytes.
    let raw = [
        &b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"[..],
        NEXT,
    ]
    .concat();
    let ours = gateway_request(&raw);
    let theirs = hyper_request(&raw).await;
    assert_eq!(disagreement(&ours, &theirs, true), None);
    let wrong = Verdict::Accepted {
        body: b"hell".to_vec(),
        next_found: Some(true),
    };
    assert!(disagreement(&ours, &wrong, true).is_some());
    let elsewhere = Verdict::Accepted {
        body: b"hello".to_vec(),
        next_found: Some(false),
    };
    assert!(disagreement(&ours, &elsewhere, true).is_some());
    let refused = Verdict::Refused("x".into());
    assert!(disagreement(&ours, &refused, true).is_some());
    assert!(disagreement(&Verdict::Refused("x".into()), &theirs, true).is_some());
}

/// The head-size refusal is the same whatever the read boundaries (it used to depend on them).
#[test]
fn head_size_is_decided_the_same_for_a_whole_head_and_its_prefixes() {
    let head = format!(
        "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(h1::MAX_HEAD_BYTES)
    );
    let mut storage = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
    assert!(matches!(
        h1::parse_request(head.as_bytes(), &mut storage),
        Err(HeadError::TooLarge)
    ));
    let mut storage = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
    assert!(matches!(
        h1::parse_request(&head.as_bytes()[..h1::MAX_HEAD_BYTES], &mut storage),
        Err(HeadError::TooLarge)
    ));
}
