//! Group commit: concurrent requests of one kind are coalesced into one store call.
//!
//! A fixed number of workers share one queue. An idle worker takes the first request that
//! arrives and everything already queued behind it (up to `max_batch`), runs them as one
//! batch, and answers each caller after the batch's commit. There is no timer: a lone
//! request is executed at once, and under load batches grow by themselves while the other
//! workers are busy with theirs.
//!
//! Cancellation: a caller that stops waiting does not cancel its request; once queued it is
//! executed and committed, exactly as if the reply had been lost on the network.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinHandle;

use crate::error::Error;

struct Job<Req, Resp> {
    req: Req,
    reply: oneshot::Sender<Resp>,
}

/// The sending side of a batching queue.
pub struct Batcher<Req, Resp> {
    tx: mpsc::Sender<Job<Req, Resp>>,
}

impl<Req, Resp> Clone for Batcher<Req, Resp> {
    fn clone(&self) -> Self {
        Batcher {
            tx: self.tx.clone(),
        }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts `workers` workers running `handler` on batches of at most `max_batch`.
    /// `handler` must return exactly one response per request, in order. The workers stop
    /// when every `Batcher` clone is dropped and the queue is drained.
    pub fn spawn<F, Fut>(
        workers: usize,
        max_batch: usize,
        handler: F,
        observe: impl Fn(usize) + Send + Sync + 'static,
    ) -> (Self, Vec<JoinHandle<()>>)
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Resp>> + Send,
    {
        let (tx, rx) = mpsc::channel::<Job<Req, Resp>>(max_batch * workers * 4);
        let rx = Arc::new(Mutex::new(rx));
        let handler = Arc::new(handler);
        let observe = Arc::new(observe);
        let handles = (0..workers.max(1))
            .map(|_| {
                let rx = rx.clone();
                let handler = handler.clone();
                let observe = observe.clone();
                tokio::spawn(async move {
                    loop {
                        let jobs = {
                            let mut rx = rx.lock().await;
                            let Some(first) = rx.recv().await else { break };
                            let mut jobs = vec![first];
                            while jobs.len() < max_batch {
                                match rx.try_recv() {
                                    Ok(job) => jobs.push(job),
                                    Err(_) => break,
                                }
                            }
                            jobs
                        };
                        observe(jobs.len());
                        let (reqs, replies): (Vec<Req>, Vec<oneshot::Sender<Resp>>) =
                            jobs.into_iter().map(|j| (j.req, j.reply)).unzip();
                        let resps = handler(reqs).await;
                        debug_assert_eq!(resps.len(), replies.len());
                        for (reply, resp) in replies.into_iter().zip(resps) {
                            // The caller may have gone away; its request still committed.
                            let _ = reply.send(resp);
                        }
                    }
                })
            })
            .collect();
        (Batcher { tx }, handles)
    }

    /// Queues one request and waits for its batch to commit.
    pub async fn call(&self, req: Req) -> Result<Resp, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { req, reply })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)
    }
}
