//! Logs and traces.
//!
//! - Logs: human-readable text for a terminal, JSON lines for log shippers (CloudWatch), filtered
//!   by `RUST_LOG`.
//! - Traces: OpenTelemetry, only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or its `_TRACES_` form) is
//!   set, exported over OTLP by gRPC or HTTP/protobuf from the SDK's own thread. Two kinds of
//!   spans, by what runs inside them:
//!   - work that logs and makes child spans of its own (a delivery the warehouse handles, its
//!     ledger batch, the gateway's proxying) is a `tracing` span, turned into an OpenTelemetry
//!     span by the `tracing-opentelemetry` bridge; it records `trace_id`, so every log line
//!     inside carries the id;
//!   - an inbound request ([`RequestSpan`]) and what it calls ([`LeafSpan`]: outbound calls,
//!     publishes with their confirm wait, store calls) are made with the OpenTelemetry API
//!     directly. They are the hot path, and a bridged span costs a registry slot, a field
//!     visitor and a lock at every poll. A request's log lines still carry its `trace_id`
//!     through a log-only `tracing` span, made only when the logs show INFO spans.
//!
//!   W3C `traceparent` carries a trace across HTTP ([`LeafSpan::inject_http`],
//!   [`extract_http`]) and AMQP (`messaging`).
//!
//! Unset, nothing is exported and nothing is spent: [`exporting`] is one relaxed load, and every
//! span constructor here answers an empty span without building anything.

use crate::config::{parse_rate, redact_url, ConfigError, Env, LogFormat, ServiceConfig};
use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;
use tracing::Span;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{fmt as logfmt, prelude::*, Layer};

/// Whether this process exports spans (set once, by [`init`] with an endpoint).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// The tracer of the spans made without the bridge ([`RequestSpan`], [`LeafSpan`]), set by
/// [`init`] when exporting.
static DIRECT_TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Whether the logs show INFO spans (`RUST_LOG` at info or finer): only then is `trace_id`
/// recorded on the root spans, since only a log line can show it.
static LOG_TRACE_ID: AtomicBool = AtomicBool::new(true);

/// Whether spans are being exported: the one check the hot paths make before building a span.
#[inline]
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// `OTEL_EXPORTER_OTLP_PROTOCOL`: how spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

impl fmt::Display for OtlpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        })
    }
}

impl FromStr for OtlpProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            "http/json" => Err("http/json is not supported; use grpc or http/protobuf".into()),
            _ => Err("expected grpc or http/protobuf".into()),
        }
    }
}

/// `OTEL_TRACES_SAMPLER`, the specification's names (with `OTEL_TRACES_SAMPLER_ARG` as the ratio).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerChoice {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio(f64),
}

impl SamplerChoice {
    fn parse(name: &str, ratio: f64) -> Result<Self, String> {
        Ok(match name {
            "always_on" => Self::AlwaysOn,
            "always_off" => Self::AlwaysOff,
            "traceidratio" => Self::TraceIdRatio(ratio),
            "parentbased_always_on" => Self::ParentBasedAlwaysOn,
            "parentbased_always_off" => Self::ParentBasedAlwaysOff,
            "parentbased_traceidratio" => Self::ParentBasedTraceIdRatio(ratio),
            _ => {
                return Err(
                    "expected always_on, always_off, traceidratio, parentbased_always_on, \
                            parentbased_always_off or parentbased_traceidratio"
                        .into(),
                )
            }
        })
    }

    fn sampler(self) -> Sampler {
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
            Self::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            Self::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            Self::ParentBasedTraceIdRatio(r) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
            }
        }
    }
}

/// Where and how spans are exported; `None` when no endpoint is set.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    pub export: Option<OtlpExport>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OtlpExport {
    /// The endpoint as set (the exporter reads the variables itself, by the specification's
    /// rules: `/v1/traces` is added to `OTEL_EXPORTER_OTLP_ENDPOINT` for HTTP).
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub sampler: SamplerChoice,
}

impl TracingConfig {
    /// No export (tests, and any service without an endpoint).
    pub fn off() -> Self {
        Self { export: None }
    }

