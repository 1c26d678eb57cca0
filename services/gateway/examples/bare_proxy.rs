//! `bare_proxy`: the ceiling of a reverse proxy built the usual way on hyper (its server and
//! hyper-util's pooled client) on this machine.
//!
//! The least such a proxy can do: accept a request, send it to one fixed upstream over hyper-util's
//! pooled keep-alive client, stream the answer back. No routing, health checks, balancing,
//! header rewriting, metrics or request ids. `scripts/bench.sh` measures it beside the gateway
//! and `tcp_relay` (the cost of the extra hop itself: two more socket writes and reads per
//! request, which no proxy avoids). It is why the gateway forwards HTTP/1.1 by hand instead: on
//! the 2-core bench machine this proxy reaches about 0.42 of direct, the gateway about the relay's
//! ratio (docs/performance.md). A proxy that drives its upstream connection inside the client's
//! task does only a little better (an uncommitted experiment: 0.44-0.45).
//!
//! ```text
//! cargo run --release -p gateway --example bare_proxy -- 127.0.0.1:8081
//! ```
//! prints `listening on 127.0.0.1:PORT` (a free port) and serves until killed.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::{StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

type Upstream = (Client<HttpConnector, Body>, http::uri::Authority);

async fn forward(State((client, upstream)): State<Upstream>, mut req: Request) -> Response {
    let mut parts = req.uri().clone().into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(upstream);
    match Uri::from_parts(parts) {
        Ok(uri) => *req.uri_mut() = uri,
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    }
    match client.request(req).await {
        Ok(response) => response.map(Body::new),
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let upstream: http::uri::Authority = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: bare_proxy UPSTREAM_HOST:PORT"))?
        .parse()?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new()).build(connector);
    let app = Router::new()
        .fallback(forward)
        .with_state((client, upstream));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
