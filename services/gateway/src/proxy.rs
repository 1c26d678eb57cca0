//! One client connection: read each request head, send it to its target group's pick over an
//! upstream connection this client connection keeps to itself, and pass the answer back; or hand
//! it to the gateway's own routes (`/health`, `/ready`, `/metrics`, `/gateway/targets`, 404).
//!
//! - Bodies stream through in both directions at the size of the read buffer, by their framing
//!   ([`crate::h1`]): nothing is buffered whole except the small bodies of the gateway's own routes.
//! - Hop-by-hop fields are dropped, `x-forwarded-for/-proto/-host` added as the ALB does,
//!   `x-request-id` accepted or generated, passed on and returned, `x-served-by` kept from the
//!   target (or the gateway's own when it answers itself).
//! - Upstream connections are kept alive and pinned to the client connection (one per target it
//!   has used), so no pool is shared between cores. An idle one the target has closed is noticed
//!   before reuse; an idempotent request that meets a closed reused connection is retried once on a
//!   fresh one (RFC 9110 §9.2.2), anything else gets a 502.
//! - Time limits: connecting (502), the upstream's response head (504) and each upstream read
//!   after it; the client gets [`CLIENT_IDLE_TIMEOUT`] per read or write, as the ALB's idle timeout,
//!   and `HEADER_TIMEOUT_MS` for a whole request head once it has started (408).
//! - Every proxied answer counts against its target ([`Target::record`]): 5xx, connection errors
//!   and timeouts as errors, which drives the automatic target weights.

use crate::h1::{self, ChunkedScanner, Framing, HeadError, MAX_HEADERS};
use crate::targets::{Target, TargetGroup};
use crate::Gateway;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::{Buf, BytesMut};
use common::metrics::Metrics;
use common::shutdown::CancellationToken;
use common::ApiError;
use http::{HeaderName, HeaderValue, Method, StatusCode, Uri};
use http_body_util::BodyExt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::error::Elapsed;
use tower::ServiceExt;

/// The ALB's default idle timeout: how long a client may keep the gateway waiting on a read or a
/// write, including between requests on a kept-alive connection.
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Read at least this much room at a time.
const READ_ROOM: usize = 8 * 1024;

/// What every connection of one gateway shares.
pub struct Shared {
    pub gateway: Arc<Gateway>,
    /// The gateway's own routes, with the common layers.
    pub local: Router,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    served_by: Vec<u8>,
}

impl Shared {
    pub fn new(
        gateway: Arc<Gateway>,
        local: Router,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Self {
        let served_by = gateway.config.service.instance_id.clone().into_bytes();
        Self {
            gateway,
            local,
            metrics,
            shutdown,
            served_by,
        }
    }
}

/// An upstream connection kept for one target.
struct Upstream {
    target: Arc<Target>,
    stream: TcpStream,
    /// Bytes read from the target and not yet passed on.
    buf: BytesMut,
}

impl Upstream {
    /// Whether bytes or an EOF arrived while the connection sat idle (the target closed it, or
    /// sent something unasked): then it must not carry another request. Reads only the readiness
    /// the reactor already recorded, so the healthy case costs no system call.
    fn is_stale(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        !self.buf.is_empty() || self.stream.poll_read_ready(&mut cx).is_ready()
    }

