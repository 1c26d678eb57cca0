//! Generated HTTP/1.1 messages for the differential test: mostly well-formed, with the edge
//! cases parsers disagree on mixed in (header-name and value edge characters, duplicate and
//! conflicting Content-Length, Transfer-Encoding variants, both TE and CL, bare LF, obs-fold,
//! huge heads and sizes, HTTP/1.0 vs 1.1, malformed chunk lines and trailers).

/// The request pipelined after every generated one: where it is found shows where the first ended.
pub const NEXT: &[u8] = b"GET /next HTTP/1.1\r\nHost: shop\r\n\r\n";

/// SplitMix64: a seeded, dependency-free generator, so a failure reproduces from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64) < p * (1u64 << 53) as f64
    }

    pub fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }
}

pub struct Message {
    pub raw: Vec<u8>,
}

const FILLER: [&str; 18] = [
    "Accept: */*",
    "User-Agent: gen/1.0",
    "X-Request-Id: abc-123",
    "!#$%&'*+-.^_`|~0aZ: tchar-name",
    "X-Tab:\tvalue\twith\ttabs",
    "X-Obs-Text: caf\u{e9}",
    "X-Trailing: spaces   ",
    "X-Empty:",
    "X-Colon: a:b:c",
    // Invalid: a space or a separator in the name, control characters in the value, no colon.
    "Bad Name: x",
    "Bad(Name): x",
    "X-Ctl: a\u{1}b",
    "X-Del: a\u{7f}b",
    "No-Colon",
    ": empty-name",
    "X-Nul: a\0b",
    "Content-Type: application/json",
    "Connection: x-private, keep-alive",
];

const CL_VALUES: [&str; 16] = [
    "0",
    "5",
    "005",
    " 5 ",
    "+5",
    "-5",
    "5 5",
    "5,5",
    "5, 5",
    "",
    "0x5",
    "5.0",
    "999999999999999999",
    "9999999999999999999",
    "99999999999999999999999",
    "\t5",
];

const TE_VALUES: [&str; 16] = [
    "chunked",
    "Chunked",
    "CHUNKED",
    " chunked ",
    "chunked\t",
    "chunked, gzip",
    "gzip, chunked",
    "chunked, chunked",
    "chunked,",
    ", chunked",
    "identity",
    "gzip",
    "",
    "chunk",
    "chunked;q=1",
    "\"chunked\"",
];

/// How the generated message is framed, which decides the body written after the head.
enum Plan {
    None,
    Length(Vec<String>),
    Chunked(Vec<String>),
    Both(Vec<String>, Vec<String>),
}

fn plan(rng: &mut Rng) -> Plan {
    let cl = |rng: &mut Rng| -> String {
        if rng.chance(0.6) {
            rng.below(40).to_string()
        } else {
            rng.pick(&CL_VALUES).to_string()
        }
    };
    let te = |rng: &mut Rng| -> String {
        if rng.chance(0.5) {
            "chunked".to_string()
        } else {
            rng.pick(&TE_VALUES).to_string()
        }
    };
    match rng.below(10) {
        0 | 1 => Plan::None,
        2..=4 => {
            let first = cl(rng);
            let mut values = vec![first.clone()];
            if rng.chance(0.15) {
                values.push(if rng.chance(0.5) { first } else { cl(rng) });
            }
            Plan::Length(values)
        }
        5..=8 => {
            let mut values = vec![te(rng)];
            if rng.chance(0.1) {
                values.push(te(rng));
            }
            Plan::Chunked(values)
        }
        _ => Plan::Both(vec![cl(rng)], vec![te(rng)]),
    }
}

fn hex(rng: &mut Rng, n: usize) -> String {
    match rng.below(8) {
        0 => format!("{n:X}"),
        1 => format!("0{n:x}"),
        2 => format!("{n:016x}"),
        _ => format!("{n:x}"),
    }
}

fn chunk_ext(rng: &mut Rng) -> &'static str {
    if !rng.chance(0.2) {
        return "";
    }
    rng.pick(&[
        ";a=b",
        ";a",
        "; a=\"q s\"",
        " ;a=1",
        "\t;x",
        " ",
        " x",
        " 5",
        ";\u{1}",
        ";a\tb",
        "x",
        ";\u{e9}",
    ])
}

fn line_end(rng: &mut Rng) -> &'static str {
    if rng.chance(0.97) {
        "\r\n"
    } else {
        rng.pick(&["\n", "\r", "", "\r\r\n", "XY"])
    }
}

/// A chunked body, now and then malformed.
pub fn chunked_body(rng: &mut Rng) -> Vec<u8> {
    let mut out = String::new();
    for _ in 0..rng.below(4) {
        let n = 1 + rng.below(40);
        out.push_str(&hex(rng, n));
        out.push_str(chunk_ext(rng));
        out.push_str(line_end(rng));
        out.extend((0..n).map(|i| char::from(b'a' + (i % 26) as u8)));
        out.push_str(line_end(rng));
    }
    out.push('0');
    if rng.chance(0.02) {
        out.push_str(&format!(";{}", "e".repeat(1100)));
    }
    out.push_str(chunk_ext(rng));
    out.push_str(line_end(rng));
    if rng.chance(0.25) {
        let trailer = rng.pick(&[
            "X-Trailer: 1\r\n",
            "X-T: a\r\nX-U: b\r\n",
            "bad\r\n",
            "X-T: 1\n",
            "X-T: 1\nX-U: 2\r\n",
            " X: y\r\n",
            "X : y\r\n",
            "X: a\u{1}b\r\n",
            "X: caf\u{e9}\r\n",
            "\n",
        ]);
        out.push_str(trailer);
    }
    if rng.chance(0.01) {
        out.push_str(&format!("X-Long: {}\r\n", "t".repeat(1100)));
    }
    out.push_str(line_end(rng));
    out.into_bytes()
}

