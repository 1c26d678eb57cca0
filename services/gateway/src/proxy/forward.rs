//! Forwarding one request to its target: the upstream connections a client connection keeps,
//! the attempt (and its one retry), and the failure policy: what becomes a 502 or a 504, what
//! may be retried, and when the client's connection can stay open.

use super::heads::write_response_head;
use super::{Abort, Connection, Exchange, CLIENT_IDLE_TIMEOUT};
use crate::h1::{self, Framing, MAX_HEADERS};
use crate::targets::{Target, TargetGroup};
use crate::wire::{self, BodyCursor, Limits, RelayError, Wire};
use axum::response::IntoResponse;
use bytes::Buf;
use common::ApiError;
use http::{Method, StatusCode};
use std::io;
use std::sync::Arc;
use tokio::net::TcpStream;

/// An upstream connection kept for one target.
pub(super) struct Upstream {
    target: Arc<Target>,
    wire: Wire,
}

/// Why an attempt at a target produced no answer to pass on.
enum Failure {
    Timeout,
    Io(String),
}

impl Failure {
    fn of(e: &io::Error) -> Self {
        if e.kind() == io::ErrorKind::TimedOut {
            Self::Timeout
        } else {
            Self::Io(e.to_string())
        }
    }
}

/// How an attempt ended without an answer to pass on.
enum Step {
    /// Answer the client with the failure (502/504); `keep_alive`: whether its connection can
    /// stay open (not if its request body was cut off on the way).
    Failed {
        failure: Failure,
        keep_alive: bool,
    },
    /// A reused connection turned out closed before anything was processed: try a fresh one.
    Retry,
    Abort,
}

impl Step {
    fn failed(failure: Failure, keep_alive: bool) -> Self {
        Self::Failed {
            failure,
            keep_alive,
        }
    }
}

impl From<Abort> for Step {
    fn from(_: Abort) -> Self {
        Self::Abort
    }
}

/// The target's answer has begun: its head is rewritten for the client (in `resp_out`) and
/// consumed from the upstream's buffer.
struct Answer {
    upstream: Upstream,
    status: u16,
    framing: Framing,
    /// Whether the upstream connection can carry another request once the body is through.
    reuse_upstream: bool,
    /// Whether the client's connection stays open after this answer.
    keep_alive: bool,
}

/// One attempt's circumstances.
struct Attempt {
    /// On a failure: whether the client's connection can stay open.
    keep_alive: bool,
    /// Whether a connection found closed may be retried on a fresh one: it was reused, and
    /// nothing can have been processed twice (idempotent, sent whole, first attempt).
    may_retry: bool,
}

impl Connection {
    pub(super) async fn forward(
        &mut self,
        exchange: Exchange,
        group: &TargetGroup,
        target: Arc<Target>,
        span: &tracing::Span,
    ) -> Result<bool, Abort> {
        // The body bytes already read go out with the head, in one write.
        let mut body = BodyCursor::new(exchange.framing);
        let Ok(used) = body.take(&self.client.buf, None) else {
            let error = ApiError::bad_request("BAD_REQUEST", "malformed chunked body");
            return self
                .respond(&exchange, error.into_response(), false, None)
                .await;
        };
        self.req_out.extend_from_slice(&self.client.buf[..used]);
        self.client.buf.advance(used);
        if !body.is_done() && exchange.expect_continue && !exchange.http10 {
            // The Expect field is not forwarded: the gateway asks for the body itself.
            self.resp_out.clear();
            self.resp_out
                .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            self.write_client().await?;
        }
        let answer = match self.attempt(&exchange, &target, &mut body).await {
            Ok(answer) => answer,
            Err(Step::Failed {
                failure,
                keep_alive,
            }) => {
                common::telemetry::record_error(span);
                return self
                    .upstream_failed(&exchange, group, &target, failure, keep_alive)
                    .await;
            }
            Err(Step::Abort | Step::Retry) => return Err(Abort),
        };
        target.record(answer.status >= 500);
        common::telemetry::record_status(span, answer.status);
        self.relay_answer(&exchange, group, answer).await
    }

    /// Sends the request and reads the answer's head, retrying once on a fresh connection when
    /// a reused one turns out closed and nothing can have been processed twice (RFC 9110
    /// §9.2.2).
    async fn attempt(
        &mut self,
        exchange: &Exchange,
        target: &Arc<Target>,
        body: &mut BodyCursor,
    ) -> Result<Answer, Step> {
        // A failure before the body was sent whole leaves the client's stream in an unknown place.
        let keep_alive = body.is_done() && exchange.keep_alive;
        let mut first = true;
        loop {
            let (mut upstream, reused) = self
                .upstream_for(target)
                .await
                .map_err(|e| Step::failed(Failure::Io(e.to_string()), keep_alive))?;
            let attempt = Attempt {
                keep_alive,
                may_retry: first && reused && body.is_done() && exchange.idempotent(),
            };
            first = false;
            let answered = match self.send_request(&mut upstream, body, &attempt).await {
                Ok(()) => self.read_answer_head(upstream, exchange, &attempt).await,
                Err(step) => Err(step),
            };
            match answered {
                Err(Step::Retry) => continue,
                answered => return answered,
            }
        }
    }

