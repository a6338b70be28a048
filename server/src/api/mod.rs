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
        tracing::debug!(reason = reason.name(), "lease lost");
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
                |n| tracing::trace!(batch = n, "claim batch"),
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
                |n| tracing::trace!(batch = n, "complete batch"),
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
                |n| tracing::trace!(batch = n, "heartbeat batch"),
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

#[tonic::async_trait]
impl SentinelService for SentinelApi {
    async fn claim(
        &self,
        request: Request<pb::ClaimRequest>,
    ) -> Result<Response<pb::ClaimResponse>, Status> {
        let req = convert::claim_request(&self.shared.limits, request.into_inner())?;
        let outcome = self.shared.claims.call(req).await??;
        Ok(Response::new(convert::claim_response(outcome)))
    }

    type HeartbeatStream = heartbeat::HeartbeatStream;

    async fn heartbeat(
        &self,
        request: Request<Streaming<pb::HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        Ok(Response::new(heartbeat::serve(
            self.shared.clone(),
            request.into_inner(),
        )))
    }

    async fn complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        let req = convert::complete_request(&self.shared.limits, request.into_inner())?;
        let result = self.shared.completes.call(req).await??;
        Ok(Response::new(convert::complete_response(result)))
    }

    async fn reconcile(
        &self,
        request: Request<pb::ReconcileRequest>,
    ) -> Result<Response<pb::ReconcileResponse>, Status> {
        let req = convert::reconcile_request(&self.shared.limits, request.into_inner())?;
        let mut out = spread(
            1,
            self.shared.store.reconcile(&req).await,
            &self.shared.leases,
        );
        let result = out.pop().expect("one result")?;
        Ok(Response::new(convert::reconcile_response(result)))
    }

    async fn inspect(
        &self,
        request: Request<pb::InspectRequest>,
    ) -> Result<Response<pb::InspectResponse>, Status> {
        let (key, limit) = convert::inspect_request(&self.shared.limits, request.get_ref())?;
        let (view, history) = self
            .shared
            .store
            .inspect(&key, limit)
            .await?
            .ok_or(Error::Rejected(crate::core::Rejection::NotFound))?;
        Ok(Response::new(pb::InspectResponse {
            execution: Some(convert::execution(view)),
            history: history.into_iter().map(convert::history_event).collect(),
        }))
    }

    async fn list_executions(
        &self,
        request: Request<pb::ListExecutionsRequest>,
    ) -> Result<Response<pb::ListExecutionsResponse>, Status> {
        let req = convert::list_request(&self.shared.limits, request.get_ref())?;
        let page = self.shared.store.list(&req).await?;
        let next_page_token = match page.last() {
            Some(last) if page.len() as u32 == req.page_size => convert::page_token(&last.key.key),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListExecutionsResponse {
            executions: page.into_iter().map(convert::execution).collect(),
            next_page_token,
        }))
    }
}
