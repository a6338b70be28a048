package sentinel

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"

	sentinelv1 "github.com/sentinel-dev/sentinel/clients/go/gen/sentinel/v1"
)

// LeaseExpiryPolicy says what a claim does with an execution whose lease expired.
type LeaseExpiryPolicy = sentinelv1.LeaseExpiryPolicy

const (
	// ExpiredIsUncertain (the server default) reports an expired execution as UNCERTAIN and
	// never re-runs it silently.
	ExpiredIsUncertain = sentinelv1.LeaseExpiryPolicy_LEASE_EXPIRY_POLICY_UNCERTAIN
	// ExpiredIsRetried takes an expired execution over with a new token, fencing the old holder.
	ExpiredIsRetried = sentinelv1.LeaseExpiryPolicy_LEASE_EXPIRY_POLICY_RETRY
)

// State is the state of an execution as the server reports it.
type State = sentinelv1.ExecutionState

const (
	StateAny       = sentinelv1.ExecutionState_EXECUTION_STATE_UNSPECIFIED
	StateRunning   = sentinelv1.ExecutionState_EXECUTION_STATE_RUNNING
	StateCompleted = sentinelv1.ExecutionState_EXECUTION_STATE_COMPLETED
	StateFailed    = sentinelv1.ExecutionState_EXECUTION_STATE_FAILED
	StateUncertain = sentinelv1.ExecutionState_EXECUTION_STATE_UNCERTAIN
	StateReleased  = sentinelv1.ExecutionState_EXECUTION_STATE_RELEASED
)

// Option sets one per-call setting. Each call reads the settings that mean something to it
// and ignores the others (e.g. Force means nothing to Once).
type Option func(*callConfig)

type callConfig struct {
	namespace      string
	holder         string
	leaseTTL       time.Duration
	hardTTL        time.Duration
	retention      time.Duration
	fingerprint    []byte
	onLeaseExpiry  LeaseExpiryPolicy
	waitInProgress bool
	operator       string
	note           string
	force          bool
	historyLimit   uint32
	pageSize       uint32
}

// Namespace sets the namespace of the call, overriding the client's WithNamespace.
func Namespace(ns string) Option { return func(c *callConfig) { c.namespace = ns } }

// Holder names this worker for operators and other callers, overriding the client's WithHolder.
func Holder(h string) Option { return func(c *callConfig) { c.holder = h } }

// LeaseTTL sets how long the lease lives without a heartbeat (server default 30 s). Heartbeats
// are sent every LeaseTTL/3.
func LeaseTTL(d time.Duration) Option { return func(c *callConfig) { c.leaseTTL = d } }

// HardTTL caps the whole execution from the claim (server default 1 h); heartbeats never
// extend a lease past it.
func HardTTL(d time.Duration) Option { return func(c *callConfig) { c.hardTTL = d } }

// Retention sets how long a completed or failed outcome is kept and replayed (server default 24 h).
func Retention(d time.Duration) Option { return func(c *callConfig) { c.retention = d } }

// Fingerprint identifies the request payload (e.g. a SHA-256 of it). A later Once on the same
// key with a different fingerprint fails with ErrFingerprintMismatch.
func Fingerprint(b []byte) Option {
	return func(c *callConfig) { c.fingerprint = append([]byte(nil), b...) }
}

// OnLeaseExpiry says whether an execution whose lease expired is reported as Uncertain
// (ExpiredIsUncertain, the default) or taken over and run again (ExpiredIsRetried).
func OnLeaseExpiry(p LeaseExpiryPolicy) Option { return func(c *callConfig) { c.onLeaseExpiry = p } }

// WaitWhileInProgress makes Once wait, polling the claim, while another worker holds a live
// lease on the key, instead of returning InProgress at once. It returns the outcome that
// worker reaches (or runs the function itself if the key is released), or the context's error.
func WaitWhileInProgress() Option { return func(c *callConfig) { c.waitInProgress = true } }

// Operator names who reconciles, for the history.
func Operator(name string) Option { return func(c *callConfig) { c.operator = name } }

// Note explains a reconcile, for the history.
func Note(text string) Option { return func(c *callConfig) { c.note = text } }

// Force lets a reconcile end a live RUNNING execution; its holder is fenced.
func Force() Option { return func(c *callConfig) { c.force = true } }

// HistoryLimit caps the history events Inspect returns (server default 50).
func HistoryLimit(n uint32) Option { return func(c *callConfig) { c.historyLimit = n } }

// PageSize sets the executions fetched per ListExecutions page (server default 100).
func PageSize(n uint32) Option { return func(c *callConfig) { c.pageSize = n } }

func (c *Client) config(opts []Option) (*callConfig, error) {
	cfg := &callConfig{namespace: c.namespace, holder: c.holder}
	for _, o := range opts {
		o(cfg)
	}
	if cfg.namespace == "" {
		return nil, errors.New("sentinel: no namespace: pass sentinel.Namespace(...) or sentinel.WithNamespace(...) to Dial")
	}
	for _, d := range []struct {
		name string
		d    time.Duration
	}{{"lease ttl", cfg.leaseTTL}, {"hard ttl", cfg.hardTTL}, {"retention", cfg.retention}} {
		if d.d < 0 {
			return nil, fmt.Errorf("sentinel: negative %s %v", d.name, d.d)
		}
	}
	return cfg, nil
}

// ClientOption configures a Client.
type ClientOption func(*clientConfig)

type clientConfig struct {
	namespace   string
	holder      string
	dialOptions []grpc.DialOption
	rpcTimeout  time.Duration
	retryBudget time.Duration
}

// WithNamespace sets the namespace used by calls that do not pass Namespace.
func WithNamespace(ns string) ClientOption { return func(c *clientConfig) { c.namespace = ns } }

// WithHolder sets the holder name used by calls that do not pass Holder (default host/pid).
func WithHolder(h string) ClientOption { return func(c *clientConfig) { c.holder = h } }

// WithDialOptions adds gRPC dial options to Dial. Dial uses plaintext unless they include
// transport credentials (grpc.WithTransportCredentials).
func WithDialOptions(opts ...grpc.DialOption) ClientOption {
	return func(c *clientConfig) { c.dialOptions = append(c.dialOptions, opts...) }
}

// WithRPCTimeout bounds each attempt of Claim and Complete (default 10 s). An attempt that
// times out is retried like an UNAVAILABLE one.
func WithRPCTimeout(d time.Duration) ClientOption { return func(c *clientConfig) { c.rpcTimeout = d } }

// WithRetryBudget bounds how long Claim and Complete are retried on UNAVAILABLE before the
// error is returned (default 30 s). A Complete is retried within this budget even after the
// caller's context is cancelled, because an outcome that is never reported leaves the
// execution uncertain.
func WithRetryBudget(d time.Duration) ClientOption {
	return func(c *clientConfig) { c.retryBudget = d }
}