    /// The standard `OTEL_*` variables. Invalid values fail at start, where the SDK alone would
    /// log a warning and fall back.
    pub fn read(env: &mut Env) -> Result<Self, ConfigError> {
        const SCHEMES: &[&str] = &["http"];
        let base = env.optional_url(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            SCHEMES,
            "OTLP collector for traces (unset: no traces); grpc: http://host:4317, http/protobuf: \
             http://host:4318 (/v1/traces is added)",
        )?;
        let traces = env.optional_url(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            SCHEMES,
            "the traces endpoint in full, instead of OTEL_EXPORTER_OTLP_ENDPOINT",
        )?;
        let protocol = env.var(
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            OtlpProtocol::HttpProtobuf,
            "grpc or http/protobuf",
        )?;
        let protocol = env.var(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            protocol,
            "the traces' protocol, instead of OTEL_EXPORTER_OTLP_PROTOCOL",
        )?;
        let ratio = env.parse_with(
            "OTEL_TRACES_SAMPLER_ARG",
            1.0,
            "1.0",
            "the ratio of the traceidratio samplers, 0 to 1",
            parse_rate,
        )?;
        let sampler = env.parse_with(
            "OTEL_TRACES_SAMPLER",
            SamplerChoice::ParentBasedAlwaysOn,
            "parentbased_always_on",
            "which traces are kept: always_on, always_off, traceidratio, parentbased_* of those",
            |v| SamplerChoice::parse(v, ratio),
        )?;
        let disabled = env.flag(
            "OTEL_SDK_DISABLED",
            false,
            "true: export no traces even with an endpoint set",
        )?;
        env.document(
            "OTEL_SERVICE_NAME",
            "",
            "the traces' service.name (default: the binary's name)",
        );
        env.document(
            "OTEL_RESOURCE_ATTRIBUTES",
            "",
            "more resource attributes for the traces, key=value,…",
        );
        env.document(
            "OTEL_BSP_MAX_QUEUE_SIZE",
            "2048",
            "spans waiting for export; past it new spans are dropped (and OTEL_BSP_*)",
        );
        let export = traces
            .or(base)
            .filter(|_| !disabled)
            .map(|endpoint| OtlpExport {
                endpoint,
                protocol,
                sampler,
            });
        Ok(Self { export })
    }
}

/// Keeps the tracer provider; [`Telemetry::shutdown`] exports what is still queued.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still queued (at most a few seconds), then stops the exporter.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // The exporter's thread may need this runtime (gRPC), so the blocking wait for it
            // goes to a blocking thread, not a worker.
            let stopped = tokio::task::spawn_blocking(move || {
                provider.shutdown_with_timeout(Duration::from_secs(5))
            })
            .await;
            if let Ok(Err(e)) = stopped {
                tracing::warn!(error = %e, "exporting the last spans failed");
            }
        }
    }
}

/// Crates whose own spans and events stay out of the traces: the exporter's transport (a span
/// about exporting spans would be exported in turn) and the HTTP and AMQP libraries' internals.
const QUIET_TARGETS: &[&str] = &[
    "h2",
    "hyper",
    "hyper_util",
    "tonic",
    "tower",
    "reqwest",
    "opentelemetry",
    "lapin",
    "sqlx",
    LOG_SPAN_TARGET,
];

