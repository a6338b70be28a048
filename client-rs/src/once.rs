//! `once`: claim, run the work under a heartbeated lease, complete, and say which of the five
//! outcomes happened. This follows "The client contract" of DESIGN.md; the client decides
//! nothing itself, it only maps what the work returned onto an outcome the server records.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::client::Client;
use crate::codec::{BytesCodec, Codec};
use crate::error::{BoxError, Error};
use crate::heartbeat::local_deadline;
use crate::lease::Lease;
use crate::model::{
    ClaimOptions, ClaimOutcome, CompleteOutcome, ExecutionState, InProgress, LeaseExpiryPolicy,
    ReconcileOptions, Reconciled, Resolution, SideEffects, Uncertain, UncertainReason,
};

/// The server's default limit on failure messages; longer ones are cut, not rejected.
const MAX_MESSAGE_BYTES: usize = 4096;
const FIRST_POLL: Duration = Duration::from_millis(20);
const MAX_POLL: Duration = Duration::from_millis(250);

/// Options of [`Client::once`]; unset fields take the server defaults.
#[derive(Clone, Debug)]
pub struct OnceOptions<C = BytesCodec> {
    claim: ClaimOptions,
    wait_in_progress: Option<Duration>,
    codec: C,
}

impl Default for OnceOptions<BytesCodec> {
    fn default() -> Self {
        Self::new()
    }
}

impl OnceOptions<BytesCodec> {
    /// Server defaults, responses as raw bytes, no waiting for a running execution.
    pub fn new() -> Self {
        Self {
            claim: ClaimOptions::default(),
            wait_in_progress: None,
            codec: BytesCodec,
        }
    }
}

impl<C> OnceOptions<C> {
    /// How long the lease lives without a heartbeat (server default 30 s). Heartbeats are sent
    /// every third of it.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.claim.lease_ttl = Some(ttl);
        self
    }

    /// Caps the whole execution from the claim (server default 1 h).
    pub fn hard_ttl(mut self, ttl: Duration) -> Self {
        self.claim.hard_ttl = Some(ttl);
        self
    }

    /// Identifies the request payload; the same key with another fingerprint is rejected.
    pub fn fingerprint(mut self, fingerprint: impl Into<Vec<u8>>) -> Self {
        self.claim.fingerprint = Some(fingerprint.into());
        self
    }

    /// How long the outcome is kept and replayed (server default 24 h).
    pub fn retention(mut self, retention: Duration) -> Self {
        self.claim.retention = Some(retention);
        self
    }

    /// What a claim does with an execution whose lease expired (default: report UNCERTAIN).
    pub fn on_lease_expiry(mut self, policy: LeaseExpiryPolicy) -> Self {
        self.claim.on_lease_expiry = policy;
        self
    }

    /// The holder named in the claim (default: the client's holder).
    pub fn holder(mut self, holder: impl Into<String>) -> Self {
        self.claim.holder = Some(holder.into());
        self
    }

    /// When another worker is running the execution, poll for up to `wait` for its outcome
    /// (or for the key to be released, in which case this call runs the work) instead of
    /// returning [`Outcome::InProgress`] at once.
    pub fn wait_in_progress(mut self, wait: Duration) -> Self {
        self.wait_in_progress = Some(wait);
        self
    }

    /// The codec of the response (default [`BytesCodec`]).
    pub fn codec<C2: Codec>(self, codec: C2) -> OnceOptions<C2> {
        OnceOptions {
            claim: self.claim,
            wait_in_progress: self.wait_in_progress,
            codec,
        }
    }

    /// The claim options these options make.
    pub fn claim_options(&self) -> &ClaimOptions {
        &self.claim
    }
}

/// How a failed attempt is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Nothing happened; another attempt may run: FAILURE{NONE, retryable}, the key is released.
    NothingHappened,
    /// Nothing happened and retrying is pointless (e.g. a declined card):
    /// FAILURE{NONE, not retryable}, the failure is stored and replayed.
    Definite,
    /// The work may have partly happened: FAILURE{POSSIBLE}, the execution becomes UNCERTAIN.
    Possible,
}

