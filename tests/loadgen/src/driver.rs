//! The two ways of issuing calls: the `sentinel-client` crate, or the raw tonic stubs.
//!
//! Both open `--connections` channels (one HTTP/2 connection each); caller `i` uses channel
//! `i % connections`. Errors come back as a short kind (for counting) and a message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use sentinel_client::{ClaimOptions, ClaimOutcome, Client, CompleteOutcome, OnceOptions, Outcome};
use sentinel_proto::v1 as pb;
use sentinel_proto::v1::sentinel_service_client::SentinelServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::config::{Config, DriverKind};

/// The holder named in every claim.
const HOLDER: &str = "sentinel-loadgen";

/// An error of one call: a kind to count by and the full message.
#[derive(Debug)]
pub struct CallError {
    pub kind: String,
    pub message: String,
}

impl CallError {
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        CallError {
            kind: kind.into(),
            message: message.into(),
        }
    }

    fn from_client(e: sentinel_client::Error) -> Self {
        let message = e.to_string();
        let kind = match e.reason() {
            Some(reason) => reason.to_owned(),
            // "deadline exceeded: ...", "unavailable: ...", "cannot connect to ...": the words
            // before the first colon name the kind.
            None => message
                .split(':')
                .next()
                .unwrap_or("error")
                .chars()
                .take(40)
                .collect(),
        };
        CallError { kind, message }
    }

    fn from_status(s: tonic::Status) -> Self {
        CallError {
            kind: format!("{:?}", s.code()),
            message: format!("{:?}: {}", s.code(), s.message()),
        }
    }
}

/// What a claim found, reduced to what the scenarios need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claimed {
    Acquired { token: u64 },
    InProgress,
    Completed,
    Failed,
    Uncertain,
}

impl Claimed {
    pub fn name(self) -> &'static str {
        match self {
            Claimed::Acquired { .. } => "acquired",
            Claimed::InProgress => "in_progress",
            Claimed::Completed => "completed",
            Claimed::Failed => "failed",
            Claimed::Uncertain => "uncertain",
        }
    }
}

enum Channels {
    Client(Vec<Client>),
    Raw(Vec<SentinelServiceClient<Channel>>),
}

pub struct Driver {
    channels: Channels,
    namespace: String,
    lease_ttl: Duration,
    hard_ttl: Duration,
    claim_options: ClaimOptions,
    once_options: OnceOptions,
    run_id: u64,
    claim_ids: AtomicU64,
}

fn endpoint(addr: &str) -> anyhow::Result<Endpoint> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    Ok(Endpoint::from_shared(uri.clone())
        .with_context(|| format!("invalid server address {addr:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true))
}

/// Opens `n` raw channels to `addr`.
pub async fn raw_channels(addr: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let endpoint = endpoint(addr)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            endpoint
                .connect()
                .await
                .with_context(|| format!("cannot connect to {addr}"))?,
        );
    }
    Ok(out)
}

impl Driver {
    pub async fn connect(config: &Config, namespace: &str) -> anyhow::Result<Driver> {
        let channels = match config.driver {
            DriverKind::Client => {
                let mut clients = Vec::with_capacity(config.connections);
                for _ in 0..config.connections {
                    let client = Client::builder(config.addr.clone())
                        .namespace(namespace)
                        .holder(HOLDER)
                        .rpc_timeout(Duration::from_secs(30))
                        .connect()
                        .await
                        .with_context(|| format!("cannot connect to {}", config.addr))?;
                    clients.push(client);
                }
                Channels::Client(clients)
            }
            DriverKind::Raw => Channels::Raw(
                raw_channels(&config.addr, config.connections)
                    .await?
                    .into_iter()
                    .map(SentinelServiceClient::new)
                    .collect(),
            ),
        };
        let claim_options = ClaimOptions {
            lease_ttl: Some(config.lease_ttl),
            hard_ttl: Some(config.hard_ttl),
            ..ClaimOptions::default()
        };
        let once_options = OnceOptions::new()
            .lease_ttl(config.lease_ttl)
            .hard_ttl(config.hard_ttl);
        Ok(Driver {
            channels,
            namespace: namespace.to_owned(),
            lease_ttl: config.lease_ttl,
            hard_ttl: config.hard_ttl,
            claim_options,
            once_options,
            run_id: rand::random(),
            claim_ids: AtomicU64::new(0),
        })
    }

