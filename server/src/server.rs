//! Assembly of a serving replica: store, migrations, the gRPC service with health and
//! reflection, the sweeper, and a shutdown with a bound.
//!
//! Shutdown order: mark health NOT_SERVING, end the heartbeat streams (they never end by
//! themselves; clients re-open them on another replica), stop accepting and drain in-flight
//! requests for at most `drain_timeout`, stop the sweeper, and close the pool last.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use sentinel_proto::v1::sentinel_service_server::SentinelServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic_health::ServingStatus;

use crate::api::SentinelApi;
use crate::config::ServerConfig;
use crate::store::Store;
use crate::telemetry::{self, metrics, metrics::METRICS};

/// The name under which health reports the service.
pub const SERVICE_NAME: &str = "sentinel.v1.SentinelService";

/// Binds the listen address with a clear error when it is taken.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr}: is another process using it? (set --listen)")
    })
}

/// Where a started server listens.
#[derive(Clone, Copy, Debug)]
pub struct Ready {
    pub grpc: SocketAddr,
    pub metrics: Option<SocketAddr>,
}

/// Connects, migrates, then serves on `listener` until `shutdown` resolves. `ready` is
/// called with the bound addresses once requests can be served.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(Ready),
) -> anyhow::Result<()> {
    let options = config.options.clone();
    let metrics_listener =
        match options.metrics_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
                format!("cannot serve metrics on {addr} (set --metrics-listen)")
            })?),
            None => None,
        };
    let store = Store::connect(&config.database_url, options.pool_size)?;
    let applied = store
        .migrate()
        .await
        .context("cannot prepare the database (is it running, and is the URL right?)")?;
    if !applied.is_empty() {
        tracing::info!(?applied, "database migrated");
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (api, workers) = SentinelApi::new(store.clone(), &options, shutdown_rx.clone());

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    health
        .set_service_status(SERVICE_NAME, ServingStatus::Serving)
        .await;

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sentinel_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sentinel_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building the reflection service")?;

    let sweeper = {
        let store = store.clone();
        let mut stop = shutdown_rx.clone();
        let (interval, batch) = (options.sweep_interval, options.sweep_batch);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(jitter(interval)) => {}
                }
                match store.sweep(batch, 10).await {
                    Ok(s) if s.expired > 0 || s.deleted > 0 => {
                        METRICS.sweeper_expired.inc_by(s.expired);
                        METRICS.sweeper_deleted.inc_by(s.deleted);
                        tracing::debug!(expired = s.expired, deleted = s.deleted, "sweep")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "sweep failed"),
                }
            }
        })
    };
    let pruner = {
        let leases = api.leases();
        let mut stop = shutdown_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {
                        leases.prune();
                        METRICS.heartbeat_leases.set(leases.len() as i64);
                    }
                }
            }
        })
    };
    let stats = {
        let store = store.clone();
        let mut stop = shutdown_rx.clone();
        let interval = options.stats_interval;
        let pool_max = options.pool_size as i64;
        tokio::spawn(async move {
            let mut next_stats = tokio::time::Instant::now();
            loop {
                let (size, available) = store.pool_status();
                METRICS.pool.with_label_values(&["size"]).set(size as i64);
                METRICS
                    .pool
                    .with_label_values(&["available"])
                    .set(available as i64);
                METRICS.pool.with_label_values(&["max"]).set(pool_max);
                if !interval.is_zero() && tokio::time::Instant::now() >= next_stats {
                    next_stats = tokio::time::Instant::now() + interval;
                    match store.stats().await {
                        Ok(rows) => {
                            METRICS.live_leases.reset();
                            METRICS.uncertain.reset();
                            for (ns, live, uncertain) in rows {
                                METRICS
                                    .live_leases
                                    .with_label_values(&[ns.as_str()])
                                    .set(live);
                                METRICS
                                    .uncertain
                                    .with_label_values(&[ns.as_str()])
                                    .set(uncertain);
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "refreshing database gauges failed"),
                    }
                }
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        })
    };
    let metrics_addr = match metrics_listener {
        Some(l) => {
            let addr = l.local_addr()?;
            let mut stop = shutdown_rx.clone();
            tokio::spawn(async move {
                let stopped = async move {
                    let _ = stop.changed().await;
                };
                if let Err(e) = metrics::serve(l, stopped).await {
                    tracing::error!(error = %e, "metrics endpoint failed");
                }
            });
            Some(addr)
        }
        None => None,
    };

    let max_message = options.limits.max_response_bytes + 64 * 1024;
    let service = SentinelServiceServer::new(api)
        .max_decoding_message_size(max_message.max(4 << 20))
        .max_encoding_message_size(max_message.max(4 << 20));

    let addr = listener.local_addr()?;
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let drain_signal = {
        let health = health.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: draining");
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            health
                .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
                .await;
            let _ = shutdown_tx.send(true);
            let _ = drain_tx.send(());
        }
    };
    let incoming = accepted_connections(listener);
    let serve = tonic::transport::Server::builder()
        .trace_fn(telemetry::rpc_span)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, drain_signal);

    ready(Ready {
        grpc: addr,
        metrics: metrics_addr,
    });
    tracing::info!(%addr, metrics = ?metrics_addr, "serving");

    // The drain is bounded: once shutdown begins, in-flight requests get `drain_timeout`.
    let drain_timeout = options.drain_timeout;
    let bounded = async move {
        tokio::pin!(serve);
        tokio::select! {
            r = &mut serve => r,
            _ = async {
                let _ = drain_rx.await;
                tokio::time::sleep(drain_timeout).await;
            } => {
                tracing::warn!("drain timeout reached; stopping with requests in flight");
                Ok(())
            }
        }
    };
    let served = bounded.await;

    let _ = sweeper.await;
    let _ = pruner.await;
    let _ = stats.await;
    for w in workers {
        w.abort();
    }
    store.close();
    tracing::info!("stopped");
    served.context("gRPC server failed")
}

/// Spreads sweeps of several replicas over the interval.
fn jitter(d: Duration) -> Duration {
    let f = 0.75 + rand::random::<f64>() * 0.5;
    d.mul_f64(f)
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// The gRPC connections accepted on `listener`, with their socket options. The server
/// builder's own TCP options apply only to listeners it binds itself; ours is bound earlier
/// (so that a taken port fails fast), so they are set on each accepted socket here. Without
/// TCP_NODELAY, a response written while an earlier one is still unacknowledged waits for
/// the peer's delayed ACK: about 40 ms on Linux, for a share of the replies under load.
fn accepted_connections(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(30)))
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = super::accepted_connections(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