/// The error of the work passed to [`Client::once`].
///
/// Any `std::error::Error` converts into it (with `?`) as [`FailureKind::Possible`]: unless the
/// work says otherwise, a failure may have had side effects. Mark the failures that certainly
/// did nothing with [`WorkError::nothing_happened`] or [`WorkResultExt::nothing_happened`].
pub struct WorkError {
    kind: FailureKind,
    error: BoxError,
}

impl WorkError {
    /// Nothing happened, safe to retry: the key is released and the next `once` runs again.
    pub fn nothing_happened(error: impl Into<BoxError>) -> Self {
        Self {
            kind: FailureKind::NothingHappened,
            error: error.into(),
        }
    }

    /// Nothing happened and it never will: the failure is stored and replayed.
    pub fn definite(error: impl Into<BoxError>) -> Self {
        Self {
            kind: FailureKind::Definite,
            error: error.into(),
        }
    }

    /// The work may have partly happened: the execution becomes UNCERTAIN.
    pub fn possible(error: impl Into<BoxError>) -> Self {
        Self {
            kind: FailureKind::Possible,
            error: error.into(),
        }
    }

    /// How this failure is reported.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The underlying error.
    pub fn get_ref(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.error
    }

    /// The underlying error, by value.
    pub fn into_inner(self) -> BoxError {
        self.error
    }

    fn to_complete(&self) -> CompleteOutcome {
        let (retryable, side_effects) = match self.kind {
            FailureKind::NothingHappened => (true, SideEffects::None),
            FailureKind::Definite => (false, SideEffects::None),
            FailureKind::Possible => (false, SideEffects::Possible),
        };
        CompleteOutcome::Failure {
            message: truncate(self.error.to_string(), MAX_MESSAGE_BYTES),
            retryable,
            side_effects,
        }
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for WorkError {
    fn from(error: E) -> Self {
        Self::possible(error)
    }
}

impl fmt::Display for WorkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl fmt::Debug for WorkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkError")
            .field("kind", &self.kind)
            .field("error", &self.error)
            .finish()
    }
}

/// Marks the error of a result for [`Client::once`].
pub trait WorkResultExt<T> {
    /// The error certainly did nothing: the key is released for another attempt.
    fn nothing_happened(self) -> Result<T, WorkError>;
    /// The error certainly did nothing and retrying is pointless: the failure is stored.
    fn definite_failure(self) -> Result<T, WorkError>;
}

impl<T, E: Into<BoxError>> WorkResultExt<T> for Result<T, E> {
    fn nothing_happened(self) -> Result<T, WorkError> {
        self.map_err(WorkError::nothing_happened)
    }

    fn definite_failure(self) -> Result<T, WorkError> {
        self.map_err(WorkError::definite)
    }
}

/// A stored response: the value, and the exact bytes every caller receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response<T> {
    /// The value (for a replay, decoded from `bytes`).
    pub value: T,
    /// The exact bytes stored by the server.
    pub bytes: Vec<u8>,
    /// The token under which the execution completed.
    pub token: u64,
    /// When it was stored.
    pub completed_at: Option<SystemTime>,
    /// The lease had expired but the token was still current, so the outcome was accepted
    /// late. Always false for a replay.
    pub late: bool,
}

/// A failure: stored and replayed, or just reported with nothing done and the key released.
#[derive(Debug)]
pub struct Failure {
    /// The failure message.
    pub message: String,
    /// The token of the attempt.
    pub token: u64,
    /// The key was released: nothing happened and the next `once` runs the work again.
    pub released: bool,
    /// A stored failure was replayed; the work did not run.
    pub cached: bool,
    /// The work's own error, when it ran in this call.
    pub error: Option<WorkError>,
}

/// An execution that may have partly happened, with what a reconciler needs.
#[derive(Debug)]
pub struct UncertainOutcome {
    /// The server's account of it.
    pub uncertain: Uncertain,
    /// Resolves it by compare-and-set on its current token.
    pub reconcile: ReconcileHandle,
    /// The work's own error, when it ran in this call.
    pub error: Option<WorkError>,
}

