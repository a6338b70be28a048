//! Sentinel server: functional idempotency for keyed operations, on PostgreSQL.
//!
//! - [`core`]: the state machine (no SQL, no gRPC): where a claim is decided.
//! - [`store`]: PostgreSQL persistence, batch-first, fenced by token.
//! - [`batch`]: coalesces concurrent requests into one store call per kind.
//! - [`api`]: gRPC adapters: validate, convert, call, convert back.
//! - [`server`]: assembly, health, reflection, sweeper and bounded shutdown.
//! - [`dev`]: `sentinel dev`, a throwaway local PostgreSQL.

pub mod api;
pub mod batch;
pub mod config;
pub mod core;
pub mod dev;
pub mod error;
pub mod server;
pub mod store;
pub mod telemetry;
