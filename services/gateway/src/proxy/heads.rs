//! The heads the gateway writes: the request head the target gets (hop-by-hop fields dropped,
//! `x-forwarded-*` added as the ALB does, `x-request-id` accepted or generated) and the response
//! head the client gets; and the request line parsed into a [`Route`].

use super::{Exchange, Route};
use crate::h1::{self, Framing, HeadError, MAX_HEADERS};
use crate::targets::Target;
use crate::Gateway;
use common::telemetry;
use http::{HeaderName, HeaderValue, Method, Uri};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;
use tracing::Span;

pub(super) fn push_connection(out: &mut Vec<u8>, keep_alive: bool, http10: bool) {
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
}

/// The upstream's response head as the client gets it.
pub(super) fn write_response_head(
    out: &mut Vec<u8>,
    head: &h1::ResponseHead<'_, '_>,
    framing: Framing,
    exchange: &Exchange,
    keep_alive: bool,
    request_id: &[u8],
    served_by: &[u8],
) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(head.status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let (mut has_id, mut has_served_by) = (false, false);
    let mut length: Option<&[u8]> = None;
    let named = head.headers.iter().any(|h| h1::is(h, "connection"));
    for h in head.headers {
        if h1::is(h, "content-length") {
            length = Some(h.value);
        }
        if h1::is_hop_by_hop(h.name) || (named && h1::is_connection_specific(head.headers, h.name))
        {
            continue;
        }
        has_id |= h1::is(h, "x-request-id");
        has_served_by |= h1::is(h, "x-served-by");
        h1::push_header(out, h.name.as_bytes(), h.value);
    }
    match framing {
        Framing::Length(n) => h1::push_header(out, b"content-length", n.to_string().as_bytes()),
        // HEAD and 304 answers describe the body they did not send.
        Framing::Empty => {
            if let Some(value) = length.filter(|_| head.status != 204) {
                h1::push_header(out, b"content-length", value.trim_ascii());
            }
        }
        Framing::Chunked if !exchange.http10 => {
            h1::push_header(out, b"transfer-encoding", b"chunked")
        }
        Framing::Chunked | Framing::UntilClose => {}
    }
    if !has_id {
        h1::push_header(out, b"x-request-id", request_id);
    }
    if !has_served_by {
        h1::push_header(out, b"x-served-by", served_by);
    }
    push_connection(out, keep_alive, exchange.http10);
    out.extend_from_slice(b"\r\n");
}

fn is_forwarded_field(name: &str) -> bool {
    [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "expect",
    ]
    .iter()
    .any(|f| name.eq_ignore_ascii_case(f))
}

fn is_trace_field(name: &str) -> bool {
    name.eq_ignore_ascii_case("traceparent") || name.eq_ignore_ascii_case("tracestate")
}

/// A request head read whole: its length in the read buffer, its facts and where it goes.
pub(super) struct ParsedRequest {
    pub head_len: usize,
    pub exchange: Exchange,
    pub route: Route,
    /// The proxied request's span (`Span::none()` unless traces are exported).
    pub span: Span,
}

/// Parses the request head at the start of `buf` and picks its route; for a proxied request,
/// writes the head the upstream gets into `out`. `Ok(None)` until the head is complete.
pub(super) fn prepare(
    gateway: &Gateway,
    buf: &[u8],
    peer_ip: &str,
    out: &mut Vec<u8>,
    request_id: &mut Vec<u8>,
) -> Result<Option<ParsedRequest>, HeadError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Some(head) = h1::parse_request(buf, &mut storage)? else {
        return Ok(None);
    };
    let exchange = exchange_of(&head)?;
    request_id.clear();
    match head.headers.iter().find(|h| h1::is(h, "x-request-id")) {
        Some(h) if !h.value.is_empty() => request_id.extend_from_slice(h.value),
        _ => request_id.extend_from_slice(common::edge::new_request_id().as_bytes()),
    }
    let path_and_query = origin_form(head.target);
    let path = path_and_query.split('?').next().unwrap_or("");
    let group = path
        .starts_with('/')
        .then(|| gateway.group_for(path))
        .flatten();
    let mut span = Span::none();
    let route = match group {
        None => Route::Local(Box::new(local_parts(&head)?)),
        Some(group) => {
            let target = group.pick().cloned();
            if telemetry::exporting() {
                span = proxy_span(&head, &exchange.method, group.name, path);
            }
            let trace = telemetry::trace_fields(&span);
            let upstream = UpstreamHead {
                path_and_query: &path_and_query,
                framing: exchange.framing,
                target: target.as_deref(),
                peer_ip,
                request_id,
                trace: &trace,
            };
            upstream.write(&head, out);
            Route::Group(Arc::clone(group), target)
        }
    };
    Ok(Some(ParsedRequest {
        head_len: head.len,
        exchange,
        route,
        span,
    }))
}