    /// Reads more of the target's answer into `buf` by `deadline`; `Ok(Ok(0))` at its EOF.
    async fn read_more(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> Result<io::Result<usize>, Elapsed> {
        reserve(&mut self.buf);
        tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await
    }
}

/// Ends the client connection without a (further) response: the client left, or an answer was
/// already under way when something failed.
#[derive(Debug)]
struct Abort;

/// One request's facts, copied out of its head.
struct Exchange {
    started: Instant,
    method: Method,
    framing: Framing,
    keep_alive: bool,
    http10: bool,
    expect_continue: bool,
}

impl Exchange {
    fn idempotent(&self) -> bool {
        matches!(
            self.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
        )
    }
}

enum Route {
    /// Proxied: the group and the target picked (none healthy: 503).
    Group(Arc<TargetGroup>, Option<Arc<Target>>),
    /// The gateway's own routes.
    Local(Box<http::request::Parts>),
}

pub struct Connection {
    shared: Arc<Shared>,
    client: TcpStream,
    peer: SocketAddr,
    peer_ip: String,
    /// Bytes read from the client and not yet handled.
    buf: BytesMut,
    /// The request head (and first body bytes) for the upstream.
    req_out: Vec<u8>,
    /// The response head (and first body bytes) for the client.
    resp_out: Vec<u8>,
    request_id: Vec<u8>,
    upstreams: Vec<Upstream>,
    /// A child of the gateway's shutdown token. Waiting on the shared token itself would take its
    /// lock from every connection on both cores for every request; a child has its own.
    shutdown: CancellationToken,
}

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_ROOM {
        buf.reserve(READ_ROOM);
    }
}

/// One read from the client, within the idle timeout.
async fn read_some(client: &mut TcpStream, buf: &mut BytesMut) -> Result<usize, Abort> {
    reserve(buf);
    match tokio::time::timeout(CLIENT_IDLE_TIMEOUT, client.read_buf(buf)).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(_)) | Err(_) => Err(Abort),
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}

impl Connection {
    pub fn new(shared: Arc<Shared>, client: TcpStream, peer: SocketAddr) -> Self {
        Self {
            shutdown: shared.shutdown.child_token(),
            shared,
            client,
            peer,
            peer_ip: peer.ip().to_string(),
            buf: BytesMut::with_capacity(READ_ROOM),
            req_out: Vec::with_capacity(1024),
            resp_out: Vec::with_capacity(1024),
            request_id: Vec::with_capacity(64),
            upstreams: Vec::new(),
        }
    }

    /// Serves requests until the client closes, a message cannot be framed, or shutdown.
    pub async fn run(mut self) {
        // Until the client closes, a message cannot be framed, or shutdown.
        while let Ok(true) = self.serve_one().await {}
        let _ = self.client.shutdown().await;
    }

    async fn read_client(&mut self) -> Result<usize, Abort> {
        read_some(&mut self.client, &mut self.buf).await
    }

    /// Writes `resp_out` to the client.
    async fn write_client(&mut self) -> Result<(), Abort> {
        let bytes = &self.resp_out;
        match tokio::time::timeout(CLIENT_IDLE_TIMEOUT, self.client.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(Abort),
        }
    }

    /// One request and its answer; `Ok(true)` to read another from this connection.
    async fn serve_one(&mut self) -> Result<bool, Abort> {
        let mut head_deadline = None;
        let (exchange, route) = loop {
            if !self.buf.is_empty() {
                match prepare(
                    &self.shared.gateway,
                    &self.buf,
                    &self.peer_ip,
                    &mut self.req_out,
                    &mut self.request_id,
                ) {
                    Ok(Some((head_len, exchange, route))) => {
                        self.buf.advance(head_len);
                        break (exchange, route);
                    }
                    Ok(None) => {}
                    Err(e) => return self.refuse_head(e).await,
                }
            }
            let read = if self.buf.is_empty() {
                // Between requests: shutdown closes an idle connection at once.
                tokio::select! {
                    read = read_some(&mut self.client, &mut self.buf) => read?,
                    () = self.shutdown.cancelled() => return Ok(false),
                }
            } else {
                // Part of a head is here: the rest must follow within the header timeout, or a
                // client sending a byte now and then would hold the connection indefinitely
                // (each read alone stays within the idle timeout).
                let limit = self.shared.gateway.config.header_timeout;
                let deadline =
                    *head_deadline.get_or_insert_with(|| tokio::time::Instant::now() + limit);
                match tokio::time::timeout_at(deadline, self.read_client()).await {
                    Ok(read) => read?,
                    Err(_) => return self.refuse_head(HeadError::TimedOut(limit)).await,
                }
            };
            if read == 0 {
                return Ok(false);
            }
        };
        match route {
            Route::Local(parts) => self.local(exchange, *parts).await,
            Route::Group(group, None) => {
                let error = ApiError::unavailable(
                    "SERVICE_UNAVAILABLE",
                    format!("no healthy target in the {} target group", group.name),
                );
                // The body was not read: the connection cannot carry another request.
                let keep = exchange.framing == Framing::Empty;
                self.respond(
                    &exchange,
                    error.into_response(),
                    keep,
                    Some(group.path_pattern),
                )
                .await
            }
            Route::Group(group, Some(target)) => self.forward(exchange, &group, target).await,
        }
    }