/// Which of the five outcomes a [`Client::once`] call had.
#[derive(Debug)]
pub enum Outcome<T> {
    /// The work ran in this call and its response was stored.
    Completed(Response<T>),
    /// A stored response was replayed; the work did not run.
    Replayed(Response<T>),
    /// Another worker holds a live lease (after waiting, if asked to).
    InProgress(InProgress),
    /// The work may have partly happened: it needs reconciliation.
    Uncertain(UncertainOutcome),
    /// The work failed definitely (stored, or replayed), or did nothing and released the key.
    Failed(Failure),
}

impl<T> Outcome<T> {
    /// The response, for a completion or a replay.
    pub fn response(&self) -> Option<&T> {
        match self {
            Self::Completed(r) | Self::Replayed(r) => Some(&r.value),
            _ => None,
        }
    }

    /// The exact stored bytes, for a completion or a replay.
    pub fn response_bytes(&self) -> Option<&[u8]> {
        match self {
            Self::Completed(r) | Self::Replayed(r) => Some(&r.bytes),
            _ => None,
        }
    }

    /// The response, by value.
    pub fn into_response(self) -> Option<T> {
        match self {
            Self::Completed(r) | Self::Replayed(r) => Some(r.value),
            _ => None,
        }
    }

    /// The outcome was stored before this call: the work did not run.
    pub fn cached(&self) -> bool {
        match self {
            Self::Replayed(_) => true,
            Self::Failed(f) => f.cached,
            _ => false,
        }
    }

    /// Another worker is running the execution.
    pub fn execution_alive(&self) -> bool {
        matches!(self, Self::InProgress(_))
    }

    /// The uncertain execution, if that is the outcome.
    pub fn uncertain(&self) -> Option<&Uncertain> {
        match self {
            Self::Uncertain(u) => Some(&u.uncertain),
            _ => None,
        }
    }

    /// The handle to reconcile an uncertain execution.
    pub fn reconcile(&self) -> Option<&ReconcileHandle> {
        match self {
            Self::Uncertain(u) => Some(&u.reconcile),
            _ => None,
        }
    }
}

/// Resolves one uncertain execution; every method is a compare-and-set on its token.
#[derive(Clone, Debug)]
pub struct ReconcileHandle {
    client: Client,
    key: String,
    token: u64,
}

impl ReconcileHandle {
    /// The key of the execution.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The token the reconcile expects.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Resolves with any resolution and options.
    pub async fn resolve(
        &self,
        resolution: &Resolution,
        options: &ReconcileOptions,
    ) -> Result<Reconciled, Error> {
        self.client
            .reconcile(&self.key, self.token, resolution, options)
            .await
    }

    /// Releases the key: the next `once` runs the work again.
    pub async fn retry(&self, note: impl Into<String>) -> Result<Reconciled, Error> {
        self.resolve(&Resolution::Retry, &note_only(note)).await
    }

    /// Stores `response` as if the work had completed.
    pub async fn mark_completed(
        &self,
        response: Vec<u8>,
        note: impl Into<String>,
    ) -> Result<Reconciled, Error> {
        self.resolve(&Resolution::MarkCompleted { response }, &note_only(note))
            .await
    }

    /// Stores a definite failure.
    pub async fn mark_failed(
        &self,
        message: impl Into<String>,
        note: impl Into<String>,
    ) -> Result<Reconciled, Error> {
        let resolution = Resolution::MarkFailed {
            message: message.into(),
        };
        self.resolve(&resolution, &note_only(note)).await
    }
}

fn note_only(note: impl Into<String>) -> ReconcileOptions {
    ReconcileOptions {
        note: note.into(),
        ..ReconcileOptions::default()
    }
}

