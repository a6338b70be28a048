package sentinel

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	sentinelv1 "github.com/sentinel-dev/sentinel/clients/go/gen/sentinel/v1"
)

// DefaultAddress is where `sentinel dev` listens.
const DefaultAddress = "127.0.0.1:50051"

// Client talks to one Sentinel server. It is safe for concurrent use; all the leases it holds
// share one heartbeat stream. Close it when done.
type Client struct {
	rpc         sentinelv1.SentinelServiceClient
	namespace   string
	holder      string
	rpcTimeout  time.Duration
	retryBudget time.Duration
	hb          *heartbeater
	closeConn   func() error
}

// Dial creates a client for the server at target (host:port, or any gRPC target). The
// connection is made lazily; Dial fails only on bad arguments. It uses plaintext and a quick
// reconnect backoff unless WithDialOptions overrides them.
func Dial(target string, opts ...ClientOption) (*Client, error) {
	cfg := clientDefaults(opts)
	dialOpts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// A lease lives lease_ttl (as little as 100 ms) without a heartbeat, so a lost connection
		// must be retried sooner than grpc's default backoff (1 s, growing to 2 min) allows.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
	}, cfg.dialOptions...)
	conn, err := grpc.NewClient(target, dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("sentinel: dial %q: %w", target, err)
	}
	c := newClient(conn, cfg)
	c.closeConn = conn.Close
	return c, nil
}

// New creates a client on a connection the caller owns; Close leaves the connection open.
func New(conn grpc.ClientConnInterface, opts ...ClientOption) *Client {
	return newClient(conn, clientDefaults(opts))
}

func clientDefaults(opts []ClientOption) *clientConfig {
	cfg := &clientConfig{rpcTimeout: 10 * time.Second, retryBudget: 30 * time.Second}
	for _, o := range opts {
		o(cfg)
	}
	if cfg.holder == "" {
		host, _ := os.Hostname()
		cfg.holder = fmt.Sprintf("%s/%d", host, os.Getpid())
	}
	return cfg
}

func newClient(conn grpc.ClientConnInterface, cfg *clientConfig) *Client {
	rpc := sentinelv1.NewSentinelServiceClient(conn)
	return &Client{
		rpc:         rpc,
		namespace:   cfg.namespace,
		holder:      cfg.holder,
		rpcTimeout:  cfg.rpcTimeout,
		retryBudget: cfg.retryBudget,
		hb:          newHeartbeater(rpc),
	}
}

// Namespace is the default namespace set by WithNamespace ("" if none).
func (c *Client) Namespace() string { return c.namespace }

// Raw returns the generated stub, for calls the helpers do not cover. Pass its errors through
// FromError to decode their details.
func (c *Client) Raw() sentinelv1.SentinelServiceClient { return c.rpc }

// Close stops the heartbeat stream, cancels the context of every lease still held (cause
// ErrClientClosed), and closes the connection if Dial made it.
func (c *Client) Close() error {
	c.hb.close()
	if c.closeConn != nil {
		return c.closeConn()
	}
	return nil
}

// retryable reports whether an RPC attempt may be repeated with the same arguments: the
// server said UNAVAILABLE, or our own per-attempt timeout fired while the caller still waits.
func retryable(err error, parent context.Context) bool {
	switch status.Code(err) {
	case codes.Unavailable:
		return true
	case codes.DeadlineExceeded:
		return parent.Err() == nil
	}
	return false
}

// withRetry runs call until it succeeds, fails with a non-retryable error, or the budget or
// ctx runs out. Each attempt gets its own timeout. It returns the start time of the attempt
// that answered, from which a lease's local deadline is measured.
func (c *Client) withRetry(ctx context.Context, call func(ctx context.Context) error) (time.Time, error) {
	giveUp := time.Now().Add(c.retryBudget)
	delay := 50 * time.Millisecond
	for {
		start := time.Now()
		actx, cancel := context.WithTimeout(ctx, c.rpcTimeout)
		err := call(actx)
		cancel()
		if err == nil {
			return start, nil
		}
		if !retryable(err, ctx) || time.Now().Add(delay).After(giveUp) {
			return start, FromError(err)
		}
		// Full jitter keeps many clients that lost the server together from retrying in step.
		sleep := delay/2 + rand.N(delay/2+1)
		select {
		case <-ctx.Done():
			return start, errors.Join(context.Cause(ctx), FromError(err))
		case <-time.After(sleep):
		}
		delay = min(2*delay, 2*time.Second)
	}
}