    /// A head that cannot be parsed or framed: a 4xx, and the connection closes (where the next
    /// message would start is unknown).
    async fn refuse_head(&mut self, e: HeadError) -> Result<bool, Abort> {
        let error = match e {
            HeadError::TooLarge | HeadError::TooManyHeaders => ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "HEADERS_TOO_LARGE",
                e.to_string(),
            ),
            HeadError::Malformed(_) | HeadError::Framing(_) => {
                ApiError::bad_request("BAD_REQUEST", e.to_string())
            }
            HeadError::TimedOut(_) => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "REQUEST_TIMEOUT",
                e.to_string(),
            ),
        };
        let exchange = Exchange {
            started: Instant::now(),
            method: Method::GET,
            framing: Framing::Empty,
            keep_alive: false,
            http10: false,
            expect_continue: false,
        };
        self.request_id.clear();
        self.request_id
            .extend_from_slice(common::edge::new_request_id().as_bytes());
        self.respond(&exchange, error.into_response(), false, None)
            .await
    }

    /// The gateway's own routes: the (small) body is read whole and the router answers.
    async fn local(
        &mut self,
        exchange: Exchange,
        mut parts: http::request::Parts,
    ) -> Result<bool, Abort> {
        let limit = self.shared.gateway.config.service.body_limit;
        let body = match self.read_whole_body(exchange.framing, limit).await? {
            Some(body) => body,
            None => {
                let error = ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "PAYLOAD_TOO_LARGE",
                    format!("the body is larger than {limit} bytes"),
                );
                return self
                    .respond(&exchange, error.into_response(), false, None)
                    .await;
            }
        };
        parts.extensions.insert(ConnectInfo(self.peer));
        let request = http::Request::from_parts(parts, Body::from(body));
        let response = match self.shared.local.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let keep = exchange.keep_alive;
        self.respond(&exchange, response, keep, None).await
    }

    /// Reads a request body whole; `None` if it is larger than `limit`.
    async fn read_whole_body(
        &mut self,
        framing: Framing,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, Abort> {
        match framing {
            Framing::Empty | Framing::UntilClose => Ok(Some(Vec::new())),
            Framing::Length(n) => {
                let Ok(n) = usize::try_from(n) else {
                    return Ok(None);
                };
                if n > limit {
                    return Ok(None);
                }
                while self.buf.len() < n {
                    if self.read_client().await? == 0 {
                        return Err(Abort);
                    }
                }
                Ok(Some(self.buf.split_to(n).to_vec()))
            }
            Framing::Chunked => {
                let mut scanner = ChunkedScanner::default();
                let mut body = Vec::new();
                loop {
                    let used = scanner
                        .scan(&self.buf, Some(&mut body))
                        .map_err(|_| Abort)?;
                    self.buf.advance(used);
                    if body.len() > limit {
                        return Ok(None);
                    }
                    if scanner.is_done() {
                        return Ok(Some(body));
                    }
                    if self.read_client().await? == 0 {
                        return Err(Abort);
                    }
                }
            }
        }
    }

    /// Writes a response the gateway made itself (its routes, or an error), body buffered.
    async fn respond(
        &mut self,
        exchange: &Exchange,
        response: Response,
        keep_alive: bool,
        route: Option<&str>,
    ) -> Result<bool, Abort> {
        let keep_alive = keep_alive && !self.shutdown.is_cancelled();
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let out = &mut self.resp_out;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(parts.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in &parts.headers {
            if !h1::is_hop_by_hop(name.as_str()) {
                h1::push_header(out, name.as_str().as_bytes(), value.as_bytes());
            }
        }
        if !parts.headers.contains_key(common::edge::SERVED_BY) {
            h1::push_header(out, b"x-served-by", &self.shared.served_by);
        }
        if !parts.headers.contains_key(common::edge::REQUEST_ID) {
            h1::push_header(out, b"x-request-id", &self.request_id);
        }
        if parts.status != StatusCode::NO_CONTENT && parts.status != StatusCode::NOT_MODIFIED {
            h1::push_header(out, b"content-length", body.len().to_string().as_bytes());
        }
        push_connection(out, keep_alive, exchange.http10);
        out.extend_from_slice(b"\r\n");
        if exchange.method != Method::HEAD {
            out.extend_from_slice(&body);
        }
        if let Some(route) = route {
            self.shared.metrics.observe(
                route,
                &exchange.method,
                parts.status.as_u16(),
                exchange.started.elapsed(),
            );
        }
        self.write_client().await?;
        Ok(keep_alive)
    }

    /// A reused connection to `target` if one is idle and sound, else a new one; `bool` = reused.
    async fn upstream_for(&mut self, target: &Arc<Target>) -> io::Result<(Upstream, bool)> {
        if let Some(i) = self
            .upstreams
            .iter()
            .position(|u| Arc::ptr_eq(&u.target, target))
        {
            let upstream = self.upstreams.swap_remove(i);
            if !upstream.is_stale() {
                return Ok((upstream, true));
            }
        }
        Ok((self.connect(target).await?, false))
    }

    async fn connect(&self, target: &Arc<Target>) -> io::Result<Upstream> {
        let timeout = self.shared.gateway.config.connect_timeout;
        let stream =
            tokio::time::timeout(timeout, TcpStream::connect(target.url.authority.as_str()))
                .await
                .map_err(|_| timed_out("connecting"))??;
        stream.set_nodelay(true)?;
        Ok(Upstream {
            target: Arc::clone(target),
            stream,
            buf: BytesMut::with_capacity(READ_ROOM),
        })
    }

    /// An upstream failure before any of the answer reached the client: 502 or 504, counted.
    async fn upstream_failed(
        &mut self,
        exchange: &Exchange,
        group: &TargetGroup,
        target: &Target,
        failure: Failure,
        keep_alive: bool,
    ) -> Result<bool, Abort> {
        target.record(true);
        let timeout = self.shared.gateway.upstream_timeout;
        let error = match failure {
            Failure::Timeout => {
                tracing::warn!(group = group.name, target = %target.url.url, timeout_ms = timeout.as_millis() as u64, "upstream timed out");
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "GATEWAY_TIMEOUT",
                    format!(
                        "the {} target did not answer within {} ms",
                        group.name,
                        timeout.as_millis()
                    ),
                )
            }
            Failure::Io(detail) => {
                tracing::warn!(group = group.name, target = %target.url.url, error = %detail, "upstream request failed");
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "BAD_GATEWAY",
                    format!("the {} target did not answer", group.name),
                )
                .with_details(detail)
            }
        };
        self.respond(
            exchange,
            error.into_response(),
            keep_alive,
            Some(group.path_pattern),
        )
        .await
    }

    async fn forward(
        &mut self,
        exchange: Exchange,
        group: &TargetGroup,
        target: Arc<Target>,
    ) -> Result<bool, Abort> {
        // The body bytes already read go out with the head, in one write.
        let mut left = 0u64;
        let mut scanner = ChunkedScanner::default();
        let body_done = match exchange.framing {
            Framing::Empty | Framing::UntilClose => true,
            Framing::Length(n) => {
                let take = usize::try_from(n).unwrap_or(usize::MAX).min(self.buf.len());
                self.req_out.extend_from_slice(&self.buf[..take]);
                self.buf.advance(take);
                left = n - take as u64;
                left == 0
            }
            Framing::Chunked => {
                let Ok(used) = scanner.scan(&self.buf, None) else {
                    let error = ApiError::bad_request("BAD_REQUEST", "malformed chunked body");
                    return self
                        .respond(&exchange, error.into_response(), false, None)
                        .await;
                };
                self.req_out.extend_from_slice(&self.buf[..used]);
                self.buf.advance(used);
                scanner.is_done()
            }
        };
        if !body_done && exchange.expect_continue && !exchange.http10 {
            // The Expect field is not forwarded: the gateway asks for the body itself.
            self.resp_out.clear();
            self.resp_out
                .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            self.write_client().await?;
        }

        let upstream_timeout = self.shared.gateway.upstream_timeout;
        let mut attempt = 0;
        // Every way the attempt can fail before the answer starts is one `Step::Failed`, answered
        // (502/504, counted) in one place below.
        // A failure before the body was sent whole leaves the client's stream in an unknown place.
        let keep_before_body = body_done && exchange.keep_alive;
        let attempted: Result<(Upstream, usize, Framing, u16, bool, bool), Step> = async {
            Ok('attempt: loop {
                attempt += 1;
                let (mut upstream, reused) = match self.upstream_for(&target).await {
                    Ok(u) => u,
                    Err(e) => {
                        return Err(Step::Failed(Failure::Io(e.to_string()), keep_before_body));
                    }
                };
                // Retry on a fresh connection only when nothing can have been processed twice.
                let may_retry = reused && body_done && exchange.idempotent() && attempt == 1;
                let sent = tokio::time::timeout(
                    upstream_timeout,
                    upstream.stream.write_all(&self.req_out),
                )
                .await;
                match sent {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) if may_retry => continue 'attempt,
                    Ok(Err(e)) => {
                        return Err(Step::Failed(Failure::Io(e.to_string()), keep_before_body));
                    }
                    Err(_) => return Err(Step::Failed(Failure::Timeout, keep_before_body)),
                }
                // The rest of the body, as the client sends it.
                if !body_done {
                    loop {
                        if self.buf.is_empty() && self.read_client().await? == 0 {
                            return Err(Step::Abort);
                        }
                        let used = match exchange.framing {
                            Framing::Chunked => scanner.scan(&self.buf, None).map_err(|_| Abort)?,
                            _ => usize::try_from(left)
                                .unwrap_or(usize::MAX)
                                .min(self.buf.len()),
                        };
                        let wrote = tokio::time::timeout(
                            upstream_timeout,
                            upstream.stream.write_all(&self.buf[..used]),
                        )
                        .await;
                        self.buf.advance(used);
                        if matches!(exchange.framing, Framing::Length(_)) {
                            left -= used as u64;
                        }
                        match wrote {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => {
                                return Err(Step::Failed(Failure::Io(e.to_string()), false));
                            }
                            Err(_) => {
                                return Err(Step::Failed(Failure::Timeout, false));
                            }
                        }
                        let finished = match exchange.framing {
                            Framing::Chunked => scanner.is_done(),
                            _ => left == 0,
                        };
                        if finished {
                            break;
                        }
                    }
                }
                // The response head; informational answers are passed on (or dropped for HTTP/1.0).
                let deadline = tokio::time::Instant::now() + upstream_timeout;
                loop {
                    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let parsed = h1::parse_response(&upstream.buf, &mut storage);
                    match parsed {
                        Ok(Some(head))
                            if (100..200).contains(&head.status) && head.status != 101 =>
                        {
                            let len = head.len;
                            if !exchange.http10 {
                                self.resp_out.clear();
                                self.resp_out.extend_from_slice(&upstream.buf[..len]);
                                upstream.buf.advance(len);
                                self.write_client().await?;
                            } else {
                                upstream.buf.advance(len);
                            }
                            continue;
                        }
                        Ok(Some(head)) if head.status == 101 => {
                            let detail = "the target switched protocols unasked".to_string();
                            return Err(Step::Failed(Failure::Io(detail), exchange.keep_alive));
                        }
                        Ok(Some(head)) => {
                            let framing = match h1::response_framing(
                                head.headers,
                                head.status,
                                exchange.method == Method::HEAD,
                                head.http10,
                            ) {
                                Ok(f) => f,
                                Err(e) => {
                                    return Err(Step::Failed(
                                        Failure::Io(e.to_string()),
                                        exchange.keep_alive,
                                    ));
                                }
                            };
                            let shutting_down = self.shutdown.is_cancelled();
                            let keep_alive = exchange.keep_alive
                                && !shutting_down
                                && framing != Framing::UntilClose
                                && !(framing == Framing::Chunked && exchange.http10);
                            let reuse = !head.http10
                                && h1::keep_alive(head.headers, false)
                                && framing != Framing::UntilClose;
                            write_response_head(
                                &mut self.resp_out,
                                &head,
                                framing,
                                &exchange,
                                keep_alive,
                                &self.request_id,
                                &self.shared.served_by,
                            );
                            let (len, status) = (head.len, head.status);
                            break 'attempt (upstream, len, framing, status, reuse, keep_alive);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            return Err(Step::Failed(
                                Failure::Io(e.to_string()),
                                exchange.keep_alive,
                            ));
                        }
                    }
                    let read = upstream.read_more(deadline).await;
                    match read {
                        Ok(Ok(0)) | Ok(Err(_)) if may_retry && upstream.buf.is_empty() => {
                            continue 'attempt
                        }
                        Ok(Ok(0)) => {
                            let detail =
                                "the target closed the connection before answering".to_string();
                            return Err(Step::Failed(Failure::Io(detail), exchange.keep_alive));
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            return Err(Step::Failed(
                                Failure::Io(e.to_string()),
                                exchange.keep_alive,
                            ));
                        }
                        Err(_) => {
                            return Err(Step::Failed(Failure::Timeout, exchange.keep_alive));
                        }
                    }
                }
            })
        }
        .await;
        let (mut upstream, head_len, framing, status, reuse_upstream, keep_alive) = match attempted
        {
            Ok(answer) => answer,
            Err(Step::Abort) => return Err(Abort),
            Err(Step::Failed(failure, keep)) => {
                return self
                    .upstream_failed(&exchange, group, &target, failure, keep)
                    .await
            }
        };
        target.record(status >= 500);
        upstream.buf.advance(head_len);

        // The body: the bytes already read go out with the head, the rest as they come.
        let strip = framing == Framing::Chunked && exchange.http10;
        let mut left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let mut scanner = ChunkedScanner::default();
        let mut finished = framing == Framing::Empty;
        loop {
            let used = match framing {
                Framing::Empty => 0,
                Framing::Length(_) => usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(upstream.buf.len()),
                Framing::UntilClose => upstream.buf.len(),
                Framing::Chunked => {
                    let data = if strip {
                        Some(&mut self.resp_out)
                    } else {
                        None
                    };
                    scanner.scan(&upstream.buf, data).map_err(|_| Abort)?
                }
            };
            if !strip {
                self.resp_out.extend_from_slice(&upstream.buf[..used]);
            }
            upstream.buf.advance(used);
            left -= if matches!(framing, Framing::Length(_)) {
                used as u64
            } else {
                0
            };
            finished = finished
                || match framing {
                    Framing::Length(_) => left == 0,
                    Framing::Chunked => scanner.is_done(),
                    _ => false,
                };
            if !self.resp_out.is_empty() {
                self.write_client().await?;
                self.resp_out.clear();
            }
            if finished {
                break;
            }
            let read = upstream
                .read_more(tokio::time::Instant::now() + upstream_timeout)
                .await;
            match read {
                Ok(Ok(0)) if framing == Framing::UntilClose => break,
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Err(Abort),
                Ok(Ok(_)) => {}
            }
        }
        if reuse_upstream && upstream.buf.is_empty() {
            self.upstreams.push(upstream);
        }
        self.shared.metrics.observe(
            group.path_pattern,
            &exchange.method,
            status,
            exchange.started.elapsed(),
        );
        Ok(keep_alive)
    }
}

