//! gRPC adapters. Each handler extracts the request, validates it into domain types
//! (`convert`), calls the batcher or the store, and converts the answer back; errors become
//! statuses in one place (`status`). Handlers are cancellation-safe: a request dropped by
//! its client after it was queued is still executed and committed, like a lost reply.

pub mod convert;
pub mod heartbeat;
pub mod leases;
pub mod status;

use std::sync::Arc;

use sentinel_proto::v1 as pb;
use sentinel_proto::v1::sentinel_service_server::SentinelService;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status, Streaming};

use crate::batch::Batcher;
use crate::config::{Limits, ServerOptions};
use crate::core::{
    ClaimOutcome, ClaimRequest, CompleteRequest, CompleteResult, HeartbeatRequest, HeartbeatResult,
    LostReason,
};
use crate::error::{Error, Result};
use crate::store::{BatchResult, Store};
use crate::telemetry::{self, metrics::METRICS};
use leases::LeaseRegistry;

/// State shared by the handlers and the stream tasks.
pub struct Shared {
    pub limits: Limits,
    pub store: Store,
    pub claims: Batcher<ClaimRequest, Result<ClaimOutcome>>,
    pub completes: Batcher<CompleteRequest, Result<CompleteResult>>,
    pub heartbeats: Batcher<HeartbeatRequest, Result<HeartbeatResult>>,
    pub leases: Arc<LeaseRegistry>,
    /// Becomes true when the server starts draining: heartbeat streams end.
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    fn note_lost(&self, reason: LostReason) {
        METRICS
            .heartbeat_lost
            .with_label_values(&[reason.name()])
            .inc();
    }
}

/// Spreads a batch's store result over its callers; a store error fails every caller.
fn spread<T: Clone>(
    n: usize,
    result: Result<BatchResult<T>>,
    leases: &LeaseRegistry,
) -> Vec<Result<T>> {
    match result {
        Ok(batch) => {
            for s in &batch.superseded {
                leases.superseded(&s.key, s.token);
            }
            batch
                .items
                .into_iter()
                .map(|r| r.map_err(Error::from))
                .collect()
        }
        Err(e) => vec![Err(e); n],
    }
}

/// The `sentinel.v1.SentinelService` implementation.
#[derive(Clone)]
pub struct SentinelApi {
    shared: Arc<Shared>,
}

impl SentinelApi {
    /// Builds the service and starts its batch workers. The workers stop once the service
    /// (every clone) is dropped.
    pub fn new(
        store: Store,
        options: &ServerOptions,
        shutdown: watch::Receiver<bool>,
    ) -> (SentinelApi, Vec<JoinHandle<()>>) {
        let leases = Arc::new(LeaseRegistry::default());
        // Enough workers to keep the pool busy, leaving connections for reads and the sweeper.
        let workers = (options.pool_size / 3).max(1);
        let max = options.max_batch;
        let mut handles = Vec::new();

        let (claims, h) = {
            let store = store.clone();
            let leases = leases.clone();
            Batcher::spawn(
                workers,
                max,
                move |reqs: Vec<ClaimRequest>| {
                    let store = store.clone();
                    let leases = leases.clone();
                    async move { spread(reqs.len(), store.claim(&reqs).await, &leases) }
                },
                |n| {
                    METRICS
                        .batch_size
                        .with_label_values(&["claim"])
                        .observe(n as f64)
                },
            )
        };
        handles.extend(h);
        let (completes, h) = {
            let store = store.clone();
            let leases = leases.clone();
            Batcher::spawn(
                workers,
                max,
                move |reqs: Vec<CompleteRequest>| {
                    let store = store.clone();
                    let leases = leases.clone();
                    async move {
                        let out = spread(reqs.len(), store.complete(&reqs).await, &leases);
                        for (req, r) in reqs.iter().zip(&out) {
                            if r.is_ok() {
                                leases.resolved(&req.key, req.token);
                            }
                        }
                        out
                    }
                },
                |n| {
                    METRICS
                        .batch_size
                        .with_label_values(&["complete"])
                        .observe(n as f64)
                },
            )
        };
        handles.extend(h);
        let (heartbeats, h) = {
            let store = store.clone();
            Batcher::spawn(
                workers,
                max * 4,
                move |reqs: Vec<HeartbeatRequest>| {
                    let store = store.clone();
                    async move {
                        match store.heartbeat(&reqs).await {
                            Ok(results) => results.into_iter().map(Ok).collect(),
                            Err(e) => vec![Err(e); reqs.len()],
                        }
                    }
                },
                |n| {
                    METRICS
                        .batch_size
                        .with_label_values(&["heartbeat"])
                        .observe(n as f64)
                },
            )
        };
        handles.extend(h);

        let shared = Arc::new(Shared {
            limits: options.limits.clone(),
            store,
            claims,
            completes,
            heartbeats,
            leases,
            shutdown,
        });
        (SentinelApi { shared }, handles)
    }

    pub fn leases(&self) -> Arc<LeaseRegistry> {
        self.shared.leases.clone()
    }
}