/// Installs the global subscriber: logs by `RUST_LOG` (default `info`) and, with an endpoint in
/// `tracing`, the OpenTelemetry layer. `service` is the binary's name, the default
/// `service.name`. Calling it twice is harmless (tests that spawn several apps in one process).
/// Must run inside the Tokio runtime when exporting by gRPC.
pub fn init(service: &str, config: &ServiceConfig) -> Result<Telemetry, String> {
    let (format, tracing) = (config.log_format, &config.tracing);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Not exporting: the subscriber is exactly the log layer under the global filter, as before
    // traces existed. Exporting: the log filter applies to the logs alone, and the traces take
    // every INFO span of this workspace whatever RUST_LOG says.
    let Some(export) = &tracing.export else {
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(log_layer(format))
            .try_init();
        return Ok(Telemetry { provider: None });
    };
    let provider = tracer_provider(service, export)?;
    LOG_TRACE_ID.store(
        filter
            .max_level_hint()
            .is_none_or(|level| level >= LevelFilter::INFO),
        Ordering::Relaxed,
    );
    let quiet = Targets::new()
        .with_default(LevelFilter::INFO)
        .with_targets(QUIET_TARGETS.iter().map(|t| (*t, LevelFilter::OFF)));
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service.to_string()))
        .with_threads(false)
        .with_location(false)
        .with_target(false)
        .with_level(false)
        // Spans are entered and left at every poll of their future: no clock reads for busy
        // and idle times there, and no OpenTelemetry context pushed (parents come from tracing's
        // own current span, and propagation reads each span's context explicitly).
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_filter(quiet);
    let installed = tracing_subscriber::registry()
        .with(log_layer(format).with_filter(filter))
        .with(traces)
        .try_init()
        .is_ok();
    // Already initialised (a second app in the same test process): keep the first subscriber,
    // and export nothing from this call.
    if !installed {
        let _ = provider.shutdown();
        return Ok(Telemetry { provider: None });
    }
    let _ = DIRECT_TRACER.set(provider.tracer(service.to_string()));
    EXPORTING.store(true, Ordering::Relaxed);
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// Log lines as text or JSON. In JSON, every span in scope is listed (not only the current one),
/// so a line logged in a child span still carries the `trace_id` its service's root span records.
fn log_layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    match format {
        LogFormat::Text => logfmt::layer().with_target(false).boxed(),
        LogFormat::Json => logfmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    }
}

fn tracer_provider(service: &str, export: &OtlpExport) -> Result<SdkTracerProvider, String> {
    let exporter = match export.protocol {
        OtlpProtocol::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
        OtlpProtocol::HttpProtobuf => SpanExporter::builder()
            .with_http()
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
    }
    .map_err(|e| {
        format!(
            "the OTLP exporter ({}, {}): {e}",
            export.protocol,
            redact_url(&export.endpoint)
        )
    })?;
    // `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` are read by the builder's detectors; the
    // binary's name applies only when no name is set.
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").map_or(true, |v| v.trim().is_empty()) {
        resource = resource.with_service_name(service.to_string());
    }
    Ok(SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_sampler(export.sampler.sampler())
        .with_batch_exporter(exporter)
        .build())
}

/// How long one export may take before it is given up (the spans are dropped, not retried).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

// ---- propagation: W3C trace context over HTTP headers ----

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// The caller's trace context from `traceparent`/`tracestate` (empty when there is none).
pub fn extract_http(headers: &HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// `span`'s trace context as header fields: `traceparent`, and `tracestate` when there is one,
/// for any carrier (HTTP headers, AMQP headers, the gateway's raw heads).
pub fn trace_fields(span: &Span) -> Vec<(&'static str, String)> {
    if !exporting() || span.is_none() {
        return Vec::new();
    }
    fields_of(span.context().span().span_context())
}

/// Written directly, as the W3C format has it: this runs for every call and every publish.
fn fields_of(span_context: &SpanContext) -> Vec<(&'static str, String)> {
    let mut fields = Vec::new();
    if !span_context.is_valid() {
        return fields;
    }
    let mut traceparent = String::with_capacity(55);
    traceparent.push_str("00-");
    push_hex(&mut traceparent, &span_context.trace_id().to_bytes());
    traceparent.push('-');
    push_hex(&mut traceparent, &span_context.span_id().to_bytes());
    traceparent.push('-');
    push_hex(&mut traceparent, &[span_context.trace_flags().to_u8()]);
    fields.push(("traceparent", traceparent));
    let state = span_context.trace_state().header();
    if !state.is_empty() {
        fields.push(("tracestate", state));
    }
    fields
}

/// Lower-case hex, two digits a byte (the ids' `Display` goes through `u128` formatting with
/// padding, a measurable share of a call's cost).
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
}