/// A proxied request's server span, continuing the client's `traceparent` if it sent one.
fn proxy_span(head: &h1::RequestHead<'_, '_>, method: &Method, group: &str, path: &str) -> Span {
    let fields = head
        .headers
        .iter()
        .filter_map(|h| std::str::from_utf8(h.value).ok().map(|v| (h.name, v)));
    let parent = telemetry::context_from_fields(fields);
    telemetry::proxy_span(method, group, path, parent)
}

/// The facts of a request the proxy needs after its head has left the buffer.
fn exchange_of(head: &h1::RequestHead<'_, '_>) -> Result<Exchange, HeadError> {
    let started = Instant::now();
    let framing = h1::request_framing(head.headers, head.http10)?;
    let method = Method::from_bytes(head.method.as_bytes())
        .map_err(|_| HeadError::Framing("invalid method"))?;
    Ok(Exchange {
        started,
        method,
        framing,
        keep_alive: h1::keep_alive(head.headers, head.http10),
        http10: head.http10,
        expect_continue: head
            .headers
            .iter()
            .any(|h| h1::is(h, "expect") && h.value.eq_ignore_ascii_case(b"100-continue")),
    })
}

/// The request target in origin form (`/path?query`), the norm; an absolute form is reduced to
/// it, anything else (`*`, authority form) is left as it is and routes nowhere.
fn origin_form(target: &str) -> Cow<'_, str> {
    if target.starts_with('/') {
        return Cow::Borrowed(target);
    }
    let absolute = target.parse::<Uri>().ok().filter(|u| u.scheme().is_some());
    match absolute.as_ref().and_then(Uri::path_and_query) {
        Some(pq) => Cow::Owned(pq.as_str().to_string()),
        None => Cow::Borrowed(""),
    }
}

/// What the head sent upstream is made of, besides the client's own fields.
struct UpstreamHead<'a> {
    path_and_query: &'a str,
    framing: Framing,
    /// The target picked: its authority is the `Host` when the client sent none.
    target: Option<&'a Target>,
    peer_ip: &'a str,
    request_id: &'a [u8],
    /// The gateway span's `traceparent` (and `tracestate`): they replace the client's.
    trace: &'a [(&'static str, String)],
}

