//! The client: a channel, a default namespace, one method per RPC.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sentinel_proto::v1 as pb;
use sentinel_proto::v1::sentinel_service_client::SentinelServiceClient;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::error::Error;
use crate::heartbeat::Heartbeats;
use crate::model::{
    ClaimOptions, ClaimOutcome, CompleteOutcome, Completion, ExecutionPage, Inspection,
    ListOptions, ReconcileOptions, Reconciled, Resolution,
};
use crate::retry::RetryPolicy;

/// The namespace of a client built without [`ClientBuilder::namespace`].
pub const DEFAULT_NAMESPACE: &str = "default";
const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A Sentinel client. Cheap to clone: clones share the connection and the heartbeat stream.
///
/// Every call acts in the client's namespace; [`with_namespace`](Client::with_namespace) gives
/// a client for another one over the same connection.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
    pub(crate) namespace: Arc<str>,
}

pub(crate) struct Inner {
    rpc: SentinelServiceClient<Channel>,
    endpoint: String,
    pub(crate) holder: String,
    rpc_timeout: Duration,
    retry: RetryPolicy,
    pub(crate) heartbeats: Heartbeats,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.inner.endpoint)
            .field("namespace", &self.namespace)
            .field("holder", &self.inner.holder)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Client`]: endpoint, channel options, TLS, namespace, holder, timeouts, retries.
#[derive(Debug)]
pub struct ClientBuilder {
    uri: String,
    endpoint: Result<Endpoint, Error>,
    namespace: String,
    holder: Option<String>,
    rpc_timeout: Duration,
    retry: RetryPolicy,
    #[cfg(feature = "tls")]
    tls: bool,
}

impl ClientBuilder {
    /// A builder for `uri`: `http://host:port`, `https://host:port` (with the `tls` feature),
    /// or a bare `host:port`, read as `http://`.
    pub fn new(uri: impl Into<String>) -> Self {
        let mut uri = uri.into();
        if !uri.contains("://") {
            uri = format!("http://{uri}");
        }
        let endpoint = Endpoint::from_shared(uri.clone())
            .map(|e| {
                e.connect_timeout(DEFAULT_CONNECT_TIMEOUT)
                    // A dead connection is noticed by pings, not only by the lease deadlines.
                    .http2_keep_alive_interval(Duration::from_secs(20))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .keep_alive_while_idle(true)
                    .tcp_nodelay(true)
            })
            .map_err(|e| Error::Connect {
                endpoint: uri.clone(),
                source: Box::new(e),
            });
        Self::with_endpoint_result(uri, endpoint)
    }

    /// A builder around an endpoint configured by the caller, used as it is (no default
    /// timeouts or keepalives are added).
    pub fn from_endpoint(endpoint: Endpoint) -> Self {
        Self::with_endpoint_result(endpoint.uri().to_string(), Ok(endpoint))
    }

    fn with_endpoint_result(uri: String, endpoint: Result<Endpoint, Error>) -> Self {
        Self {
            uri,
            endpoint,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            holder: None,
            rpc_timeout: DEFAULT_RPC_TIMEOUT,
            retry: RetryPolicy::default(),
            #[cfg(feature = "tls")]
            tls: false,
        }
    }

    /// The namespace of every call (default `"default"`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The holder named in claims and the operator named in reconciles, unless a call sets
    /// its own (default `host:pid`).
    pub fn holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = Some(holder.into());
        self
    }

    /// The deadline of each unary call (default 10 s). The heartbeat stream has none.
    pub fn rpc_timeout(mut self, timeout: Duration) -> Self {
        self.rpc_timeout = timeout;
        self
    }

    /// How Claim and Complete are retried on UNAVAILABLE.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// How long connecting may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.endpoint = self.endpoint.map(|e| e.connect_timeout(timeout));
        self
    }

    /// Adjusts the underlying tonic endpoint (keepalives, window sizes, user agent, ...).
    pub fn configure_endpoint(mut self, f: impl FnOnce(Endpoint) -> Endpoint) -> Self {
        self.endpoint = self.endpoint.map(f);
        self
    }

    /// Uses TLS with this configuration.
    #[cfg(feature = "tls")]
    pub fn tls_config(mut self, config: tonic::transport::ClientTlsConfig) -> Self {
        let uri = self.uri.clone();
        self.endpoint = self.endpoint.and_then(|e| {
            e.tls_config(config).map_err(|e| Error::Connect {
                endpoint: uri,
                source: Box::new(e),
            })
        });
        self.tls = true;
        self
    }

    fn endpoint(self) -> Result<(Endpoint, ClientParts), Error> {
        #[cfg(feature = "tls")]
        let this = if self.uri.starts_with("https://") && !self.tls {
            let config = tonic::transport::ClientTlsConfig::new().with_enabled_roots();
            self.tls_config(config)
        } else {
            self
        };
        #[cfg(not(feature = "tls"))]
        let this = self;
        #[cfg(not(feature = "tls"))]
        if this.uri.starts_with("https://") {
            return Err(Error::Connect {
                endpoint: this.uri,
                source: "https:// endpoints need the `tls` feature of sentinel-client".into(),
            });
        }
        let endpoint = this.endpoint?;
        Ok((
            endpoint,
            ClientParts {
                uri: this.uri,
                namespace: this.namespace,
                holder: this.holder.unwrap_or_else(default_holder),
                rpc_timeout: this.rpc_timeout,
                retry: this.retry,
            },
        ))
    }

    /// Connects now; fails if the server cannot be reached.
    pub async fn connect(self) -> Result<Client, Error> {
        let (endpoint, parts) = self.endpoint()?;
        let channel = endpoint.connect().await.map_err(|e| Error::Connect {
            endpoint: parts.uri.clone(),
            source: Box::new(e),
        })?;
        Ok(parts.build(channel))
    }

    /// Connects on the first call. Must be called inside a tokio runtime.
    pub fn connect_lazy(self) -> Result<Client, Error> {
        let (endpoint, parts) = self.endpoint()?;
        let channel = endpoint.connect_lazy();
        Ok(parts.build(channel))
    }
}