fn length_body(values: &[String]) -> Vec<u8> {
    let n = values
        .first()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n < 1000)
        .unwrap_or(5);
    (0..n).map(|i| b'A' + (i % 26) as u8).collect()
}

/// Header lines of the message's framing fields, and its body.
fn framing(rng: &mut Rng) -> (Vec<String>, Vec<u8>) {
    let cl_name = |rng: &mut Rng| rng.pick(&["Content-Length", "content-length", "CONTENT-length"]);
    let te_name = |rng: &mut Rng| {
        rng.pick(&[
            "Transfer-Encoding",
            "transfer-encoding",
            "TRANSFER-ENCODING",
        ])
    };
    match plan(rng) {
        Plan::None => (Vec::new(), Vec::new()),
        Plan::Length(values) => {
            let lines = values
                .iter()
                .map(|v| format!("{}: {v}", cl_name(rng)))
                .collect();
            (lines, length_body(&values))
        }
        Plan::Chunked(values) => {
            let lines = values
                .iter()
                .map(|v| format!("{}: {v}", te_name(rng)))
                .collect();
            (lines, chunked_body(rng))
        }
        Plan::Both(cl, te) => {
            let mut lines = vec![
                format!("{}: {}", cl_name(rng), cl[0]),
                format!("{}: {}", te_name(rng), te[0]),
            ];
            if rng.chance(0.5) {
                lines.reverse();
            }
            (lines, chunked_body(rng))
        }
    }
}

/// The head's field lines: the framing ones among some filler, now and then an oversized head.
fn field_lines(rng: &mut Rng, framing_lines: Vec<String>) -> Vec<String> {
    let mut lines = vec!["Host: shop".to_string()];
    for _ in 0..rng.below(4) {
        let line = if rng.chance(0.7) {
            FILLER[rng.below(6)]
        } else {
            rng.pick(&FILLER)
        };
        lines.push(line.to_string());
    }
    for line in framing_lines {
        let at = rng.below(lines.len() + 1);
        lines.insert(at, line);
    }
    if rng.chance(0.02) {
        lines.push(format!("X-Big: {}", "b".repeat(17_000)));
    }
    if rng.chance(0.02) {
        lines.extend((0..100).map(|i| format!("X-{i}: {i}")));
    }
    if rng.chance(0.03) {
        // Obsolete line folding: a continuation line.
        let at = rng.below(lines.len());
        lines[at].push_str("\r\n folded");
    }
    lines
}

/// Joins a start line and field lines into a head, with bare LF line ends now and then.
fn head(rng: &mut Rng, start: &str, lines: &[String]) -> Vec<u8> {
    let all_lf = rng.chance(0.04);
    let mut out = String::new();
    out.push_str(start);
    out.push_str(if all_lf { "\n" } else { "\r\n" });
    for line in lines {
        out.push_str(line);
        out.push_str(if all_lf || rng.chance(0.01) {
            "\n"
        } else {
            "\r\n"
        });
    }
    out.push_str(if all_lf { "\n" } else { "\r\n" });
    out.into_bytes()
}

pub fn request(rng: &mut Rng) -> Message {
    let http10 = rng.chance(0.15);
    let method = if rng.chance(0.8) {
        rng.pick(&["GET", "POST", "PUT", "DELETE"])
    } else {
        rng.pick(&["PATCH", "OPTIONS", "post", "M-SEARCH", "G@T", "GET\u{1}"])
    };
    let target = if rng.chance(0.9) {
        rng.pick(&["/products/1", "/shopping-carts/2/addItem?x=1", "/"])
    } else {
        rng.pick(&["*", "http://shop/products/1", "/a%20b", "/a b", "/\u{e9}"])
    };
    let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
    let (framing_lines, body) = framing(rng);
    let mut lines = field_lines(rng, framing_lines);
    if http10 && rng.chance(0.8) {
        // So that hyper keeps the connection open and the next request shows the framing.
        lines.push("Connection: keep-alive".to_string());
    }
    let mut raw = head(rng, &format!("{method} {target} {version}"), &lines);
    raw.extend_from_slice(&body);
    raw.extend_from_slice(NEXT);
    Message { raw }
}

pub fn response(rng: &mut Rng) -> Message {
    let version = if rng.chance(0.15) {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    let status = if rng.chance(0.8) {
        rng.pick(&["200 OK", "201 Created", "404 Not Found", "503 Unavailable"])
    } else {
        rng.pick(&[
            "204 No Content",
            "304 Not Modified",
            "299 Odd",
            "600 Beyond",
            "999 Max",
            "099 Low",
            "000 Zero",
            "200",
            "200 ",
            "200 caf\u{e9}",
            "20 Short",
            "2000 Long",
        ])
    };
    let (framing_lines, body) = framing(rng);
    let lines = field_lines(rng, framing_lines);
    let mut raw = Vec::new();
    if rng.chance(0.05) {
        raw.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    raw.extend(head(rng, &format!("{version} {status}"), &lines));
    raw.extend_from_slice(&body);
    Message { raw }
}
