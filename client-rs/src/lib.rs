//! Rust client for Sentinel: run any keyed operation once.
//!
//! [`Client`] exposes one method per RPC, in domain types only, and [`Client::once`], the
//! helper that claims a key, runs your work under a lease kept alive by the client's shared
//! heartbeat stream, and stores its outcome:
//!
//! ```no_run
//! use std::time::Duration;
//! use sentinel_client::{Client, OnceOptions, Outcome, WorkError};
//!
//! # async fn demo() -> Result<(), sentinel_client::Error> {
//! let client = Client::builder("127.0.0.1:50051").namespace("payments").connect().await?;
//! let options = OnceOptions::new().lease_ttl(Duration::from_secs(10));
//! let outcome = client
//!     .once("webhook-evt_123", &options, |lease| async move {
//!         // Pass lease.token() to downstream writes; stop when lease.cancelled() fires.
//!         Ok::<_, WorkError>(format!("charged under token {}", lease.token()).into_bytes())
//!     })
//!     .await?;
//! match outcome {
//!     Outcome::Completed(r) | Outcome::Replayed(r) => println!("{:?}", r.bytes),
//!     Outcome::InProgress(p) => println!("running on {}", p.holder),
//!     Outcome::Uncertain(u) => println!("needs reconciliation at token {}", u.reconcile.token()),
//!     Outcome::Failed(f) => println!("failed: {}", f.message),
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod client;
mod codec;
mod error;
mod heartbeat;
mod lease;
mod model;
mod once;
mod retry;

pub use client::{Client, ClientBuilder, DEFAULT_NAMESPACE};
#[cfg(feature = "json")]
pub use codec::Json;
pub use codec::{BytesCodec, Codec};
pub use error::{BoxError, Error, FieldViolation, ERROR_DOMAIN};
pub use lease::{Lease, LeaseLoss};
pub use model::{
    Acquired, ClaimOptions, ClaimOutcome, CompleteOutcome, Completion, Execution, ExecutionPage,
    ExecutionState, FailedReplay, HistoryEvent, InProgress, Inspection, LeaseExpiryPolicy,
    ListOptions, LostReason, ReconcileOptions, Reconciled, Replayed, Resolution, SideEffects,
    Uncertain, UncertainReason,
};
pub use once::{
    Failure, FailureKind, OnceOptions, Outcome, ReconcileHandle, Response, UncertainOutcome,
    WorkError, WorkResultExt,
};
pub use retry::RetryPolicy;
#[cfg(feature = "tls")]
pub use tonic::transport::ClientTlsConfig;
/// Re-exported so that callers can configure the channel without depending on tonic directly.
pub use tonic::transport::Endpoint;
