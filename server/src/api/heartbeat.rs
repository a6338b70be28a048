//! The heartbeat stream: many leases multiplexed on one bidirectional stream.
//!
//! One task per stream reads requests, queues each to the heartbeat batcher, and writes the
//! replies in request order; it also forwards LOST pushes from the lease registry. A lost
//! lease is a reply, never a stream error, so the other leases on the stream carry on. The
//! task ends when the client closes its side (after answering what it sent), when the
//! client goes away (a failed send), or when the server shuts down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::stream::FuturesOrdered;
use futures::StreamExt;
use sentinel_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::convert;
use super::leases::Push;
use super::Shared;
use crate::core::{ExecKey, HeartbeatResult, LostReason, Token};
use crate::telemetry::metrics::METRICS;

/// Requests in flight per stream before the task stops reading (back-pressure).
const MAX_IN_FLIGHT: usize = 4096;

static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

pub type HeartbeatStream = ReceiverStream<Result<pb::HeartbeatResponse, Status>>;

fn reply(
    key: &ExecKey,
    token: Token,
    result: pb::heartbeat_response::Result,
) -> pb::HeartbeatResponse {
    pb::HeartbeatResponse {
        namespace: key.namespace.as_str().to_owned(),
        key: key.key.as_str().to_owned(),
        token,
        result: Some(result),
    }
}

fn lost(reason: LostReason, detail: String) -> pb::heartbeat_response::Result {
    pb::heartbeat_response::Result::Lost(pb::HeartbeatLost {
        reason: convert::lost_to_pb(reason) as i32,
        detail,
    })
}

/// Starts the task serving one stream and returns the stream of replies.
pub fn serve(shared: Arc<Shared>, mut inbound: Streaming<pb::HeartbeatRequest>) -> HeartbeatStream {
    let (tx, rx) = mpsc::channel(1024);
    let (push_tx, mut push_rx) = mpsc::channel::<Push>(1024);
    let stream = NEXT_STREAM.fetch_add(1, Ordering::Relaxed);
    let mut shutdown = shared.shutdown.clone();
    tokio::spawn(async move {
        METRICS.heartbeat_streams.inc();
        let mut pending = FuturesOrdered::new();
        let mut inbound_open = true;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                Some(reply) = pending.next() => {
                    if let Some(reply) = reply {
                        if tx.send(Ok(reply)).await.is_err() {
                            break;
                        }
                    }
                }
                Some((key, token, reason, detail)) = push_rx.recv() => {
                    shared.note_lost(reason);
                    if tx.send(Ok(reply(&key, token, lost(reason, detail)))).await.is_err() {
                        break;
                    }
                }
                msg = inbound.message(), if inbound_open && pending.len() < MAX_IN_FLIGHT => match msg {
                    Ok(Some(req)) => {
                        let shared = shared.clone();
                        let push_tx = push_tx.clone();
                        pending.push_back(async move { answer(&shared, stream, &push_tx, req).await });
                    }
                    Ok(None) => inbound_open = false,
                    Err(status) => {
                        tracing::debug!(%status, "heartbeat stream ended by the client");
                        break;
                    }
                },
                else => break,
            }
            if !inbound_open && pending.is_empty() {
                break;
            }
        }
        shared.leases.stream_closed(stream);
        METRICS.heartbeat_streams.dec();
    });
    ReceiverStream::new(rx)
}

async fn answer(
    shared: &Shared,
    stream: u64,
    push: &mpsc::Sender<Push>,
    req: pb::HeartbeatRequest,
) -> Option<pb::HeartbeatResponse> {
    let hb = match convert::heartbeat_request(&shared.limits, &req) {
        Ok(hb) => hb,
        Err(detail) => {
            shared.note_lost(LostReason::NotFound);
            let result = lost(LostReason::NotFound, detail);
            return Some(pb::HeartbeatResponse {
                namespace: req.namespace,
                key: req.key,
                token: req.token,
                result: Some(result),
            });
        }
    };
    let result = match shared.heartbeats.call(hb.clone()).await {
        Ok(Ok(HeartbeatResult::Alive {
            lease_expires_at,
            ttl_remaining,
        })) => {
            shared
                .leases
                .alive(&hb.key, hb.token, stream, push, ttl_remaining);
            pb::heartbeat_response::Result::Alive(pb::HeartbeatAlive {
                lease_expires_at: Some(convert::timestamp(lease_expires_at)),
                ttl_remaining: Some(convert::duration_to_pb(ttl_remaining)),
            })
        }
        // Busy: no answer, like a database error; the next heartbeat tries again.
        Ok(Ok(HeartbeatResult::NotRenewed)) => return None,
        Ok(Ok(HeartbeatResult::Lost { reason, detail })) => {
            shared.leases.forget(&hb.key, hb.token, stream);
            shared.note_lost(reason);
            lost(reason, detail)
        }
        // The database could not answer: the lease was not extended, but it is not lost
        // either. Say nothing; the client's local deadline decides if this lasts, and its
        // next heartbeat may get through.
        Ok(Err(e)) | Err(e) => {
            tracing::warn!(error = %e, key = %hb.key, "heartbeat not renewed");
            return None;
        }
    };
    Some(reply(&hb.key, hb.token, result))
}
