//! Prometheus metrics. One process-wide registry; `render` produces the text format served
//! at `/metrics`.

use std::sync::LazyLock;
use std::time::Instant;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    /// Requests by RPC and outcome (claim outcomes, `ok`, or an error reason).
    pub requests: IntCounterVec,
    /// Latency of RPCs, from decoded request to reply.
    pub request_duration: HistogramVec,
    /// Latency of store operations (one per batch).
    pub store_duration: HistogramVec,
    /// Requests per coalesced batch, by kind.
    pub batch_size: HistogramVec,
    /// LOST heartbeat replies and pushes, by reason.
    pub heartbeat_lost: IntCounterVec,
    /// Leases this replica renewed recently, over all its heartbeat streams.
    pub heartbeat_leases: IntGauge,
    /// Open heartbeat streams on this replica.
    pub heartbeat_streams: IntGauge,
    /// Executions with a live lease, by namespace (whole database, refreshed periodically).
    pub live_leases: IntGaugeVec,
    /// UNCERTAIN executions (including expired leases), by namespace (whole database).
    pub uncertain: IntGaugeVec,
    /// Connection pool: size, available, max.
    pub pool: IntGaugeVec,
    /// Leases the sweeper wrote as UNCERTAIN.
    pub sweeper_expired: IntCounter,
    /// Records past retention the sweeper deleted.
    pub sweeper_deleted: IntCounter,
}

fn buckets() -> Vec<f64> {
    vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ]
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new();
    let requests = IntCounterVec::new(
        Opts::new(
            "sentinel_requests_total",
            "RPCs handled, by rpc and outcome",
        ),
        &["rpc", "outcome"],
    )
    .unwrap();
    let request_duration = HistogramVec::new(
        HistogramOpts::new("sentinel_request_duration_seconds", "RPC latency").buckets(buckets()),
        &["rpc"],
    )
    .unwrap();
    let store_duration = HistogramVec::new(
        HistogramOpts::new(
            "sentinel_store_duration_seconds",
            "Store operation latency, one observation per batch",
        )
        .buckets(buckets()),
        &["op"],
    )
    .unwrap();
    let batch_size = HistogramVec::new(
        HistogramOpts::new(
            "sentinel_batch_size",
            "Requests coalesced into one statement",
        )
        .buckets(vec![
            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
        ]),
        &["kind"],
    )
    .unwrap();
    let heartbeat_lost = IntCounterVec::new(
        Opts::new(
            "sentinel_heartbeat_lost_total",
            "LOST heartbeat replies, by reason",
        ),
        &["reason"],
    )
    .unwrap();
    let heartbeat_leases = IntGauge::new(
        "sentinel_heartbeat_leases",
        "Leases renewed recently over this replica's heartbeat streams",
    )
    .unwrap();
    let heartbeat_streams = IntGauge::new(
        "sentinel_heartbeat_streams",
        "Open heartbeat streams on this replica",
    )
    .unwrap();
    let live_leases = IntGaugeVec::new(
        Opts::new(
            "sentinel_live_leases",
            "Executions with a live lease, by namespace",
        ),
        &["namespace"],
    )
    .unwrap();
    let uncertain = IntGaugeVec::new(
        Opts::new(
            "sentinel_uncertain_executions",
            "Executions needing reconciliation, by namespace",
        ),
        &["namespace"],
    )
    .unwrap();
    let pool = IntGaugeVec::new(
        Opts::new(
            "sentinel_pool_connections",
            "Database connection pool, by state",
        ),
        &["state"],
    )
    .unwrap();
    let sweeper_expired = IntCounter::new(
        "sentinel_sweeper_expired_total",
        "Expired leases the sweeper wrote as UNCERTAIN",
    )
    .unwrap();
    let sweeper_deleted = IntCounter::new(
        "sentinel_sweeper_deleted_total",
        "Records past retention the sweeper deleted",
    )
    .unwrap();
    for c in [
        Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(request_duration.clone()),
        Box::new(store_duration.clone()),
        Box::new(batch_size.clone()),
        Box::new(heartbeat_lost.clone()),
        Box::new(heartbeat_leases.clone()),
        Box::new(heartbeat_streams.clone()),
        Box::new(live_leases.clone()),
        Box::new(uncertain.clone()),
        Box::new(pool.clone()),
        Box::new(sweeper_expired.clone()),
        Box::new(sweeper_deleted.clone()),
    ] {
        registry.register(c).unwrap();
    }
    Metrics {
        registry,
        requests,
        request_duration,
        store_duration,
        batch_size,
        heartbeat_lost,
        heartbeat_leases,
        heartbeat_streams,
        live_leases,
        uncertain,
        pool,
        sweeper_expired,
        sweeper_deleted,
    }
});

/// The registry in Prometheus text format.
pub fn render() -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&METRICS.registry.gather(), &mut buf)
        .expect("text encoding cannot fail");
    String::from_utf8(buf).expect("text format is UTF-8")
}

/// Times a store operation, as a span and a histogram observation.
pub async fn timed<T>(
    op: &'static str,
    batch: usize,
    fut: impl std::future::Future<Output = T>,
) -> T {
    use tracing::Instrument;
    let start = Instant::now();
    let span = tracing::info_span!(
        "store",
        otel.name = op,
        db.system = "postgresql",
        sentinel.batch = batch
    );
    let out = fut.instrument(span).await;
    METRICS
        .store_duration
        .with_label_values(&[op])
        .observe(start.elapsed().as_secs_f64());
    out
}

/// Serves `/metrics` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(|| async {
            (
                [(
                    http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                render(),
            )
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
}