    pub async fn claim(&self, caller: usize, key: &str) -> Result<Claimed, CallError> {
        match &self.channels {
            Channels::Client(clients) => {
                let client = &clients[caller % clients.len()];
                let outcome = client
                    .claim(key, &self.claim_options)
                    .await
                    .map_err(CallError::from_client)?;
                Ok(match outcome {
                    ClaimOutcome::Acquired(a) => Claimed::Acquired { token: a.token },
                    ClaimOutcome::InProgress(_) => Claimed::InProgress,
                    ClaimOutcome::Completed(_) => Claimed::Completed,
                    ClaimOutcome::Failed(_) => Claimed::Failed,
                    ClaimOutcome::Uncertain(_) => Claimed::Uncertain,
                })
            }
            Channels::Raw(stubs) => {
                let mut stub = stubs[caller % stubs.len()].clone();
                // Unique per attempt, like the client's UUIDs, but cheaper to make.
                let n = self.claim_ids.fetch_add(1, Ordering::Relaxed);
                let request = pb::ClaimRequest {
                    namespace: self.namespace.clone(),
                    key: key.to_owned(),
                    lease_ttl: Some(pb_duration(self.lease_ttl)),
                    hard_ttl: Some(pb_duration(self.hard_ttl)),
                    fingerprint: Vec::new(),
                    holder: HOLDER.to_owned(),
                    claim_id: format!("{:016x}-{n}", self.run_id),
                    retention: None,
                    on_lease_expiry: 0,
                };
                let reply = stub
                    .claim(request)
                    .await
                    .map_err(CallError::from_status)?
                    .into_inner();
                use pb::claim_response::Outcome as O;
                match reply.outcome {
                    Some(O::Acquired(a)) => Ok(Claimed::Acquired { token: a.token }),
                    Some(O::InProgress(_)) => Ok(Claimed::InProgress),
                    Some(O::Completed(_)) => Ok(Claimed::Completed),
                    Some(O::Failed(_)) => Ok(Claimed::Failed),
                    Some(O::Uncertain(_)) => Ok(Claimed::Uncertain),
                    None => Err(CallError::new(
                        "protocol",
                        "claim response without an outcome",
                    )),
                }
            }
        }
    }

    pub async fn complete(
        &self,
        caller: usize,
        key: &str,
        token: u64,
        response: &[u8],
    ) -> Result<(), CallError> {
        match &self.channels {
            Channels::Client(clients) => {
                let client = &clients[caller % clients.len()];
                let outcome = CompleteOutcome::Success {
                    response: response.to_vec(),
                };
                client
                    .complete(key, token, &outcome, None)
                    .await
                    .map_err(CallError::from_client)?;
                Ok(())
            }
            Channels::Raw(stubs) => {
                let mut stub = stubs[caller % stubs.len()].clone();
                let request = pb::CompleteRequest {
                    namespace: self.namespace.clone(),
                    key: key.to_owned(),
                    token,
                    outcome: Some(pb::complete_request::Outcome::Success(
                        pb::CompleteSuccess {
                            response: response.to_vec(),
                        },
                    )),
                    fingerprint: Vec::new(),
                };
                stub.complete(request)
                    .await
                    .map_err(CallError::from_status)?;
                Ok(())
            }
        }
    }

    /// `Client::once` with work that returns `response` at once; the name of the outcome.
    pub async fn once(
        &self,
        caller: usize,
        key: &str,
        response: &[u8],
    ) -> Result<&'static str, CallError> {
        let Channels::Client(clients) = &self.channels else {
            return Err(CallError::new("config", "once needs --driver client"));
        };
        let client = &clients[caller % clients.len()];
        let response = response.to_vec();
        let outcome = client
            .once(key, &self.once_options, |_lease| async move {
                Ok::<_, sentinel_client::WorkError>(response)
            })
            .await
            .map_err(CallError::from_client)?;
        Ok(match outcome {
            Outcome::Completed(_) => "completed",
            Outcome::Replayed(_) => "replayed",
            Outcome::InProgress(_) => "in_progress",
            Outcome::Uncertain(_) => "uncertain",
            Outcome::Failed(_) => "failed",
        })
    }
}

pub fn pb_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}