    /// Writes the request head (with the body bytes already read), then relays the rest of the
    /// body as the client sends it.
    async fn send_request(
        &mut self,
        upstream: &mut Upstream,
        body: &mut BodyCursor,
        attempt: &Attempt,
    ) -> Result<(), Step> {
        let timeout = self.shared.gateway.upstream_timeout;
        match upstream.wire.write_within(&self.req_out, timeout).await {
            Ok(()) => {}
            Err(e) if attempt.may_retry && e.kind() != io::ErrorKind::TimedOut => {
                return Err(Step::Retry)
            }
            Err(e) => return Err(Step::failed(Failure::of(&e), attempt.keep_alive)),
        }
        if body.is_done() {
            return Ok(());
        }
        let limits = Limits {
            read: CLIENT_IDLE_TIMEOUT,
            write: timeout,
        };
        let (client, sink) = (&mut self.client, &mut upstream.wire.stream);
        match wire::relay(body, client, sink, &mut Vec::new(), false, limits).await {
            Ok(()) => Ok(()),
            Err(RelayError::Write(e)) => Err(Step::failed(Failure::of(&e), false)),
            Err(RelayError::Read(_) | RelayError::Framing(_)) => Err(Step::Abort),
        }
    }

    /// Reads the target's response head. Informational answers are passed on (or dropped for
    /// HTTP/1.0); the final one is rewritten for the client into `resp_out`.
    async fn read_answer_head(
        &mut self,
        mut upstream: Upstream,
        exchange: &Exchange,
        attempt: &Attempt,
    ) -> Result<Answer, Step> {
        let deadline = tokio::time::Instant::now() + self.shared.gateway.upstream_timeout;
        let failed = |detail: String| Step::failed(Failure::Io(detail), exchange.keep_alive);
        loop {
            let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match h1::parse_response(&upstream.wire.buf, &mut storage) {
                Ok(Some(head)) if head.status == 101 => {
                    return Err(failed("the target switched protocols unasked".into()));
                }
                Ok(Some(head)) if head.status < 200 => {
                    let len = head.len;
                    if !exchange.http10 {
                        self.resp_out.clear();
                        self.resp_out.extend_from_slice(&upstream.wire.buf[..len]);
                        self.write_client().await?;
                    }
                    upstream.wire.buf.advance(len);
                    continue;
                }
                Ok(Some(head)) => {
                    let is_head = exchange.method == Method::HEAD;
                    let framing =
                        h1::response_framing(head.headers, head.status, is_head, head.http10)
                            .map_err(|e| failed(e.to_string()))?;
                    let keep_alive = exchange.keep_alive
                        && !self.shutdown.is_cancelled()
                        && framing != Framing::UntilClose
                        && !(framing == Framing::Chunked && exchange.http10);
                    let reuse_upstream = !head.http10
                        && h1::keep_alive(head.headers, false)
                        && framing != Framing::UntilClose;
                    write_response_head(
                        &mut self.resp_out,
                        &head,
                        framing,
                        exchange,
                        keep_alive,
                        &self.request_id,
                        &self.shared.served_by,
                    );
                    let (len, status) = (head.len, head.status);
                    upstream.wire.buf.advance(len);
                    return Ok(Answer {
                        upstream,
                        status,
                        framing,
                        reuse_upstream,
                        keep_alive,
                    });
                }
                Ok(None) => {}
                Err(e) => return Err(failed(e.to_string())),
            }
            match upstream.wire.read_more(deadline).await {
                // A timeout is not a closed connection: it is never retried.
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return Err(Step::failed(Failure::Timeout, exchange.keep_alive));
                }
                Ok(0) | Err(_) if attempt.may_retry && upstream.wire.buf.is_empty() => {
                    return Err(Step::Retry);
                }
                Ok(0) => {
                    let detail = "the target closed the connection before answering";
                    return Err(failed(detail.into()));
                }
                Ok(_) => {}
                Err(e) => return Err(failed(e.to_string())),
            }
        }
    }

    /// Passes the answer's body on behind its head, then keeps the upstream connection if it
    /// can carry another request.
    async fn relay_answer(
        &mut self,
        exchange: &Exchange,
        group: &TargetGroup,
        mut answer: Answer,
    ) -> Result<bool, Abort> {
        let mut body = BodyCursor::new(answer.framing);
        // An HTTP/1.0 client cannot read chunks: it gets the bare data, until close.
        let decode = answer.framing == Framing::Chunked && exchange.http10;
        let limits = Limits {
            read: self.shared.gateway.upstream_timeout,
            write: CLIENT_IDLE_TIMEOUT,
        };
        let (from, to) = (&mut answer.upstream.wire, &mut self.client.stream);
        wire::relay(&mut body, from, to, &mut self.resp_out, decode, limits)
            .await
            .map_err(|_| Abort)?;
        self.resp_out.clear();
        if answer.reuse_upstream && answer.upstream.wire.buf.is_empty() {
            self.upstreams.push(answer.upstream);
        }
        self.shared.metrics.observe(
            group.path_pattern,
            &exchange.method,
            answer.status,
            exchange.started.elapsed(),
        );
        Ok(answer.keep_alive)
    }

    /// A reused connection to `target` if one is idle and sound, else a new one; `bool` = reused.
    async fn upstream_for(&mut self, target: &Arc<Target>) -> io::Result<(Upstream, bool)> {
        if let Some(i) = self
            .upstreams
            .iter()
            .position(|u| Arc::ptr_eq(&u.target, target))
        {
            let upstream = self.upstreams.swap_remove(i);
            if !upstream.wire.is_stale() {
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
                .map_err(|_| wire::timed_out("connecting"))??;
        stream.set_nodelay(true)?;
        Ok(Upstream {
            target: Arc::clone(target),
            wire: Wire::new(stream),
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
        let route = Some(group.path_pattern);
        self.respond(exchange, error.into_response(), keep_alive, route)
            .await
    }
}
