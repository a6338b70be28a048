package sentinel

import (
	"context"
	"fmt"
	"iter"

	sentinelv1 "github.com/sentinel-dev/sentinel/clients/go/gen/sentinel/v1"
)

// Resolution is what a reconcile turns an execution into: ResolveCompleted, ResolveRetry or
// ResolveFailed.
type Resolution struct {
	set func(*sentinelv1.ReconcileRequest)
}

// ResolveCompleted stores response as if the work had completed; it is replayed from then on.
func ResolveCompleted(response []byte) Resolution {
	return Resolution{func(r *sentinelv1.ReconcileRequest) {
		r.Resolution = &sentinelv1.ReconcileRequest_MarkCompleted{MarkCompleted: &sentinelv1.ReconcileMarkCompleted{Response: response}}
	}}
}

// ResolveRetry releases the key: the next Once runs the function again.
func ResolveRetry() Resolution {
	return Resolution{func(r *sentinelv1.ReconcileRequest) {
		r.Resolution = &sentinelv1.ReconcileRequest_Retry{Retry: &sentinelv1.ReconcileRetry{}}
	}}
}

// ResolveFailed stores a definite failure with message; it is replayed from then on.
func ResolveFailed(message string) Resolution {
	return Resolution{func(r *sentinelv1.ReconcileRequest) {
		r.Resolution = &sentinelv1.ReconcileRequest_MarkFailed{MarkFailed: &sentinelv1.ReconcileMarkFailed{Message: message}}
	}}
}

// Reconcile resolves the execution of key if its current token is still expectedToken
// (compare-and-set: a concurrent reconciler or worker that moved it first makes this fail with
// ErrFenced). It resolves UNCERTAIN and FAILED executions; with Force it also ends a live
// RUNNING one, whose holder is then fenced. Options: Namespace, Operator, Note, Force.
//
// Reconcile is not retried on UNAVAILABLE: it bumps the token, so a blind retry of a call
// that did commit would be refused as fenced. Inspect and decide again instead.
func (c *Client) Reconcile(ctx context.Context, key string, expectedToken uint64, res Resolution, opts ...Option) (*sentinelv1.ReconcileResponse, error) {
	cfg, err := c.config(opts)
	if err != nil {
		return nil, err
	}
	if res.set == nil {
		return nil, fmt.Errorf("sentinel: reconcile %s/%s: no resolution", cfg.namespace, key)
	}
	req := &sentinelv1.ReconcileRequest{
		Namespace: cfg.namespace, Key: key, ExpectedToken: expectedToken,
		Operator: cfg.operator, Note: cfg.note, Force: cfg.force,
	}
	if req.Operator == "" {
		req.Operator = cfg.holder
	}
	res.set(req)
	resp, err := c.rpc.Reconcile(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("sentinel: reconcile %s/%s: %w", cfg.namespace, key, FromError(err))
	}
	return resp, nil
}

// ReconcileHandle resolves one execution under the token a Result reported.
type ReconcileHandle struct {
	c         *Client
	Namespace string
	Key       string
	Token     uint64
}

func (c *Client) handle(namespace, key string, token uint64) *ReconcileHandle {
	return &ReconcileHandle{c: c, Namespace: namespace, Key: key, Token: token}
}

// MarkCompleted resolves the execution as completed with response.
func (h *ReconcileHandle) MarkCompleted(ctx context.Context, response []byte, opts ...Option) (*sentinelv1.ReconcileResponse, error) {
	return h.resolve(ctx, ResolveCompleted(response), opts)
}

// Retry releases the key so that the next Once runs the function again.
func (h *ReconcileHandle) Retry(ctx context.Context, opts ...Option) (*sentinelv1.ReconcileResponse, error) {
	return h.resolve(ctx, ResolveRetry(), opts)
}

// MarkFailed resolves the execution as a definite failure with message.
func (h *ReconcileHandle) MarkFailed(ctx context.Context, message string, opts ...Option) (*sentinelv1.ReconcileResponse, error) {
	return h.resolve(ctx, ResolveFailed(message), opts)
}

func (h *ReconcileHandle) resolve(ctx context.Context, r Resolution, opts []Option) (*sentinelv1.ReconcileResponse, error) {
	return h.c.Reconcile(ctx, h.Key, h.Token, r, append([]Option{Namespace(h.Namespace)}, opts...)...)
}

// Inspect returns the execution of key and its recent history, newest first.
// Options: Namespace, HistoryLimit. An unknown key fails with ErrNotFound.
func (c *Client) Inspect(ctx context.Context, key string, opts ...Option) (*sentinelv1.InspectResponse, error) {
	cfg, err := c.config(opts)
	if err != nil {
		return nil, err
	}
	resp, err := c.rpc.Inspect(ctx, &sentinelv1.InspectRequest{Namespace: cfg.namespace, Key: key, HistoryLimit: cfg.historyLimit})
	if err != nil {
		return nil, fmt.Errorf("sentinel: inspect %s/%s: %w", cfg.namespace, key, FromError(err))
	}
	return resp, nil
}

// ListExecutions iterates over the executions of a namespace in key order, fetching pages as
// needed; StateAny lists every state. Options: Namespace, PageSize. Iteration stops after the
// first error, which is yielded with a nil execution.
func (c *Client) ListExecutions(ctx context.Context, state State, opts ...Option) iter.Seq2[*sentinelv1.Execution, error] {
	return func(yield func(*sentinelv1.Execution, error) bool) {
		cfg, err := c.config(opts)
		if err != nil {
			yield(nil, err)
			return
		}
		req := &sentinelv1.ListExecutionsRequest{Namespace: cfg.namespace, State: state, PageSize: cfg.pageSize}
		for {
			resp, err := c.rpc.ListExecutions(ctx, req)
			if err != nil {
				yield(nil, fmt.Errorf("sentinel: list %s: %w", cfg.namespace, FromError(err)))
				return
			}
			for _, e := range resp.GetExecutions() {
				if !yield(e, nil) {
					return
				}
			}
			if resp.GetNextPageToken() == "" {
				return
			}
			req.PageToken = resp.GetNextPageToken()
		}
	}
}

// ListUncertain returns every UNCERTAIN execution of the namespace: the reconciler's to-do list.
func (c *Client) ListUncertain(ctx context.Context, opts ...Option) ([]*sentinelv1.Execution, error) {
	var out []*sentinelv1.Execution
	for e, err := range c.ListExecutions(ctx, StateUncertain, opts...) {
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}
