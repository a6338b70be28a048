//! Telemetry seen from outside, as a platform team would: a Prometheus scrape of a running
//! server, and spans received over OTLP by a collector inside the test.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use sentinel_proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET over plain HTTP/1.0 with nothing but a socket.
async fn http_get(url: &str) -> String {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    s.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    let (head, body) = body.split_once("\r\n\r\n").expect("HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );
    body.to_owned()
}

/// Parses the Prometheus text format into (name{sorted labels}) -> value.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                labels.sort();
                format!("{name}{{{}}}", labels.join(","))
            }
            None => series.to_owned(),
        };
        out.insert(key, value);
    }
    out
}

#[tokio::test]
async fn metrics_are_scraped_and_parsed_in_prometheus_format() {
    let db = TestDb::new().await;
    let server = ServerProcess::start_with(
        &db.url,
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--stats-interval",
            "200ms",
        ],
        &[],
    )
    .await;
    let url = server.metrics_url.clone().unwrap();
    let mut c = server.client().await;
    let ns = ns();
    let a = acquire(&mut c, claim_req(&ns, "done")).await;
    c.complete(success(&ns, "done", a.token, b"ok"))
        .await
        .unwrap();
    assert!(matches!(
        claim(&mut c, claim_req(&ns, "done")).await,
        pb::claim_response::Outcome::Completed(_)
    ));
    let u = acquire(&mut c, claim_req(&ns, "unsure")).await;
    c.complete(failure(
        &ns,
        "unsure",
        u.token,
        false,
        pb::SideEffects::Possible,
    ))
    .await
    .unwrap();
    acquire(&mut c, claim_req(&ns, "live")).await;
    let mut beats = Beats::open(&mut c).await;
    beats.beat(&ns, "nope", 1).await;

    let mut m = HashMap::new();
    for _ in 0..50 {
        m = parse_prometheus(&http_get(&url).await);
        if m.get(&format!(
            "sentinel_uncertain_executions{{namespace=\"{ns}\"}}"
        )) == Some(&1.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("missing series {k}"));
    assert_eq!(
        get(r#"sentinel_requests_total{outcome="ACQUIRED",rpc="Claim"}"#),
        3.0
    );
    assert_eq!(
        get(r#"sentinel_requests_total{outcome="COMPLETED",rpc="Claim"}"#),
        1.0
    );
    assert_eq!(
        get(r#"sentinel_requests_total{outcome="COMPLETED",rpc="Complete"}"#),
        1.0
    );
    assert_eq!(
        get(r#"sentinel_requests_total{outcome="UNCERTAIN",rpc="Complete"}"#),
        1.0
    );
    assert_eq!(
        get(r#"sentinel_heartbeat_lost_total{reason="NOT_FOUND"}"#),
        1.0
    );
    assert_eq!(
        get(&format!(
            "sentinel_uncertain_executions{{namespace=\"{ns}\"}}"
        )),
        1.0
    );
    assert_eq!(
        get(&format!("sentinel_live_leases{{namespace=\"{ns}\"}}")),
        1.0
    );
    assert_eq!(
        get(r#"sentinel_request_duration_seconds_count{rpc="Claim"}"#),
        4.0
    );
    assert!(get(r#"sentinel_store_duration_seconds_count{op="claim"}"#) >= 1.0);
    assert!(get(r#"sentinel_batch_size_count{kind="claim"}"#) >= 1.0);
    assert!(get(r#"sentinel_pool_connections{state="max"}"#) >= 1.0);
    assert!(m.contains_key("sentinel_sweeper_deleted_total"));
    assert_eq!(get("sentinel_heartbeat_streams"), 1.0);
    server.terminate().await;
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        a.value.as_ref().and_then(|v| match &v.value {
            Some(Value::StringValue(s)) => Some(s.clone()),
            Some(Value::IntValue(i)) => Some(i.to_string()),
            _ => None,
        })
    })
}

#[tokio::test]
async fn spans_reach_an_otlp_collector_and_continue_the_callers_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    {
        let collector = collector.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
    }
    let db = TestDb::new().await;
    let endpoint = format!("http://{collector_addr}");
    let server = ServerProcess::start_with(
        &db.url,
        &["--otlp-endpoint", &endpoint],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    )
    .await;
    let mut c = server.client().await;
    let ns = ns();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut req = tonic::Request::new(claim_req(&ns, "secret-customer-key"));
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    let acquired = match c.claim(req).await.unwrap().into_inner().outcome.unwrap() {
        pb::claim_response::Outcome::Acquired(a) => a,
        other => panic!("{other:?}"),
    };

    let mut found = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let spans = collector.spans.lock().unwrap();
        found = spans
            .iter()
            .find(|s| s.name == "sentinel.v1.SentinelService/Claim")
            .cloned();
        if found.is_some() && spans.iter().any(|s| s.name == "claim") {
            break;
        }
    }
    let span = found.expect("no Claim span reached the collector");
    let hex: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex, trace_id,
        "the server span must continue the caller's trace"
    );
    assert_eq!(
        attr(&span, "sentinel.namespace").as_deref(),
        Some(ns.as_str())
    );
    assert_eq!(attr(&span, "sentinel.outcome").as_deref(), Some("ACQUIRED"));
    assert_eq!(
        attr(&span, "sentinel.token"),
        Some(acquired.token.to_string())
    );
    let key = attr(&span, "sentinel.key").expect("a key attribute");
    assert_ne!(key, "secret-customer-key", "keys are hashed by default");
    assert_eq!(key.len(), 16);
    let store = {
        let spans = collector.spans.lock().unwrap();
        spans.iter().find(|s| s.name == "claim").cloned()
    };
    let store = store.expect("a store span");
    assert_eq!(attr(&store, "db.system").as_deref(), Some("postgresql"));
    server.terminate().await;
}
