//! Minimal HTTP/1.1 keep-alive client built directly on `hyper`'s connection API.
//!
//! Every worker owns exactly one [`Conn`] (so the "pool" is `--concurrency` connections, one per
//! worker, with no shared lock or channel on the hot path). The connection future is driven in
//! the worker's own task (no extra spawned task per connection), which keeps the per-request cost
//! close to that of `wrk`/`oha`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Where requests go: resolved once at start-up.
#[derive(Debug)]
pub struct Target {
    /// `host:port` as given, used for the `Host` header.
    host_header: HeaderValue,
    /// Path prefix of the base URL without trailing slash (usually empty).
    prefix: String,
    addrs: Vec<SocketAddr>,
    /// Original base URL (for reports).
    pub base_url: String,
    /// `--header`: sent with every request.
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Target {
    /// Parse and resolve a base URL such as `http://localhost:8080`.
    pub async fn resolve(
        base_url: &str,
        headers: &[(String, String)],
    ) -> anyhow::Result<Arc<Target>> {
        let headers = headers
            .iter()
            .map(|(name, value)| {
                Ok((
                    HeaderName::from_bytes(name.as_bytes())?,
                    HeaderValue::from_str(value)?,
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .context("invalid --header")?;
        let uri: Uri = base_url
            .trim()
            .parse()
            .with_context(|| format!("invalid --base-url {base_url:?}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => bail!(
                "--base-url {base_url:?}: https is not supported by this load tester \
                 (put it behind a plain-HTTP listener, e.g. the ALB's port 80 listener)"
            ),
            _ => bail!("--base-url {base_url:?} must start with http://"),
        }
        let host = uri
            .host()
            .ok_or_else(|| anyhow!("--base-url {base_url:?} has no host"))?;
        let port = uri.port_u16().unwrap_or(80);
        let host_header = match uri.port_u16() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let host_header = HeaderValue::from_str(&host_header)
            .with_context(|| format!("invalid host in --base-url {base_url:?}"))?;
        let lookup_host = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((lookup_host, port))
            .await
            .with_context(|| format!("cannot resolve host {host:?} of --base-url {base_url:?}"))?
            .collect();
        if addrs.is_empty() {
            bail!("host {host:?} of --base-url {base_url:?} resolved to no address");
        }
        let prefix = uri.path().trim_end_matches('/').to_string();
        Ok(Arc::new(Target {
            host_header,
            prefix,
            addrs,
            base_url: base_url.trim().to_string(),
            headers,
        }))
    }

    /// Build the origin-form request URI for `path` (which starts with `/`).
    fn uri(&self, path: &str) -> anyhow::Result<Uri> {
        if self.prefix.is_empty() {
            Ok(Uri::try_from(path)?)
        } else {
            Ok(Uri::try_from(format!("{}{}", self.prefix, path))?)
        }
    }

    /// Connect a TCP stream to the first address that accepts it.
    async fn connect(&self) -> anyhow::Result<TcpStream> {
        let mut last_err = None;
        for addr in &self.addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => last_err = Some(anyhow!("connect to {addr}: {e}")),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("no address to connect to")))
    }
}

/// What came back from one request.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    /// Value of the `x-served-by` response header, if any.
    pub served_by: Option<HeaderValue>,
    pub body: Bytes,
}

/// Why a request produced no HTTP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Connection refused/reset, protocol error, …
    Transport,
    /// No response within `--timeout`.
    Timeout,
    /// The run's stop time arrived while the request was in flight (not an error of the server).
    Stopped,
}

type ConnFuture = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

struct Live {
    sender: http1::SendRequest<Full<Bytes>>,
    conn: Pin<Box<ConnFuture>>,
    /// The connection future has completed (must not be polled again).
    closed: bool,
}

/// One keep-alive connection, re-established transparently when the server closes it.
pub struct Conn {
    target: Arc<Target>,
    live: Option<Live>,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    /// Number of (re)connects made, for diagnostics.
    pub connects: u64,
    /// Whether the last request was handed to the connection for writing (it may have reached
    /// the server). False when it failed before that: no connection, or the run's stop time
    /// came first. The checkout audit needs it: an unsent request cannot have placed an order.
    last_sent: bool,
}

impl Conn {
    pub fn new(target: Arc<Target>, timeout: Duration) -> Conn {
        Conn {
            target,
            live: None,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
            connects: 0,
            last_sent: false,
        }
    }

    /// See the field `last_sent`: whether the last request may have reached the server.
    pub fn last_sent(&self) -> bool {
        self.last_sent
    }

    /// Open the TCP connection now (used to warm up before the timed phase).
    pub async fn connect(&mut self) -> anyhow::Result<()> {
        self.live = Some(connect_live(&self.target).await?);
        self.connects += 1;
        Ok(())
    }

    /// Send one request and read the whole response body.
    ///
    /// `started` is the caller's "now" (saves a clock read). `stop_at` cuts a request that is still in flight when the run ends ([`Failure::Stopped`]).
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        started: Instant,
        stop_at: Option<Instant>,
    ) -> Result<Resp, Failure> {
        self.request_with(method, path, &[], body, started, stop_at)
            .await
    }

    /// [`Conn::request`] with extra request headers (e.g. `Idempotency-Key`).
    pub async fn request_with(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Option<Bytes>,
        started: Instant,
        stop_at: Option<Instant>,
    ) -> Result<Resp, Failure> {
        let handed = AtomicBool::new(false);
        let res = self
            .exchange(method, path, headers, body, started, stop_at, &handed)
            .await;
        self.last_sent = handed.load(Relaxed);
        res
    }