/// A trace context from text pairs (the inverse of [`trace_fields`]).
pub fn context_from_fields<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> Context {
    let carrier: std::collections::HashMap<String, String> = fields
        .into_iter()
        .filter(|(k, _)| {
            k.eq_ignore_ascii_case("traceparent") || k.eq_ignore_ascii_case("tracestate")
        })
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    TraceContextPropagator::new().extract(&carrier)
}

// ---- spans: one constructor per kind, each `Span::none()` when not exporting ----

/// Parents `span` on `parent` (when it carries a trace) and records the trace id on it, so log
/// lines inside carry it. For each service's root span.
fn root(span: Span, parent: Context) -> Span {
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    if LOG_TRACE_ID.load(Ordering::Relaxed) {
        let trace_id = span.context().span().span_context().trace_id();
        span.record("trace_id", tracing::field::display(trace_id));
    }
    span
}

/// An inbound HTTP request's trace: an OpenTelemetry server span (a child of the caller's
/// `traceparent`, if any) made directly, as [`LeafSpan`]s are, and kept current in
/// OpenTelemetry's context while the request is polled ([`RequestSpan::enter`]), so the
/// request's calls, publishes and store calls are its children; and, only when the logs show
/// INFO spans, a `tracing` span carrying `trace_id` into the request's log lines, which the
/// traces leave out (its target is [`LOG_SPAN_TARGET`]). A request thus costs no bridge span:
/// it has no `tracing` fields to visit, no registry slot and nothing to do at every poll but
/// swap a thread-local context.
pub struct RequestSpan {
    /// Holds the server span; empty when traces are not exported.
    context: Context,
    log: Span,
}

/// The target of the log-only request spans, which the traces filter out.
const LOG_SPAN_TARGET: &str = "request_log";

impl RequestSpan {
    /// No trace (not exported, or a probe).
    pub fn none() -> Self {
        Self {
            context: Context::new(),
            log: Span::none(),
        }
    }

    /// A server span for `method` on `route`, continuing the caller's trace from `headers`.
    pub fn server(method: &http::Method, route: &str, headers: &HeaderMap) -> Self {
        if !exporting() {
            return Self::none();
        }
        let Some(span) = start_span(
            format!("{method} {route}"),
            SpanKind::Server,
            vec![
                KeyValue::new("http.request.method", method.as_str().to_string()),
                KeyValue::new("http.route", route.to_string()),
            ],
            &extract_http(headers),
        ) else {
            return Self::none();
        };
        let log = if LOG_TRACE_ID.load(Ordering::Relaxed) {
            let mut trace_id = String::with_capacity(32);
            push_hex(&mut trace_id, &span.span_context().trace_id().to_bytes());
            tracing::info_span!(
                target: LOG_SPAN_TARGET,
                "request",
                method = %method,
                route = %route,
                trace_id = %trace_id
            )
        } else {
            Span::none()
        };
        Self {
            context: Context::current_with_span(span),
            log,
        }
    }

    pub fn is_none(&self) -> bool {
        !self.context.has_active_span()
    }

    /// The `tracing` span for the request's log lines (`Span::none()` if there is none).
    pub fn log_span(&self) -> &Span {
        &self.log
    }

    /// Makes this request's trace current until the guards drop: for each poll of the request.
    pub fn enter(
        &self,
    ) -> (
        Option<opentelemetry::ContextGuard>,
        tracing::span::Entered<'_>,
    ) {
        let context = (!self.is_none()).then(|| self.context.clone().attach());
        (context, self.log.enter())
    }

    /// Records the response's status (5xx marks the span an error) and ends the span.
    pub fn finish(&self, status: u16) {
        if self.is_none() {
            return;
        }
        let span = self.context.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 500 {
            span.set_status(Status::error(""));
        }
        span.end();
    }
}

/// Runs `task` (spawned work of the current request) in the current trace and log span.
pub fn in_current_trace<F: std::future::Future>(
    task: F,
) -> futures::future::Either<
    tracing::instrument::Instrumented<F>,
    opentelemetry::context::WithContext<tracing::instrument::Instrumented<F>>,