impl UpstreamHead<'_> {
    fn write(&self, head: &h1::RequestHead<'_, '_>, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(head.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.path_and_query.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut host: Option<&[u8]> = None;
        let mut forwarded_for: Vec<&[u8]> = Vec::new();
        let mut has_id = false;
        let named = head.headers.iter().any(|h| h1::is(h, "connection"));
        for h in head.headers {
            if h1::is(h, "host") {
                host = Some(h.value);
            } else if h1::is(h, "x-forwarded-for") {
                forwarded_for.push(h.value.trim_ascii());
            }
            let is_id = h1::is(h, "x-request-id");
            has_id |= is_id && !h.value.is_empty();
            let dropped = h1::is_hop_by_hop(h.name)
                || is_forwarded_field(h.name)
                || (!self.trace.is_empty() && is_trace_field(h.name))
                || (named && h1::is_connection_specific(head.headers, h.name))
                || (is_id && h.value.is_empty());
            if !dropped {
                h1::push_header(out, h.name.as_bytes(), h.value);
            }
        }
        if let (None, Some(target)) = (host, self.target) {
            h1::push_header(out, b"host", target.url.authority.as_str().as_bytes());
        }
        match self.framing {
            Framing::Length(n) => h1::push_header(out, b"content-length", n.to_string().as_bytes()),
            Framing::Chunked => h1::push_header(out, b"transfer-encoding", b"chunked"),
            Framing::Empty | Framing::UntilClose => {}
        }
        out.extend_from_slice(b"x-forwarded-for: ");
        for earlier in forwarded_for.iter().filter(|v| !v.is_empty()) {
            out.extend_from_slice(earlier);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(self.peer_ip.as_bytes());
        out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n");
        if let Some(host) = host {
            h1::push_header(out, b"x-forwarded-host", host);
        }
        if !has_id {
            h1::push_header(out, b"x-request-id", self.request_id);
        }
        for (name, value) in self.trace {
            h1::push_header(out, name.as_bytes(), value.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// The head of a request for the gateway's own routes, as `http` types.
fn local_parts(head: &h1::RequestHead<'_, '_>) -> Result<http::request::Parts, HeadError> {
    let bad = |_| HeadError::Framing("a request the gateway cannot represent");
    let mut builder = http::Request::builder()
        .method(head.method)
        .uri(head.target)
        .version(if head.http10 {
            http::Version::HTTP_10
        } else {
            http::Version::HTTP_11
        });
    for h in head.headers {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| HeadError::Framing("invalid header name"))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| HeadError::Framing("invalid header value"))?;
        builder = builder.header(name, value);
    }
    let (parts, ()) = builder.body(()).map_err(bad)?.into_parts();
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GatewayConfig;

    fn gateway() -> Gateway {
        let cfg = GatewayConfig::for_tests(
            &["http://127.0.0.1:9".to_string()],
            &["http://127.0.0.1:10".to_string()],
            &["http://127.0.0.1:11".to_string()],
        )
        .expect("valid targets");
        Gateway::new(cfg)
    }

    fn upstream_head(raw: &str) -> String {
        let (mut out, mut id) = (Vec::new(), Vec::new());
        let parsed = prepare(&gateway(), raw.as_bytes(), "10.0.0.7", &mut out, &mut id)
            .expect("valid")
            .expect("complete");
        assert_eq!(parsed.head_len, raw.len());
        assert!(matches!(parsed.route, Route::Group(..)));
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn the_upstream_head_drops_hop_by_hop_fields_and_adds_the_forwarded_ones() {
        let head = upstream_head(
            "POST /shopping-carts/1/checkout?x=1 HTTP/1.1\r\nHost: shop:8080\r\nConnection: keep-alive, x-private\r\n\
             X-Private: secret\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\nX-Forwarded-For: 203.0.113.9\r\n\
             X-Request-Id: req-1\r\nUpgrade: h2c\r\nExpect: 100-continue\r\nAccept: */*\r\n\r\n",
        );
        assert_eq!(
            head,
            "POST /shopping-carts/1/checkout?x=1 HTTP/1.1\r\nHost: shop:8080\r\nX-Request-Id: req-1\r\n\
             Accept: */*\r\ncontent-length: 2\r\nx-forwarded-for: 203.0.113.9, 10.0.0.7\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: shop:8080\r\n\r\n"
        );
    }

    #[test]
    fn a_request_id_is_generated_when_missing_and_absolute_form_is_reduced() {
        let head = upstream_head("GET http://shop/products/1?a=b HTTP/1.1\r\nHost: shop\r\n\r\n");
        assert!(
            head.starts_with("GET /products/1?a=b HTTP/1.1\r\n"),
            "{head}"
        );
        let id = head
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .expect("generated id");
        assert_eq!(id.len(), 36);
    }

    #[test]
    fn paths_route_by_whole_segments() {
        let gw = gateway();
        let route = |path: &str| {
            let raw = format!("GET {path} HTTP/1.1\r\n\r\n");
            let (mut out, mut id) = (Vec::new(), Vec::new());
            match prepare(&gw, raw.as_bytes(), "1.2.3.4", &mut out, &mut id)
                .expect("valid")
                .expect("complete")
                .route
            {
                Route::Group(g, _) => g.name,
                Route::Local(_) => "local",
            }
        };
        assert_eq!(route("/products/1"), "product");
        assert_eq!(route("/product"), "product");
        assert_eq!(route("/shopping-carts/2/addItem"), "cart");
        assert_eq!(route("/productsx/1"), "local");
        assert_eq!(route("/credit-card-authorizer/authorize"), "local");
        assert_eq!(route("/gateway/targets"), "local");
        assert_eq!(route("*"), "local");
    }
}
