//! The reverse proxy: one pooled keep-alive HTTP/1.1 client, request and response bodies streamed
//! through without buffering, hop-by-hop headers stripped, `x-forwarded-*` added, a timeout to
//! the upstream's response head (504) and connection errors (502) counted against the target.

use crate::targets::TargetGroup;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::{IntoResponse, Response};
use common::ApiError;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{StatusCode, Uri, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::time::Duration;

pub type UpstreamClient = Client<HttpConnector, Body>;

/// The shared upstream client: keep-alive pool, `TCP_NODELAY`, a connect timeout.
pub fn client(connect_timeout: Duration) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_keepalive(Some(Duration::from_secs(30)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(50))
        .pool_max_idle_per_host(1024)
        .build(connector)
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes the headers that describe one connection rather than the message (RFC 9110 §7.6.1),
/// including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// Adds `x-forwarded-for` (appending the client's address to any existing list),
/// `x-forwarded-proto` and `x-forwarded-host`, as the ALB does.
pub fn add_forwarded(headers: &mut HeaderMap, client: Option<SocketAddr>) {
    if let Some(addr) = client {
        let ip = addr.ip().to_string();
        let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(existing) if !existing.trim().is_empty() => format!("{existing}, {ip}"),
            _ => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(X_FORWARDED_FOR, v);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert(X_FORWARDED_HOST, host);
    }
}

fn no_healthy_target(group: &TargetGroup) -> Response {
    ApiError::unavailable(
        "SERVICE_UNAVAILABLE",
        format!("no healthy target in the {} target group", group.name),
    )
    .into_response()
}

/// Forwards `req` to a target of `group` picked by weight, and streams the answer back.
pub async fn forward(
    client: &UpstreamClient,
    timeout: Duration,
    group: &TargetGroup,
    req: Request,
) -> Response {
    let Some(target) = group.pick() else {
        return no_healthy_target(group);
    };
    let (mut parts, body) = req.into_parts();
    let client_addr = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr);
    // Same path and query (a reference-counted slice, not a copy), the target's authority.
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(target.url.authority.clone());
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    parts.uri = match Uri::from_parts(uri) {
        Ok(uri) => uri,
        Err(e) => {
            return ApiError::bad_request("BAD_REQUEST", "the request target cannot be forwarded")
                .with_details(e.to_string())
                .into_response()
        }
    };
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    add_forwarded(&mut parts.headers, client_addr);
    // The extensions (connect info, matched path) are ours, not the upstream's.
    parts.extensions = http::Extensions::new();
    let upstream = Request::from_parts(parts, body);

    match tokio::time::timeout(timeout, client.request(upstream)).await {
        Ok(Ok(response)) => {
            target.record(response.status().is_server_error());
            let (mut parts, incoming) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Body::new(incoming))
        }
        Ok(Err(e)) => {
            target.record(true);
            let mut detail = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                detail = format!("{detail}: {s}");
                source = s.source();
            }
            tracing::warn!(group = group.name, target = %target.url.url, error = %detail, "upstream request failed");
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "BAD_GATEWAY",
                format!("the {} target did not answer", group.name),
            )
            .with_details(detail)
            .into_response()
        }
        Err(_) => {
            target.record(true);
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
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert(KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert("x-request-id", HeaderValue::from_static("abc"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, vec!["content-type", "x-request-id"]);
    }

    #[test]
    fn forwarded_for_appends_the_client() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("shop.example:8080"));
        add_forwarded(&mut h, Some(SocketAddr::from(([10, 0, 0, 7], 5555))));
        assert_eq!(
            h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()),
            Some("10.0.0.7")
        );
        assert_eq!(
            h.get(&X_FORWARDED_HOST).and_then(|v| v.to_str().ok()),
            Some("shop.example:8080")
        );
        add_forwarded(&mut h, Some(SocketAddr::from(([127, 0, 0, 1], 1))));
        assert_eq!(
            h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()),
            Some("10.0.0.7, 127.0.0.1")
        );
        assert_eq!(
            h.get(&X_FORWARDED_PROTO).and_then(|v| v.to_str().ok()),
            Some("http")
        );
    }
}
