//! One client connection: read each request head, send it to its target group's pick over an
//! upstream connection this client connection keeps to itself, and pass the answer back; or hand
//! it to the gateway's own routes (`/health`, `/ready`, `/metrics`, `/gateway/targets`, 404).
//! This module is the policy (routing, failures, keep-alive); [`heads`] writes the heads,
//! [`forward`] the attempts at a target, and [`crate::wire`] moves the bytes.
//!
//! - Bodies stream through in both directions at the size of the read buffer, by their framing,
//!   through the one relay of [`crate::wire`]: nothing is buffered whole except the small bodies of
//!   the gateway's own routes.
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

mod forward;
mod heads;

use crate::h1::{self, Framing, HeadError};
use crate::targets::{Target, TargetGroup};
use crate::wire::{BodyCursor, Wire};
use crate::Gateway;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Buf;
use common::metrics::Metrics;
use common::shutdown::CancellationToken;
use common::ApiError;
use forward::Upstream;
use heads::{push_connection, ParsedRequest};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tower::ServiceExt;
use tracing::Instrument;

/// The ALB's default idle timeout: how long a client may keep the gateway waiting on a read or a
/// write, including between requests on a kept-alive connection.
pub const CLIENT_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

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

/// What reading the next request head came to.
enum Incoming {
    Request(ParsedRequest),
    /// The client closed, or shutdown closed the idle connection.
    Closed,
    /// A head that cannot be parsed or framed, or that took too long.
    Refused(HeadError),
}

pub struct Connection {
    shared: Arc<Shared>,
    client: Wire,
    peer: SocketAddr,
    peer_ip: String,
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

impl Connection {
    pub fn new(shared: Arc<Shared>, client: TcpStream, peer: SocketAddr) -> Self {
        Self {
            shutdown: shared.shutdown.child_token(),
            shared,
            client: Wire::new(client),
            peer,
            peer_ip: peer.ip().to_string(),
            req_out: Vec::with_capacity(1024),
            resp_out: Vec::with_capacity(1024),
            request_id: Vec::with_capacity(64),
            upstreams: Vec::new(),
        }
    }

    /// Serves requests until the client closes, a message cannot be framed, or shutdown.
    pub async fn run(mut self) {
        while let Ok(true) = self.serve_one().await {}
        let _ = self.client.stream.shutdown().await;
    }

    /// One read from the client, within the idle timeout; 0 at its EOF.
    async fn read_client(&mut self) -> Result<usize, Abort> {
        self.client
            .read_within(CLIENT_IDLE_TIMEOUT)
            .await
            .map_err(|_| Abort)
    }

    /// Writes `resp_out` to the client.
    async fn write_client(&mut self) -> Result<(), Abort> {
        let (client, bytes) = (&mut self.client, &self.resp_out);
        client
            .write_within(bytes, CLIENT_IDLE_TIMEOUT)
            .await
            .map_err(|_| Abort)
    }

    /// One request and its answer; `Ok(true)` to read another from this connection.
    async fn serve_one(&mut self) -> Result<bool, Abort> {
        let ParsedRequest {
            exchange,
            route,
            span,
            ..
        } = match self.read_request().await? {
            Incoming::Request(request) => request,
            Incoming::Closed => return Ok(false),
            Incoming::Refused(e) => return self.refuse_head(e).await,
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
                let route = Some(group.path_pattern);
                self.respond(&exchange, error.into_response(), keep, route)
                    .await
            }
            Route::Group(group, Some(target)) => {
                let forwarded = self.forward(exchange, &group, target, &span);
                forwarded.instrument(span.clone()).await
            }
        }
    }

    /// Reads until a request head is whole, and consumes it.
    async fn read_request(&mut self) -> Result<Incoming, Abort> {
        let mut head_deadline = None;
        loop {
            if !self.client.buf.is_empty() {
                let parsed = heads::prepare(
                    &self.shared.gateway,
                    &self.client.buf,
                    &self.peer_ip,
                    &mut self.req_out,
                    &mut self.request_id,
                );
                match parsed {
                    Ok(Some(request)) => {
                        self.client.buf.advance(request.head_len);
                        return Ok(Incoming::Request(request));
                    }
                    Ok(None) => {}
                    Err(e) => return Ok(Incoming::Refused(e)),
                }
            }
            let read = if self.client.buf.is_empty() {
                // Between requests: shutdown closes an idle connection at once.
                let read = self.client.read_within(CLIENT_IDLE_TIMEOUT);
                tokio::select! {
                    read = read => read.map_err(|_| Abort)?,
                    () = self.shutdown.cancelled() => return Ok(Incoming::Closed),
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
                    Err(_) => return Ok(Incoming::Refused(HeadError::TimedOut(limit))),
                }
            };
            if read == 0 {
                return Ok(Incoming::Closed);
            }
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
        let Some(body) = self.read_whole_body(exchange.framing, limit).await? else {
            let error = ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                format!("the body is larger than {limit} bytes"),
            );
            return self
                .respond(&exchange, error.into_response(), false, None)
                .await;
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
        if let Framing::Length(n) = framing {
            if usize::try_from(n).map_or(true, |n| n > limit) {
                return Ok(None);
            }
        }
        // A request body never runs until close: that framing is for responses.
        let mut cursor = BodyCursor::new(match framing {
            Framing::UntilClose => Framing::Empty,
            other => other,
        });
        let mut body = Vec::new();
        loop {
            let used = cursor
                .take(&self.client.buf, Some(&mut body))
                .map_err(|_| Abort)?;
            self.client.buf.advance(used);
            if body.len() > limit {
                return Ok(None);
            }
            if cursor.is_done() {
                return Ok(Some(body));
            }
            if self.read_client().await? == 0 {
                return Err(Abort);
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
}
