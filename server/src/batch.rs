//! Group commit: concurrent requests of one kind are coalesced into one store call.
//!
//! A fixed number of workers share one queue. An idle worker takes the first request that
//! arrives and everything already queued behind it (up to `max_batch`), runs them as one
//! batch, and answers each caller after the batch's commit. A lone request (no batch of its
//! kind in flight) is executed at once, and under load batches grow by themselves while the
//! other workers are busy with theirs.
//!
//! Batches overlap only when it pays. While a batch of the same kind is in flight, the next
//! worker keeps gathering requests until that batch finishes, until it has gathered
//! `OVERLAP_MIN` requests, or until `OVERLAP_WAIT` has passed, whichever comes first. Each
//! statement has a fixed cost in the database (a commit, a WAL flush, executor start-up) that
//! a batch of two or three requests barely amortises: at a few dozen callers, two workers
//! each running tiny batches cost the database half as much again per request as one worker
//! running batches twice the size. Under heavy load the queue fills faster than a batch runs
//! and the workers overlap as before; and a batch stuck behind a row lock delays the next one
//! by at most `OVERLAP_WAIT`.
//!
//! Cancellation: a caller that stops waiting does not cancel its request; once queued it is
//! executed and committed, exactly as if the reply had been lost on the network.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Mutex, Notify};
use tokio::task::JoinHandle;

use crate::error::Error;

/// Requests that make a batch worth running beside one already in flight.
const OVERLAP_MIN: usize = 64;
/// The longest a batch waits for the one in flight before it runs beside it anyway.
const OVERLAP_WAIT: Duration = Duration::from_millis(5);

/// Batches of one kind in flight, and a signal when one finishes.
#[derive(Default)]
struct InFlight {
    batches: AtomicUsize,
    finished: Notify,
}

impl InFlight {
    /// Counts a batch in flight until the returned guard is dropped (even by a panic).
    fn start(&self) -> Running<'_> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        Running(self)
    }
}