> {
    use opentelemetry::context::FutureExt as _;
    use tracing::Instrument as _;
    let task = task.in_current_span();
    if exporting() {
        futures::future::Either::Right(task.with_current_context())
    } else {
        futures::future::Either::Left(task)
    }
}

/// A request the gateway proxies to `group` (its own trace root unless the client sent a
/// `traceparent`); the target's server span is its child.
pub fn proxy_span(method: &http::Method, group: &str, path: &str, parent: Context) -> Span {
    if !exporting() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "proxy",
        otel.name = %format_args!("{method} {group}"),
        otel.kind = "server",
        http.request.method = method.as_str(),
        url.path = path,
        gateway.target_group = group,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    root(span, parent)
}

/// Records a response's status on a server or client span (5xx marks it an error).
pub fn record_status(span: &Span, status: u16) {
    if span.is_none() {
        return;
    }
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "error");
    }
}

/// A span made with the SDK's tracer, a child of `parent`; `None` until [`init`] has set the
/// tracer.
fn start_span(
    name: String,
    kind: SpanKind,
    attributes: Vec<KeyValue>,
    parent: &Context,
) -> Option<opentelemetry_sdk::trace::Span> {
    let tracer = DIRECT_TRACER.get()?;
    Some(
        tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(tracer, parent),
    )
}

/// A span with nothing inside it (no child span, no log line): an outbound call, a publish, a
/// store call. These are made with the OpenTelemetry API directly, as children of the current
/// request ([`RequestSpan`]) or `tracing` span, rather than as `tracing` spans through the
/// bridge: a bridged span costs a registry slot, its extensions, and a visit of every field on
/// creation and on each record, all of which only pays off for a span that logs run inside.
/// Ends when dropped. A no-op when traces are not exported.
#[must_use = "the span ends when dropped"]
pub struct LeafSpan(Option<opentelemetry_sdk::trace::Span>);

impl LeafSpan {
    /// No span (traces not exported).
    pub fn none() -> Self {
        Self(None)
    }

    /// A child of the current trace (the callers check [`exporting`] before building `name`
    /// and `attributes`).
    fn start(name: String, kind: SpanKind, attributes: Vec<KeyValue>) -> Self {
        // A request's trace is OpenTelemetry's current context; a delivery's or a batch's is the
        // current `tracing` span.
        let current = Context::current();
        let parent = if current.has_active_span() {
            current
        } else {
            Span::current().context()
        };
        Self(start_span(name, kind, attributes, &parent))
    }

    /// Its `traceparent` (and `tracestate`), as [`trace_fields`] gives a `tracing` span's.
    pub fn trace_fields(&self) -> Vec<(&'static str, String)> {
        self.0
            .as_ref()
            .map(|span| fields_of(span.span_context()))
            .unwrap_or_default()
    }

    /// Adds its `traceparent` (and `tracestate`) to outgoing request headers.
    pub fn inject_http(&self, headers: &mut HeaderMap) {
        for (name, value) in self.trace_fields() {
            if let Ok(value) = HeaderValue::try_from(value) {
                headers.insert(name, value);
            }
        }
    }

    /// A response's status (5xx marks the span an error).
    pub fn record_status(&mut self, status: u16) {
        if let Some(span) = &mut self.0 {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if status >= 500 {
                span.set_status(Status::error(""));
            }
        }
    }

    /// Marks the span failed (no answer, a failed publish, a store error).
    pub fn record_error(&mut self) {
        if let Some(span) = &mut self.0 {
            span.set_status(Status::error(""));
        }
    }
}

/// An outbound HTTP call to `peer` (a child of the current span).
pub fn client_span(method: &http::Method, peer: &'static str, path: &str) -> LeafSpan {
    if !exporting() {
        return LeafSpan::none();
    }
    LeafSpan::start(
        format!("{method} {peer}"),
        SpanKind::Client,
        vec![
            KeyValue::new("http.request.method", method.as_str().to_string()),
            KeyValue::new("server.address", peer),
            KeyValue::new("url.path", path.to_string()),
        ],
    )
}