enum Failure {
    Timeout,
    Io(String),
}

/// How an attempt at a target ended without an answer to pass on.
enum Step {
    /// Answer the client with the failure (`bool`: whether its connection can stay open).
    Failed(Failure, bool),
    Abort,
}

impl From<Abort> for Step {
    fn from(_: Abort) -> Self {
        Self::Abort
    }
}

fn push_connection(out: &mut Vec<u8>, keep_alive: bool, http10: bool) {
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
}

/// The upstream's response head as the client gets it.
fn write_response_head(
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

/// Parses the request head at the start of `buf`; for a proxied request, writes the head the
/// upstream gets into `out`. `Ok(None)` until the head is complete.
fn prepare(
    gateway: &Gateway,
    buf: &[u8],
    peer_ip: &str,
    out: &mut Vec<u8>,
    request_id: &mut Vec<u8>,
) -> Result<Option<(usize, Exchange, Route)>, HeadError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Some(head) = h1::parse_request(buf, &mut storage)? else {
        return Ok(None);
    };
    let started = Instant::now();
    let framing = h1::request_framing(head.headers, head.http10)?;
    let method = Method::from_bytes(head.method.as_bytes())
        .map_err(|_| HeadError::Framing("invalid method"))?;
    request_id.clear();
    match head.headers.iter().find(|h| h1::is(h, "x-request-id")) {
        Some(h) if !h.value.is_empty() => request_id.extend_from_slice(h.value),
        _ => request_id.extend_from_slice(common::edge::new_request_id().as_bytes()),
    }
    let exchange = Exchange {
        started,
        method,
        framing,
        keep_alive: h1::keep_alive(head.headers, head.http10),
        http10: head.http10,
        expect_continue: head
            .headers
            .iter()
            .any(|h| h1::is(h, "expect") && h.value.eq_ignore_ascii_case(b"100-continue")),
    };
    // Origin form (`/path?query`) is the norm; absolute form is reduced to it.
    let absolute;
    let path_and_query = if head.target.starts_with('/') {
        head.target
    } else {
        absolute = head
            .target
            .parse::<Uri>()
            .ok()
            .filter(|u| u.scheme().is_some());
        match absolute.as_ref().and_then(Uri::path_and_query) {
            Some(pq) => pq.as_str(),
            None => "",
        }
    };
    let path = path_and_query.split('?').next().unwrap_or("");
    let group = if path.starts_with('/') {
        gateway.group_for(path)
    } else {
        None
    };
    let Some(group) = group else {
        return Ok(Some((
            head.len,
            exchange,
            Route::Local(Box::new(local_parts(&head)?)),
        )));
    };
    let target = group.pick().cloned();
    out.clear();
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
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
        has_id |= h1::is(h, "x-request-id") && !h.value.is_empty();
        if h1::is_hop_by_hop(h.name)
            || is_forwarded_field(h.name)
            || (named && h1::is_connection_specific(head.headers, h.name))
        {
            continue;
        }
        if h1::is(h, "x-request-id") && h.value.is_empty() {
            continue;
        }
        h1::push_header(out, h.name.as_bytes(), h.value);
    }
    if host.is_none() {
        if let Some(target) = &target {
            h1::push_header(out, b"host", target.url.authority.as_str().as_bytes());
        }
    }
    match framing {
        Framing::Length(n) => h1::push_header(out, b"content-length", n.to_string().as_bytes()),
        Framing::Chunked => h1::push_header(out, b"transfer-encoding", b"chunked"),
        Framing::Empty | Framing::UntilClose => {}
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    for earlier in forwarded_for.iter().filter(|v| !v.is_empty()) {
        out.extend_from_slice(earlier);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(peer_ip.as_bytes());
    out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n");
    if let Some(host) = host {
        h1::push_header(out, b"x-forwarded-host", host);
    }
    if !has_id {
        h1::push_header(out, b"x-request-id", request_id);
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some((
        head.len,
        exchange,
        Route::Group(Arc::clone(group), target),
    )))
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
        let (len, _, route) = prepare(&gateway(), raw.as_bytes(), "10.0.0.7", &mut out, &mut id)
            .expect("valid")
            .expect("complete");
        assert_eq!(len, raw.len());
        assert!(matches!(route, Route::Group(..)));
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
                .2
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