impl Client {
    /// Runs `work` at most once for `key`, and tells every caller how it went.
    ///
    /// Claims the key; when acquired, runs `work` with a [`Lease`] (its fencing token, and a
    /// cancellation that fires when the lease is lost or cannot be proven alive) while the
    /// client's heartbeat stream renews the lease, then completes:
    /// `Ok(value)` is stored as the encoded response; an error marked "nothing happened"
    /// releases the key; any other error (and a value that cannot be encoded or stored) makes
    /// the execution UNCERTAIN. Otherwise the stored outcome is replayed, or the caller learns
    /// that the execution is running or uncertain.
    ///
    /// Cancellation is cooperative: the work is never dropped mid-way; it should return when
    /// [`Lease::cancelled`] fires. Its result is still reported, and the server decides: a
    /// token superseded by a reconcile or a takeover gets [`Error::Fenced`]. Dropping the
    /// future of `once` stops the heartbeats; the execution then becomes UNCERTAIN when its
    /// lease expires, as nothing is known about the work.
    ///
    /// Errors are those of the calls (`Fenced`, `FingerprintMismatch`, `InvalidArgument`,
    /// `Unavailable` after the retries, ...) and [`Error::Decode`] for a replay the codec
    /// cannot read.
    pub async fn once<C, F, Fut, E>(
        &self,
        key: &str,
        options: &OnceOptions<C>,
        work: F,
    ) -> Result<Outcome<C::Value>, Error>
    where
        C: Codec,
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = Result<C::Value, E>>,
        E: Into<WorkError>,
    {
        let wait_until = options
            .wait_in_progress
            .map(|w| tokio::time::Instant::now() + w);
        let mut poll = FIRST_POLL;
        loop {
            let (outcome, sent_at) = self.claim_timed(key, &options.claim).await?;
            match outcome {
                ClaimOutcome::Acquired(acquired) => {
                    let deadline = local_deadline(sent_at, acquired.ttl_remaining);
                    // The server's default lease ttl is configurable, so the ttl the claim
                    // reports is what the heartbeat period is derived from when none was asked.
                    let lease_ttl = options
                        .claim
                        .lease_ttl
                        .map_or(acquired.ttl_remaining, |t| t.min(acquired.ttl_remaining));
                    let lease = LeaseTerms {
                        token: acquired.token,
                        attempt: acquired.attempt,
                        lease_ttl,
                        deadline,
                    };
                    return self.run_acquired(key, options, lease, work).await;
                }
                ClaimOutcome::InProgress(in_progress) => {
                    let now = tokio::time::Instant::now();
                    match wait_until {
                        Some(until) if now < until => {
                            tokio::time::sleep(poll.min(until - now)).await;
                            poll = (poll * 2).min(MAX_POLL);
                        }
                        _ => return Ok(Outcome::InProgress(in_progress)),
                    }
                }
                ClaimOutcome::Completed(replayed) => {
                    let value = options.codec.decode(&replayed.response).map_err(|source| {
                        Error::Decode {
                            response: replayed.response.clone(),
                            source,
                        }
                    })?;
                    return Ok(Outcome::Replayed(Response {
                        value,
                        bytes: replayed.response,
                        token: replayed.token,
                        completed_at: replayed.completed_at,
                        late: false,
                    }));
                }
                ClaimOutcome::Failed(failed) => {
                    return Ok(Outcome::Failed(Failure {
                        message: failed.error,
                        token: failed.token,
                        released: false,
                        cached: true,
                        error: None,
                    }))
                }
                ClaimOutcome::Uncertain(uncertain) => {
                    return Ok(Outcome::Uncertain(UncertainOutcome {
                        reconcile: self.reconcile_handle(key, uncertain.token),
                        uncertain,
                        error: None,
                    }))
                }
            }
        }
    }

    fn reconcile_handle(&self, key: &str, token: u64) -> ReconcileHandle {
        ReconcileHandle {
            client: self.clone(),
            key: key.to_owned(),
            token,
        }
    }