/// A publish to `queue`, with its confirm wait (a child of the current span).
pub fn producer_span(queue: &str) -> LeafSpan {
    if !exporting() {
        return LeafSpan::none();
    }
    LeafSpan::start(
        format!("{queue} publish"),
        SpanKind::Producer,
        vec![
            KeyValue::new("messaging.system", "rabbitmq"),
            KeyValue::new("messaging.operation.type", "publish"),
            KeyValue::new("messaging.destination.name", queue.to_string()),
        ],
    )
}

/// A call to a store (`store`: postgres, redis; `operation`: what it does), a child of the
/// current span.
pub fn store_span(store: &'static str, operation: &'static str) -> LeafSpan {
    if !exporting() {
        return LeafSpan::none();
    }
    LeafSpan::start(
        format!("{store} {operation}"),
        SpanKind::Client,
        vec![
            KeyValue::new("db.system.name", store),
            KeyValue::new("db.operation.name", operation),
        ],
    )
}

/// One delivery from `queue`, a child of the publisher's span carried in the message.
pub fn consumer_span(queue: &str, parent: Context, redelivered: bool) -> Span {
    if !exporting() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "process",
        otel.name = %format_args!("{queue} process"),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = queue,
        messaging.rabbitmq.redelivered = redelivered,
        otel.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    root(span, parent)
}

/// Work done once for several deliveries (a ledger batch, one events message): a child of the
/// first one's span, linked to the others'. The name is a static string: `"ledger apply"`.
pub fn batch_span<'a>(name: &'static str, spans: impl IntoIterator<Item = &'a Span>) -> Span {
    if !exporting() {
        return Span::none();
    }
    let mut spans = spans.into_iter();
    let Some(first) = spans.next() else {
        return Span::none();
    };
    let span = tracing::info_span!(parent: first, "batch", otel.name = name, batch.size = tracing::field::Empty);
    let mut size = 1u64;
    for other in spans {
        size += 1;
        span.add_link(other.context().span().span_context().clone());
    }
    span.record("batch.size", size);
    span
}

/// Settling a delivery with the broker: a child of its consumer span.
pub fn ack_span(delivery: &Span) -> Span {
    if delivery.is_none() {
        return Span::none();
    }
    tracing::info_span!(parent: delivery, "ack", otel.name = "ack", otel.kind = "client")
}

/// Marks a span as failed (an error answer, a failed publish, a store error).
pub fn record_error(span: &Span) {
    if !span.is_none() {
        span.record("otel.status_code", "error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_otel_variables_are_read_and_checked() {
        let read = |pairs: &[(&str, &str)]| {
            TracingConfig::read(&mut Env::from_pairs(pairs.iter().copied()))
        };
        assert_eq!(read(&[]), Ok(TracingConfig::off()));
        let on = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ])
        .expect("valid");
        let export = on.export.expect("exporting");
        assert_eq!(export.protocol, OtlpProtocol::Grpc);
        assert_eq!(export.sampler, SamplerChoice::ParentBasedTraceIdRatio(0.25));
        // The signal's own variables win.
        let traces = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://b:4318/v1/traces",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ])
        .expect("valid")
        .export
        .expect("exporting");
        assert_eq!(traces.endpoint, "http://b:4318/v1/traces");
        assert_eq!(traces.protocol, OtlpProtocol::HttpProtobuf);
        let disabled = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ]);
        assert_eq!(disabled, Ok(TracingConfig::off()));
        for (name, value) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "udp"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317"),
        ] {
            let err = read(&[(name, value)]).expect_err(value);
            assert_eq!(err.name, name);
        }
    }

    #[test]
    fn trace_context_round_trips_through_text_fields() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let cx = context_from_fields([("Traceparent", parent)]);
        let span_context = cx.span().span_context().clone();
        assert!(span_context.is_valid());
        assert_eq!(
            span_context.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        // Written back exactly as read.
        assert_eq!(
            fields_of(&span_context),
            [("traceparent", parent.to_string())]
        );
        assert!(!context_from_fields([("traceparent", "garbage")])
            .span()
            .span_context()
            .is_valid());
    }
}