/// Records the request metrics of one RPC, its outcome on the RPC span, and converts its
/// error to a status (in `status`, the one place that does so).
async fn metered<T>(
    rpc: &'static str,
    fut: impl std::future::Future<Output = Result<(T, &'static str, Option<u64>)>>,
) -> Result<Response<T>, Status> {
    let start = std::time::Instant::now();
    let result = fut.await;
    let m = &METRICS;
    m.request_duration
        .with_label_values(&[rpc])
        .observe(start.elapsed().as_secs_f64());
    match result {
        Ok((resp, outcome, token)) => {
            m.requests.with_label_values(&[rpc, outcome]).inc();
            telemetry::record_outcome(outcome, token);
            Ok(Response::new(resp))
        }
        Err(e) => {
            m.requests.with_label_values(&[rpc, e.label()]).inc();
            telemetry::record_outcome(e.label(), None);
            if matches!(e, Error::Internal(_)) {
                tracing::error!(rpc, error = %e, "internal error");
            }
            Err(e.into())
        }
    }
}

fn claim_label(o: &ClaimOutcome) -> (&'static str, Option<u64>) {
    match o {
        ClaimOutcome::Acquired { token, .. } => ("ACQUIRED", Some(*token)),
        ClaimOutcome::InProgress { .. } => ("IN_PROGRESS", None),
        ClaimOutcome::Completed { token, .. } => ("COMPLETED", Some(*token)),
        ClaimOutcome::Failed { token, .. } => ("FAILED", Some(*token)),
        ClaimOutcome::Uncertain { token, .. } => ("UNCERTAIN", Some(*token)),
    }
}

#[tonic::async_trait]
impl SentinelService for SentinelApi {
    async fn claim(
        &self,
        request: Request<pb::ClaimRequest>,
    ) -> Result<Response<pb::ClaimResponse>, Status> {
        metered("Claim", async {
            let r = request.into_inner();
            telemetry::record_key(&r.namespace, &r.key);
            let req = convert::claim_request(&self.shared.limits, r)?;
            let outcome = self.shared.claims.call(req).await??;
            let (label, token) = claim_label(&outcome);
            Ok((convert::claim_response(outcome), label, token))
        })
        .await
    }

    type HeartbeatStream = heartbeat::HeartbeatStream;

    async fn heartbeat(
        &self,
        request: Request<Streaming<pb::HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        METRICS
            .requests
            .with_label_values(&["Heartbeat", "STREAM_OPENED"])
            .inc();
        Ok(Response::new(heartbeat::serve(
            self.shared.clone(),
            request.into_inner(),
        )))
    }

    async fn complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        metered("Complete", async {
            let r = request.into_inner();
            telemetry::record_key(&r.namespace, &r.key);
            let req = convert::complete_request(&self.shared.limits, r)?;
            let result = self.shared.completes.call(req).await??;
            let label = result.state.name();
            let token = result.token;
            Ok((convert::complete_response(result), label, Some(token)))
        })
        .await
    }

    async fn reconcile(
        &self,
        request: Request<pb::ReconcileRequest>,
    ) -> Result<Response<pb::ReconcileResponse>, Status> {
        metered("Reconcile", async {
            let r = request.into_inner();
            telemetry::record_key(&r.namespace, &r.key);
            let req = convert::reconcile_request(&self.shared.limits, r)?;
            let mut out = spread(
                1,
                self.shared.store.reconcile(&req).await,
                &self.shared.leases,
            );
            let result = out.pop().expect("one result")?;
            let (label, token) = (result.state.name(), result.token);
            Ok((convert::reconcile_response(result), label, Some(token)))
        })
        .await
    }

    async fn inspect(
        &self,
        request: Request<pb::InspectRequest>,
    ) -> Result<Response<pb::InspectResponse>, Status> {
        metered("Inspect", async {
            let r = request.get_ref();
            telemetry::record_key(&r.namespace, &r.key);
            let (key, limit) = convert::inspect_request(&self.shared.limits, r)?;
            let (view, history) = self
                .shared
                .store
                .inspect(&key, limit)
                .await?
                .ok_or(Error::Rejected(crate::core::Rejection::NotFound))?;
            let resp = pb::InspectResponse {
                execution: Some(convert::execution(view)),
                history: history.into_iter().map(convert::history_event).collect(),
            };
            Ok((resp, "OK", None))
        })
        .await
    }

    async fn list_executions(
        &self,
        request: Request<pb::ListExecutionsRequest>,
    ) -> Result<Response<pb::ListExecutionsResponse>, Status> {
        metered("ListExecutions", async {
            let req = convert::list_request(&self.shared.limits, request.get_ref())?;
            let page = self.shared.store.list(&req).await?;
            let next_page_token = match page.last() {
                Some(last) if page.len() as u32 == req.page_size => {
                    convert::page_token(&last.key.key)
                }
                _ => String::new(),
            };
            let resp = pb::ListExecutionsResponse {
                executions: page.into_iter().map(convert::execution).collect(),
                next_page_token,
            };
            Ok((resp, "OK", None))
        })
        .await
    }
}