struct ClientParts {
    uri: String,
    namespace: String,
    holder: String,
    rpc_timeout: Duration,
    retry: RetryPolicy,
}

impl ClientParts {
    fn build(self, channel: Channel) -> Client {
        let rpc = SentinelServiceClient::new(channel);
        Client {
            inner: Arc::new(Inner {
                heartbeats: Heartbeats::new(rpc.clone()),
                rpc,
                endpoint: self.uri,
                holder: self.holder,
                rpc_timeout: self.rpc_timeout,
                retry: self.retry,
            }),
            namespace: self.namespace.into(),
        }
    }
}

fn default_holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", std::process::id())
}

impl Client {
    /// Connects to `uri` (`http://host:port` or `host:port`) with the default options.
    pub async fn connect(uri: impl Into<String>) -> Result<Self, Error> {
        ClientBuilder::new(uri).connect().await
    }

    /// A builder for every option of the client.
    pub fn builder(uri: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(uri)
    }

    /// A client for `namespace` sharing this one's connection and heartbeat stream.
    pub fn with_namespace(&self, namespace: impl Into<String>) -> Self {
        Self {
            inner: self.inner.clone(),
            namespace: namespace.into().into(),
        }
    }

    /// The namespace of every call of this client.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The default holder of claims and operator of reconciles.
    pub fn holder(&self) -> &str {
        &self.inner.holder
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.inner.rpc_timeout);
        request
    }

    fn rpc(&self) -> SentinelServiceClient<Channel> {
        self.inner.rpc.clone()
    }

    /// Claims `key`. On UNAVAILABLE the claim is retried with the same claim id, so an unknown
    /// outcome (a commit whose reply was lost) can never turn into "someone else holds it".
    pub async fn claim(&self, key: &str, options: &ClaimOptions) -> Result<ClaimOutcome, Error> {
        self.claim_timed(key, options).await.map(|(o, _)| o)
    }

    /// Like `claim`, also returning when the answered try was sent: the server granted the
    /// lease after that instant, which makes it a safe base for the local deadline.
    pub(crate) async fn claim_timed(
        &self,
        key: &str,
        options: &ClaimOptions,
    ) -> Result<(ClaimOutcome, Instant), Error> {
        let claim_id = options
            .claim_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let message = options.to_pb(&self.namespace, key, &self.inner.holder, &claim_id)?;
        self.retrying("claim", || async {
            let sent_at = Instant::now();
            let reply = self.rpc().claim(self.request(message.clone())).await?;
            Ok((ClaimOutcome::try_from(reply.into_inner())?, sent_at))
        })
        .await
    }

    /// Reports the outcome of the work done under `token`. Retried on UNAVAILABLE: repeating
    /// an accepted complete with the same token and outcome succeeds again.
    pub async fn complete(
        &self,
        key: &str,
        token: u64,
        outcome: &CompleteOutcome,
        fingerprint: Option<&[u8]>,
    ) -> Result<Completion, Error> {
        let message = pb::CompleteRequest {
            namespace: self.namespace.to_string(),
            key: key.to_owned(),
            token,
            outcome: Some(outcome.to_pb()),
            fingerprint: fingerprint.map(<[u8]>::to_vec).unwrap_or_default(),
        };
        self.retrying("complete", || async {
            let reply = self.rpc().complete(self.request(message.clone())).await?;
            Completion::try_from(reply.into_inner())
        })
        .await
    }

    /// Resolves an uncertain or failed execution by compare-and-set on `expected_token`.
    /// Not retried: a reconcile that was applied bumped the token, so its retry is FENCED.
    pub async fn reconcile(
        &self,
        key: &str,
        expected_token: u64,
        resolution: &Resolution,
        options: &ReconcileOptions,
    ) -> Result<Reconciled, Error> {
        let message = options.to_pb(
            &self.namespace,
            key,
            expected_token,
            resolution,
            &self.inner.holder,
        );
        let reply = self.rpc().reconcile(self.request(message)).await?;
        Reconciled::try_from(reply.into_inner())
    }

    /// The execution of `key` and its recent history, newest first (server default length).
    pub async fn inspect(&self, key: &str) -> Result<Inspection, Error> {
        self.inspect_with_history(key, 0).await
    }

    /// Like [`inspect`](Client::inspect), with at most `history_limit` events (0: default).
    pub async fn inspect_with_history(
        &self,
        key: &str,
        history_limit: u32,
    ) -> Result<Inspection, Error> {
        let message = pb::InspectRequest {
            namespace: self.namespace.to_string(),
            key: key.to_owned(),
            history_limit,
        };
        let reply = self.rpc().inspect(self.request(message)).await?;
        Inspection::try_from(reply.into_inner())
    }

    /// One page of the executions of the namespace, ordered by key.
    pub async fn list_executions(&self, options: &ListOptions) -> Result<ExecutionPage, Error> {
        let message = pb::ListExecutionsRequest {
            namespace: self.namespace.to_string(),
            state: options
                .state
                .map_or(pb::ExecutionState::Unspecified, |s| s.to_pb()) as i32,
            page_size: options.page_size.unwrap_or(0),
            page_token: options.page_token.clone().unwrap_or_default(),
        };
        let reply = self.rpc().list_executions(self.request(message)).await?;
        ExecutionPage::try_from(reply.into_inner())
    }

    async fn retrying<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let policy = self.inner.retry;
        let mut backoff = policy.backoff();
        let mut attempt = 1;
        loop {
            match call().await {
                Err(e) if e.is_retryable() && attempt < policy.max_attempts => {
                    let delay = backoff.next_delay();
                    tracing::debug!(call = what, attempt, ?delay, error = %e, "retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }
}