struct Running<'a>(&'a InFlight);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.batches.fetch_sub(1, Ordering::SeqCst);
        self.0.finished.notify_waiters();
    }
}

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
        let in_flight = Arc::new(InFlight::default());
        let handles = (0..workers.max(1))
            .map(|_| {
                let rx = rx.clone();
                let handler = handler.clone();
                let observe = observe.clone();
                let in_flight = in_flight.clone();
                tokio::spawn(async move {
                    loop {
                        let (jobs, running) = {
                            let mut rx = rx.lock().await;
                            let Some(first) = rx.recv().await else { break };
                            let mut jobs = vec![first];
                            drain(&mut rx, &mut jobs, max_batch);
                            gather_while_in_flight(&mut rx, &mut jobs, max_batch, &in_flight).await;
                            // Counted before the queue is released, so that the next worker
                            // sees this batch in flight.
                            (jobs, in_flight.start())
                        };
                        observe(jobs.len());
                        let (reqs, replies): (Vec<Req>, Vec<oneshot::Sender<Resp>>) =
                            jobs.into_iter().map(|j| (j.req, j.reply)).unzip();
                        let resps = handler(reqs).await;
                        drop(running);
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

/// Moves what is already queued into `jobs`, up to `max_batch`.
fn drain<T>(rx: &mut mpsc::Receiver<T>, jobs: &mut Vec<T>, max_batch: usize) {
    while jobs.len() < max_batch {
        match rx.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
}

/// While another batch of this kind is in flight, keeps gathering requests into `jobs` until
/// that batch finishes, `OVERLAP_MIN` (or `max_batch`) requests are gathered, or
/// `OVERLAP_WAIT` has passed. Returns at once when no batch is in flight.
async fn gather_while_in_flight<T>(
    rx: &mut mpsc::Receiver<T>,
    jobs: &mut Vec<T>,
    max_batch: usize,
    in_flight: &InFlight,
) {
    let enough = OVERLAP_MIN.min(max_batch);
    if jobs.len() >= enough || in_flight.batches.load(Ordering::SeqCst) == 0 {
        return;
    }
    let deadline = tokio::time::sleep(OVERLAP_WAIT);
    tokio::pin!(deadline);
    while jobs.len() < enough {
        // Registered before the count is read, so a batch finishing in between is not missed.
        let finished = in_flight.finished.notified();
        tokio::pin!(finished);
        finished.as_mut().enable();
        if in_flight.batches.load(Ordering::SeqCst) == 0 {
            return;
        }
        tokio::select! {
            biased;
            () = &mut finished => {
                drain(rx, jobs, max_batch);
                return;
            }
            job = rx.recv() => match job {
                Some(job) => {
                    jobs.push(job);
                    drain(rx, jobs, max_batch);
                }
                // Shutting down: run what was gathered.
                None => return,
            },
            () = &mut deadline => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;
    use tokio::time::Instant;

    /// Every batch a handler was given, in order.
    type Seen = Arc<StdMutex<Vec<Vec<u32>>>>;

    /// A batcher of two workers whose handler records each batch; a batch holding request 0
    /// waits for `gate` before it finishes, and one holding `PANICS` panics.
    fn batcher(gate: Option<oneshot::Receiver<()>>) -> (Batcher<u32, u32>, Seen) {
        let batches = Arc::new(StdMutex::new(Vec::new()));
        let gate = Arc::new(Mutex::new(gate));
        let seen = batches.clone();
        let (b, _) = Batcher::spawn(
            2,
            512,
            move |reqs: Vec<u32>| {
                let seen = seen.clone();
                let gate = gate.clone();
                async move {
                    seen.lock().unwrap().push(reqs.clone());
                    assert!(!reqs.contains(&PANICS), "the handler panics");
                    if reqs.contains(&0) {
                        if let Some(g) = gate.lock().await.take() {
                            let _ = g.await;
                        }
                    }
                    reqs
                }
            },
            |_| {},
        );
        (b, batches)
    }

    const PANICS: u32 = 99;

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    /// Queues request `i` from a task of its own.
    fn call(b: &Batcher<u32, u32>, i: u32) -> JoinHandle<Result<u32, Error>> {
        let b = b.clone();
        tokio::spawn(async move { b.call(i).await })
    }

    /// A batcher with a batch (request 0) in flight until `open` is used or dropped.
    async fn with_a_batch_in_flight() -> (
        Batcher<u32, u32>,
        Seen,
        oneshot::Sender<()>,
        JoinHandle<Result<u32, Error>>,
    ) {
        let (open, gate) = oneshot::channel();
        let (b, batches) = batcher(Some(gate));
        let first = call(&b, 0);
        settle().await;
        (b, batches, open, first)
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_request_runs_at_once() {
        let (b, batches) = batcher(None);
        let t0 = Instant::now();
        assert_eq!(b.call(7).await.unwrap(), 7);
        assert_eq!(t0.elapsed(), Duration::ZERO);
        assert_eq!(*batches.lock().unwrap(), vec![vec![7]]);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_arriving_during_a_batch_wait_for_it_and_then_go_together() {
        let (b, batches, open, first) = with_a_batch_in_flight().await;
        // One at a time, each after the second worker could have taken the previous one.
        let mut later = Vec::new();
        for i in 1..=3 {
            later.push(call(&b, i));
            settle().await;
        }
        assert_eq!(
            *batches.lock().unwrap(),
            vec![vec![0]],
            "nothing ran beside it"
        );
        open.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 0);
        for (i, h) in (1..).zip(later) {
            assert_eq!(h.await.unwrap().unwrap(), i);
        }
        assert_eq!(*batches.lock().unwrap(), vec![vec![0], vec![1, 2, 3]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_batch_delays_the_next_by_at_most_the_overlap_wait() {
        let (b, batches, _open, _stuck) = with_a_batch_in_flight().await;
        let t0 = Instant::now();
        assert_eq!(b.call(5).await.unwrap(), 5);
        assert_eq!(t0.elapsed(), OVERLAP_WAIT);
        assert_eq!(*batches.lock().unwrap(), vec![vec![0], vec![5]]);
    }

    #[tokio::test(start_paused = true)]
    async fn enough_requests_run_beside_the_batch_in_flight_without_waiting() {
        let (b, batches, _open, _stuck) = with_a_batch_in_flight().await;
        let t0 = Instant::now();
        let calls: Vec<_> = (1..=OVERLAP_MIN as u32).map(|i| call(&b, i)).collect();
        for (i, h) in (1..).zip(calls) {
            assert_eq!(h.await.unwrap().unwrap(), i);
        }
        assert!(t0.elapsed() < OVERLAP_WAIT, "{:?}", t0.elapsed());
        let batches = batches.lock().unwrap();
        assert_eq!(batches.len(), 2, "{batches:?}");
        assert_eq!(batches[1].len(), OVERLAP_MIN);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_whose_handler_panics_does_not_hold_up_the_next() {
        let (b, batches) = batcher(None);
        assert!(b.call(PANICS).await.is_err(), "its caller is not answered");
        let t0 = Instant::now();
        assert_eq!(b.call(5).await.unwrap(), 5);
        assert_eq!(t0.elapsed(), Duration::ZERO);
        assert_eq!(*batches.lock().unwrap(), vec![vec![PANICS], vec![5]]);
    }
}