    async fn run_acquired<C, F, Fut, E>(
        &self,
        key: &str,
        options: &OnceOptions<C>,
        terms: LeaseTerms,
        work: F,
    ) -> Result<Outcome<C::Value>, Error>
    where
        C: Codec,
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = Result<C::Value, E>>,
        E: Into<WorkError>,
    {
        let LeaseTerms {
            token,
            attempt,
            lease_ttl,
            deadline,
        } = terms;
        // Heartbeats go on until the guard drops, i.e. until the outcome is stored (or this
        // future is dropped): a slow Complete must not let the lease lapse meanwhile.
        let guard = self.inner.heartbeats.register(
            self.namespace.clone(),
            Arc::from(key),
            token,
            attempt,
            lease_ttl,
            deadline,
        );
        let result = work(guard.lease().clone()).await.map_err(Into::into);
        let fingerprint = options.claim.fingerprint.as_deref();

        let encoded = result.and_then(|value| match options.codec.encode(&value) {
            Ok(bytes) => Ok((value, bytes)),
            Err(e) => Err(WorkError::possible(format!(
                "the work succeeded but its response could not be encoded: {e}"
            ))),
        });
        let error = match encoded {
            Ok((value, bytes)) => {
                let success = CompleteOutcome::Success {
                    response: bytes.clone(),
                };
                match self.complete(key, token, &success, fingerprint).await {
                    Ok(c) if c.state == ExecutionState::Completed => {
                        return Ok(Outcome::Completed(Response {
                            value,
                            bytes,
                            token: c.token,
                            completed_at: c.resolved_at,
                            late: c.late,
                        }));
                    }
                    Ok(c) => {
                        return Err(Error::protocol(format!(
                            "a successful complete reported state {:?}",
                            c.state
                        )));
                    }
                    // The response cannot be stored (over the size limit): the work did
                    // happen, so say so rather than leave the lease to expire.
                    Err(Error::ResourceExhausted { message }) => WorkError::possible(format!(
                        "the work succeeded but its response could not be stored: {message}"
                    )),
                    Err(e) => return Err(e),
                }
            }
            Err(error) => error,
        };
        let completion = self
            .complete(key, token, &error.to_complete(), fingerprint)
            .await?;
        drop(guard);

        let message = error.to_string();
        match completion.state {
            ExecutionState::Released | ExecutionState::Failed => Ok(Outcome::Failed(Failure {
                message,
                token: completion.token,
                released: completion.state == ExecutionState::Released,
                cached: false,
                error: Some(error),
            })),
            ExecutionState::Uncertain => Ok(Outcome::Uncertain(UncertainOutcome {
                uncertain: Uncertain {
                    reason: UncertainReason::Reported,
                    token: completion.token,
                    holder: options
                        .claim
                        .holder
                        .clone()
                        .unwrap_or_else(|| self.inner.holder.clone()),
                    attempt,
                    error: message,
                    since: completion.resolved_at,
                },
                reconcile: self.reconcile_handle(key, completion.token),
                error: Some(error),
            })),
            state @ (ExecutionState::Completed | ExecutionState::Running) => Err(Error::protocol(
                format!("a failure complete reported state {state:?}"),
            )),
        }
    }
}

struct LeaseTerms {
    token: u64,
    attempt: u32,
    lease_ttl: Duration,
    deadline: tokio::time::Instant,
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_the_contract() {
        let cases = [
            (WorkError::nothing_happened("x"), true, SideEffects::None),
            (WorkError::definite("x"), false, SideEffects::None),
            (WorkError::possible("x"), false, SideEffects::Possible),
        ];
        for (e, want_retryable, want_effects) in cases {
            match e.to_complete() {
                CompleteOutcome::Failure {
                    retryable,
                    side_effects,
                    ..
                } => {
                    assert_eq!(retryable, want_retryable, "{e:?}");
                    assert_eq!(side_effects, want_effects, "{e:?}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn unmarked_errors_are_possible() {
        let io = std::io::Error::other("boom");
        assert_eq!(WorkError::from(io).kind(), FailureKind::Possible);
        let r: Result<(), &str> = Err("no");
        assert_eq!(
            r.nothing_happened().unwrap_err().kind(),
            FailureKind::NothingHappened
        );
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let s = "é".repeat(3000);
        let t = truncate(s, MAX_MESSAGE_BYTES);
        assert!(t.len() <= MAX_MESSAGE_BYTES);
        assert!(t.chars().all(|c| c == 'é'));
    }
}
