//! An OTLP trace receiver for tests: what a collector would get, decoded, on one port that
//! speaks both of the exporter's protocols: HTTP/protobuf (`POST /v1/traces`) and gRPC over
//! cleartext HTTP/2 (`TraceService/Export`).

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One span as the receiver got it; ids in lower-case hex, a root's parent empty.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    pub name: String,
    /// OTLP's span kind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    /// The spans it links to, as (trace id, span id).
    pub links: Vec<(String, String)>,
    /// Every attribute, its value rendered as text.
    pub attributes: Vec<(String, String)>,
    /// OTLP's status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
    /// How it arrived: `grpc` or `http/protobuf`.
    pub protocol: &'static str,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

pub const SPAN_KIND_SERVER: i32 = 2;
pub const SPAN_KIND_CLIENT: i32 = 3;
pub const SPAN_KIND_PRODUCER: i32 = 4;
pub const SPAN_KIND_CONSUMER: i32 = 5;

/// What the receiver keeps: every span, or (a sink for benchmarks) only how many arrived.
#[derive(Default)]
struct Received {
    keep: bool,
    spans: Mutex<Vec<ReceivedSpan>>,
    count: AtomicU64,
}

type Spans = Arc<Received>;

/// Receives spans until dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    spans: Spans,
    stop: CancellationToken,
}

impl OtlpReceiver {
    /// Keeps every span it receives, on an ephemeral port.
    pub async fn start() -> Self {
        Self::start_on(0, true).await
    }

    /// Counts spans without keeping them (a sink for benchmarks), on `port` (0: any).
    pub async fn counting(port: u16) -> Self {
        Self::start_on(port, false).await
    }

    async fn start_on(port: u16, keep: bool) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("its address");
        let spans = Arc::new(Received {
            keep,
            ..Received::default()
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, Arc::clone(&spans), stop.clone()));
        Self { addr, spans, stop }
    }

    /// `http://127.0.0.1:<port>`: the value for `OTEL_EXPORTER_OTLP_ENDPOINT`, either protocol.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans
            .spans
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// How many spans have arrived.
    pub fn count(&self) -> u64 {
        self.spans.count.load(Ordering::Relaxed)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Waits (up to `limit`) until `done` holds for the spans received; returns them either way.
    pub async fn wait_for(
        &self,
        limit: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let spans = self.spans();
            if done(&spans) || tokio::time::Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept(listener: TcpListener, spans: Spans, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let spans = Arc::clone(&spans);
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, Arc::clone(&spans)));
            // HTTP/1.1 for http/protobuf, HTTP/2 with prior knowledge for gRPC.
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Reply = Response<BoxBody<Bytes, Infallible>>;

async fn handle(req: Request<Incoming>, spans: Spans) -> Result<Reply, Infallible> {
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let path = req.uri().path().to_string();
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return Ok(status(StatusCode::BAD_REQUEST)),
    };
    if grpc && path.ends_with(".TraceService/Export") {
        // One length-prefixed message: a compression flag, four length bytes, the message.
        let message = body.get(5..).unwrap_or_default();
        if body.first() != Some(&0) || !record(message, "grpc", &spans) {
            return Ok(status(StatusCode::BAD_REQUEST));
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        // An empty ExportTraceServiceResponse, framed, then the status in the trailers.
        let frames = futures::stream::iter([
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
            Ok(Frame::trailers(trailers)),
        ]);
        let mut reply = Response::new(StreamBody::new(frames).boxed());
        reply.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        return Ok(reply);
    }
    if path == "/v1/traces" {
        if !record(&body, "http/protobuf", &spans) {
            return Ok(status(StatusCode::BAD_REQUEST));
        }
        // An empty ExportTraceServiceResponse is zero bytes of protobuf.
        let mut reply = Response::new(Full::new(Bytes::new()).boxed());
        reply.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        return Ok(reply);
    }
    Ok(status(StatusCode::NOT_FOUND))
}

fn status(code: StatusCode) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::new()).boxed());
    *reply.status_mut() = code;
    reply
}

/// Decodes an export request into the shared list (a counting sink only counts its spans);
/// false if it is not one.
fn record(message: &[u8], protocol: &'static str, spans: &Spans) -> bool {
    if !spans.keep {
        let Some(count) = count_spans(message) else {
            return false;
        };
        spans.count.fetch_add(count, Ordering::Relaxed);
        return true;
    }
    let Ok(request) = ExportTraceServiceRequest::decode(message) else {
        return false;
    };
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource
            .iter()
            .find(|(k, _)| k == "service.name")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        for span in resource_spans
            .scope_spans
            .into_iter()
            .flat_map(|scope| scope.spans)
        {
            received.push(ReceivedSpan {
                service: service.clone(),
                name: span.name,
                kind: span.kind,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                links: span
                    .links
                    .iter()
                    .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                    .collect(),
                attributes: attributes(&span.attributes),
                status: span.status.map_or(0, |s| s.code),
                protocol,
            });
        }
    }
    spans
        .count
        .fetch_add(received.len() as u64, Ordering::Relaxed);
    if let Ok(mut all) = spans.spans.lock() {
        all.extend(received);
    }
    true
}

/// The spans in an encoded export request, found by walking the protobuf wire format
/// (`resource_spans` 1 → `scope_spans` 2 → `spans` 2) without decoding the spans themselves: a
/// benchmark's sink should cost what a collector's receiving end costs, not a test's bookkeeping.
/// `None` if the bytes are not well-formed protobuf.
fn count_spans(request: &[u8]) -> Option<u64> {
    let mut count = 0;
    for resource_spans in embedded(request, 1)? {
        for scope_spans in embedded(resource_spans, 2)? {
            count += embedded(scope_spans, 2)?.len() as u64;
        }
    }
    Some(count)
}

/// The length-delimited fields numbered `number` in one protobuf message, skipping the others.
fn embedded(mut message: &[u8], number: u64) -> Option<Vec<&[u8]>> {
    use prost::encoding::decode_varint;
    let mut found = Vec::new();
    while !message.is_empty() {
        let key = decode_varint(&mut message).ok()?;
        let skip = match key & 7 {
            0 => {
                decode_varint(&mut message).ok()?;
                0
            }
            1 => 8,
            2 => {
                let len = usize::try_from(decode_varint(&mut message).ok()?).ok()?;
                let value = message.get(..len)?;
                if key >> 3 == number {
                    found.push(value);
                }
                len
            }
            5 => 4,
            _ => return None,
        };
        message = message.get(skip..)?;
    }
    Some(found)
}

fn attributes(pairs: &[KeyValue]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(text).unwrap_or_default(),
            )
        })
        .collect()
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    #[test]
    fn the_sink_counts_the_spans_of_an_export_request_without_decoding_them() {
        let span = |name: &str| Span {
            name: name.into(),
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            kind: SPAN_KIND_SERVER,
            ..Span::default()
        };
        let scope = |n: usize| ScopeSpans {
            spans: (0..n).map(|i| span(&format!("s{i}"))).collect(),
            ..ScopeSpans::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    scope_spans: vec![scope(3), scope(1)],
                    ..ResourceSpans::default()
                },
                ResourceSpans {
                    scope_spans: vec![scope(2)],
                    ..ResourceSpans::default()
                },
            ],
        };
        let bytes = request.encode_to_vec();
        assert_eq!(count_spans(&bytes), Some(6));
        assert_eq!(count_spans(&[]), Some(0));
        // Cut short, or not protobuf at all.
        assert_eq!(count_spans(&bytes[..bytes.len() - 3]), None);
        assert_eq!(count_spans(b"\x0f\xff\xff"), None);
    }
}
