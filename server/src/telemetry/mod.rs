//! Logs, traces and metrics.
//!
//! - Logs: human-readable by default, JSON with `--log-format json`, levels from `RUST_LOG`.
//! - Traces: OpenTelemetry over OTLP/gRPC when `--otlp-endpoint` or the standard
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; off
//!   otherwise. W3C trace context in incoming gRPC metadata becomes the parent of the RPC's
//!   span, so a client's trace continues through Sentinel. Keys are user data: spans carry a
//!   hash of the key unless `--trace-raw-keys` is set.
//! - Metrics: Prometheus text on `--metrics-listen` at `/metrics` (see `metrics`).

pub mod metrics;

use std::sync::atomic::{AtomicBool, Ordering};

use clap::ValueEnum;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use sha2::Digest;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

static RAW_KEYS: AtomicBool = AtomicBool::new(false);

/// Flushes and stops the trace exporter when dropped.
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("sentinel: flushing traces failed: {e}");
            }
        }
    }
}

/// The OTLP endpoint from the flag or the standard variables, unless `OTEL_SDK_DISABLED`.
fn otlp_endpoint(flag: Option<String>) -> Option<String> {
    if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    flag.or_else(|| std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").ok())
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .filter(|s| !s.is_empty())
}

/// Installs logging and, when configured, trace export. Call once, inside the runtime.
pub fn init(format: LogFormat, otlp: Option<String>, raw_keys: bool) -> anyhow::Result<Guard> {
    RAW_KEYS.store(raw_keys, Ordering::Relaxed);
    // The RPC and store spans are for traces; formatting their fields for the console on
    // every request costs more than the request itself, so the console leaves them out unless
    // RUST_LOG asks for them (e.g. RUST_LOG=info,sentinel_server::telemetry=info).
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,sentinel_server::telemetry=warn")
        })
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    }
    .with_filter(filter());

    let mut provider = None;
    let otel = match otlp_endpoint(otlp) {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()?;
            let mut resource = opentelemetry_sdk::Resource::builder();
            if std::env::var("OTEL_SERVICE_NAME").is_err() {
                resource = resource.with_service_name("sentinel");
            }
            let p = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource.build())
                .build();
            let tracer = p.tracer("sentinel");
            opentelemetry::global::set_tracer_provider(p.clone());
            provider = Some(p);
            eprintln!("sentinel: exporting traces over OTLP to {endpoint}");
            // Spans are exported at info and above, whatever RUST_LOG says for the console.
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
            )
        }
        None => None,
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()?;
    Ok(Guard { provider })
}

/// How a key appears in spans: a short SHA-256 prefix, or the key itself when configured.
pub fn key_for_trace(namespace: &str, key: &str) -> String {
    if RAW_KEYS.load(Ordering::Relaxed) {
        return key.to_owned();
    }
    let mut h = sha2::Sha256::new();
    h.update(namespace.as_bytes());
    h.update([0x1f]);
    h.update(key.as_bytes());
    let digest = h.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The span of one RPC, child of the caller's W3C trace context when it sent one. Handlers
/// fill in the `sentinel.*` fields.
pub fn rpc_span(req: &http::Request<()>) -> tracing::Span {
    let path = req.uri().path();
    let method = path.rsplit('/').next().unwrap_or(path);
    let span = tracing::info_span!(
        "rpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = %method,
        sentinel.namespace = tracing::field::Empty,
        sentinel.key = tracing::field::Empty,
        sentinel.outcome = tracing::field::Empty,
        sentinel.token = tracing::field::Empty,
    );
    let parent =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(req.headers())));
    let _ = span.set_parent(parent);
    span
}

/// Records the request's identity on the current RPC span.
pub fn record_key(namespace: &str, key: &str) {
    let span = tracing::Span::current();
    // Hashing the key is the costly part: skip it when nothing records the span.
    if span.is_disabled() {
        return;
    }
    span.record("sentinel.namespace", namespace);
    span.record("sentinel.key", key_for_trace(namespace, key).as_str());
}

/// Records the outcome (and token, when there is one) on the current RPC span.
pub fn record_outcome(outcome: &str, token: Option<u64>) {
    let span = tracing::Span::current();
    span.record("sentinel.outcome", outcome);
    if let Some(t) = token {
        span.record("sentinel.token", t);
    }
}