    /// The body of [`Conn::request_with`]; sets `handed` once the request is given to hyper
    /// for writing (and clears it again when hyper hands an unsent request back).
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Option<Bytes>,
        started: Instant,
        stop_at: Option<Instant>,
        handed: &AtomicBool,
    ) -> Result<Resp, Failure> {
        // Nothing is sent once the run is over: such a request is cut, not half-sent.
        if stop_at.is_some_and(|s| started >= s) {
            return Err(Failure::Stopped);
        }
        let timeout_at = started + self.timeout;
        let (deadline, on_deadline) = match stop_at {
            Some(s) if s < timeout_at => (s, Failure::Stopped),
            _ => (timeout_at, Failure::Timeout),
        };
        // The timer is armed lazily: it may fire earlier than `deadline` (it was armed for an
        // earlier request), in which case it is re-armed. This keeps timer-wheel updates to about
        // one per timeout period instead of one per request, with exact timeout semantics.
        if self.timer.deadline() > deadline || self.timer.is_elapsed() {
            self.timer.as_mut().reset(deadline);
        }

        let uri = self.target.uri(path).map_err(|_| Failure::Transport)?;
        let has_body = body.is_some();
        let mut req = Request::new(Full::new(body.unwrap_or_default()));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        req.headers_mut()
            .insert(HOST, self.target.host_header.clone());
        for (name, value) in &self.target.headers {
            req.headers_mut().append(name.clone(), value.clone());
        }
        if has_body {
            req.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        for (name, value) in headers {
            req.headers_mut().insert(name.clone(), value.clone());
        }

        // At most one retry, and only when the request provably was not sent (stale keep-alive
        // connection closed by the server between two requests).
        let mut req = Some(req);
        for _attempt in 0..2 {
            let Some(r) = req.take() else { break };
            if !self.is_usable() {
                self.live = None;
                let connected = {
                    let target = self.target.clone();
                    let connect = connect_live(&target);
                    tokio::pin!(connect);
                    loop {
                        tokio::select! {
                            biased;
                            res = &mut connect => break res.ok(),
                            _ = self.timer.as_mut() => {
                                if Instant::now() >= deadline {
                                    return Err(on_deadline);
                                }
                                self.timer.as_mut().reset(deadline);
                            }
                        }
                    }
                };
                match connected {
                    Some(live) => {
                        self.live = Some(live);
                        self.connects += 1;
                    }
                    None => return Err(Failure::Transport),
                }
            }
            let outcome = {
                let Conn { live, timer, .. } = &mut *self;
                let Some(Live {
                    sender,
                    conn,
                    closed,
                }) = live.as_mut()
                else {
                    return Err(Failure::Transport);
                };
                let exchange = async {
                    if sender.ready().await.is_err() {
                        return Err(Some(r));
                    }
                    handed.store(true, Relaxed);
                    let resp = sender
                        .try_send_request(r)
                        .await
                        .map_err(|mut e| e.take_message())?;
                    let status = resp.status().as_u16();
                    let served_by = resp.headers().get("x-served-by").cloned();
                    let body = resp
                        .into_body()
                        .collect()
                        .await
                        .map_err(|_| None)?
                        .to_bytes();
                    Ok::<_, Option<Request<Full<Bytes>>>>(Resp {
                        status,
                        served_by,
                        body,
                    })
                };
                tokio::pin!(exchange);
                loop {
                    tokio::select! {
                        biased;
                        res = &mut exchange => break Ok(res),
                        // The connection future only finishes when the connection is gone, e.g.
                        // after a `Connection: close` response, which may still have been
                        // delivered: keep waiting for the exchange (it fails if nothing came).
                        _ = conn.as_mut(), if !*closed => *closed = true,
                        _ = timer.as_mut() => {
                            if Instant::now() >= deadline {
                                break Err(on_deadline);
                            }
                            timer.as_mut().reset(deadline);
                        }
                    }
                }
            };
            match outcome {
                Ok(Ok(resp)) => return Ok(resp),
                Ok(Err(Some(unsent))) => {
                    // Not written to the wire: safe to retry on a fresh connection.
                    handed.store(false, Relaxed);
                    self.live = None;
                    req = Some(unsent);
                }
                Ok(Err(None)) => {
                    self.live = None;
                    return Err(Failure::Transport);
                }
                Err(f) => {
                    // The connection is in an unknown state: drop it.
                    self.live = None;
                    return Err(f);
                }
            }
        }
        Err(Failure::Transport)
    }

    /// Whether the current connection (if any) is still open. Polls the connection future once
    /// so that a close by the server is noticed before we try to reuse it.
    fn is_usable(&mut self) -> bool {
        let Some(live) = self.live.as_mut() else {
            return false;
        };
        if live.closed {
            return false;
        }
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        if live.conn.as_mut().poll(&mut cx).is_ready() {
            live.closed = true;
            return false;
        }
        !live.sender.is_closed()
    }
}

async fn connect_live(target: &Target) -> anyhow::Result<Live> {
    let stream = target.connect().await?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1 handshake")?;
    Ok(Live {
        sender,
        conn: Box::pin(conn),
        closed: false,
    })
}

/// Check that the target accepts TCP connections (clear error before any work starts).
pub async fn preflight(target: &Target) -> anyhow::Result<()> {
    target
        .connect()
        .await
        .with_context(|| format!("base URL {} is not reachable", target.base_url))?;
    Ok(())
}
