package sentinel

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/durationpb"

	sentinelv1 "github.com/sentinel-dev/sentinel/clients/go/gen/sentinel/v1"
)

// Func is the work Once runs at most once per key. ctx is cancelled when the lease is lost
// (context.Cause tells why: a *LeaseLostError, ErrClientClosed, or the caller's own cause);
// the work should then stop and return. lease.Token is the fencing token to pass to
// downstream writes. The returned bytes are stored and replayed to every later caller.
//
// Return NothingHappened(err) for a failure that changed nothing and may be retried,
// Permanent(err) for a definite failure to store; any other error (or a panic) is reported as
// a failure with possible side effects, which makes the execution Uncertain.
type Func func(ctx context.Context, lease Lease) ([]byte, error)

// Lease is the right to run one execution, granted by a claim.
type Lease struct {
	Namespace string
	Key       string
	// Token is the fencing token: strictly increasing per key, rejected once superseded.
	Token uint64
	// Attempt counts the acquisitions of this execution, starting at 1.
	Attempt uint32
	// HardDeadline is the absolute end of the execution, by the server's database clock.
	HardDeadline time.Time
}

// Outcome says which of the five outcomes a Once call ended in.
type Outcome int

const (
	// Completed: the function ran in this call and its response is stored.
	Completed Outcome = iota + 1
	// Replayed: the key had already completed; Response is the stored bytes (Cached is true).
	Replayed
	// InProgress: another worker holds a live lease on the key (ExecutionAlive is true).
	InProgress
	// Uncertain: the work may have partly happened; someone must reconcile (see Reconcile).
	Uncertain
	// Failed: a definite failure, stored and replayed; or, with Retryable set, a failure that
	// changed nothing and released the key, so the next Once runs the function again.
	Failed
)

func (o Outcome) String() string {
	switch o {
	case Completed:
		return "completed"
	case Replayed:
		return "replayed"
	case InProgress:
		return "in_progress"
	case Uncertain:
		return "uncertain"
	case Failed:
		return "failed"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// Result is what a Once call found or did.
type Result struct {
	Outcome Outcome
	// Response is the function's bytes (Completed) or the stored ones (Replayed).
	Response []byte
	// Cached is set when Response was replayed from an earlier execution.
	Cached bool
	// ExecutionAlive is set when another worker is running the key right now.
	ExecutionAlive bool
	// Token is the fencing token the outcome is stored under; for Uncertain, the token to pass
	// as the expected token of a reconcile.
	Token uint64
	// Attempt is the attempt that ran, is running, or became uncertain (0 if not reported).
	Attempt uint32
	// Holder is the worker that holds the lease (InProgress) or held it (Uncertain).
	Holder string
	// Error is the stored failure message (Failed, Uncertain).
	Error string
	// Retryable is set on Failed when the failure released the key (NothingHappened).
	Retryable bool
	// UncertainReason says why the execution is Uncertain.
	UncertainReason sentinelv1.UncertainReason
	// Late is set on Completed when the lease had expired but nobody had taken over, so the
	// server still accepted the response.
	Late bool
	// LeaseExpiresAt is when the other worker's lease ends unless renewed (InProgress).
	LeaseExpiresAt time.Time
	// Reconcile resolves the execution under Token; set for Uncertain and stored Failed.
	Reconcile *ReconcileHandle
}

// OK reports whether the result carries a successful response, fresh or replayed.
func (r *Result) OK() bool {
	return r != nil && (r.Outcome == Completed || r.Outcome == Replayed)
}

// Once runs fn at most once for key across every caller of every process sharing the server,
// and reports the outcome. If the key is free, Once claims it, keeps the lease alive over the
// client's heartbeat stream while fn runs, and reports fn's result; otherwise it returns the
// stored or current state without running fn.
//
// The Result is non-nil whenever the server told Once what became of the execution, even when
// the error is not nil: if fn fails, Once returns fn's error together with the Result the
// server recorded (Uncertain, or Failed for NothingHappened and Permanent). The error alone
// (nil Result) means the server could not be asked or refused the call, e.g. a Complete
// rejected with ErrFenced because the lease was lost and someone else acted.
//
// If fn panics, the failure is reported as possibly having side effects and the panic goes on.
func (c *Client) Once(ctx context.Context, key string, fn Func, opts ...Option) (*Result, error) {
	if fn == nil {
		return nil, errors.New("sentinel: Once needs a function")
	}
	cfg, err := c.config(opts)
	if err != nil {
		return nil, err
	}
	req := &sentinelv1.ClaimRequest{
		Namespace:     cfg.namespace,
		Key:           key,
		LeaseTtl:      optDuration(cfg.leaseTTL),
		HardTtl:       optDuration(cfg.hardTTL),
		Fingerprint:   cfg.fingerprint,
		Holder:        cfg.holder,
		Retention:     optDuration(cfg.retention),
		OnLeaseExpiry: cfg.onLeaseExpiry,
	}
	poll := 50 * time.Millisecond
	for {
		// A fresh id per claim attempt; its retries (inside claim) reuse it, so a claim whose
		// reply was lost is answered with the same lease instead of "in progress".
		req.ClaimId = rand.Text()
		var resp *sentinelv1.ClaimResponse
		sentAt, err := c.withRetry(ctx, func(ctx context.Context) error {
			var err error
			resp, err = c.rpc.Claim(ctx, req)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("sentinel: claim %s/%s: %w", cfg.namespace, key, err)
		}
		switch o := resp.GetOutcome().(type) {
		case *sentinelv1.ClaimResponse_Acquired:
			return c.run(ctx, cfg, key, o.Acquired, sentAt, fn)
		case *sentinelv1.ClaimResponse_Completed:
			return &Result{
				Outcome: Replayed, Response: o.Completed.GetResponse(), Cached: true, Token: o.Completed.GetToken(),
			}, nil
		case *sentinelv1.ClaimResponse_Failed:
			return &Result{
				Outcome: Failed, Error: o.Failed.GetError(), Token: o.Failed.GetToken(),
				Reconcile: c.handle(cfg.namespace, key, o.Failed.GetToken()),
			}, nil
		case *sentinelv1.ClaimResponse_Uncertain:
			u := o.Uncertain
			return &Result{
				Outcome: Uncertain, Token: u.GetToken(), Attempt: u.GetAttempt(), Holder: u.GetHolder(),
				Error: u.GetError(), UncertainReason: u.GetReason(),
				Reconcile: c.handle(cfg.namespace, key, u.GetToken()),
			}, nil
		case *sentinelv1.ClaimResponse_InProgress:
			p := o.InProgress
			res := &Result{
				Outcome: InProgress, ExecutionAlive: true, Attempt: p.GetAttempt(), Holder: p.GetHolder(),
				LeaseExpiresAt: p.GetLeaseExpiresAt().AsTime(),
			}
			if !cfg.waitInProgress {
				return res, nil
			}
			// Poll quickly at first (most executions are short), then back off; never sleep past
			// the other lease's end, when the claim's answer changes.
			wait := poll
			if ttl := p.GetTtlRemaining(); ttl != nil && ttl.AsDuration() > 0 {
				wait = min(wait, ttl.AsDuration()+10*time.Millisecond)
			}
			select {
			case <-ctx.Done():
				return res, context.Cause(ctx)
			case <-time.After(wait):
			}
			poll = min(2*poll, time.Second)
		default:
			return nil, fmt.Errorf("sentinel: claim %s/%s: the server returned no outcome", cfg.namespace, key)
		}
	}
}

// run does the work under an acquired lease and reports its outcome.
func (c *Client) run(ctx context.Context, cfg *callConfig, key string, acq *sentinelv1.ClaimAcquired, sentAt time.Time, fn Func) (*Result, error) {
	lease := Lease{
		Namespace: cfg.namespace, Key: key, Token: acq.GetToken(), Attempt: acq.GetAttempt(),
		HardDeadline: acq.GetHardDeadlineAt().AsTime(),
	}
	ttl := cfg.leaseTTL
	if ttl == 0 {
		ttl = defaultLeaseTTL
	}
	remaining := ttl
	if r := acq.GetTtlRemaining(); r != nil {
		remaining = r.AsDuration()
		if cfg.leaseTTL == 0 {
			ttl = remaining // the server's default, as the fresh lease reports it
		}
	}
	fctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	id := leaseID{cfg.namespace, key, lease.Token}
	if !c.hb.add(id, ttl, sentAt.Add(remaining), cancel) {
		cancel(ErrClientClosed)
	}
	defer c.hb.remove(id)

	var (
		response []byte
		fnErr    error
	)
	if cause := context.Cause(fctx); cause != nil {
		// The caller gave up or the client closed between the claim and the start: nothing
		// ran, so release the key rather than leave it to expire into UNCERTAIN.
		fnErr = NothingHappened(fmt.Errorf("sentinel: not started: %w", cause))
	} else {
		response, fnErr = c.invoke(ctx, fctx, cfg, lease, fn)
	}

	var outcome *sentinelv1.CompleteRequest
	if fnErr == nil {
		outcome = success(response)
	} else {
		var m *outcomeMark
		if errors.As(fnErr, &m) {
			outcome = failure(fnErr.Error(), sentinelv1.SideEffects_SIDE_EFFECTS_NONE, m.retryable)
		} else {
			outcome = failure(fnErr.Error(), sentinelv1.SideEffects_SIDE_EFFECTS_POSSIBLE, false)
		}
	}
	done, err := c.complete(ctx, cfg, lease, outcome)
	if err != nil && fnErr == nil && errors.Is(err, ErrTooLarge) {
		// The work happened but its response cannot be stored: never lose that fact.
		fnErr = fmt.Errorf("sentinel: the response (%d bytes) was refused: %w", len(response), err)
		done, err = c.complete(ctx, cfg, lease, failure(fnErr.Error(), sentinelv1.SideEffects_SIDE_EFFECTS_POSSIBLE, false))
	}
	if err != nil {
		err = fmt.Errorf("sentinel: complete %s/%s token %d: %w", cfg.namespace, key, lease.Token, err)
		if fnErr != nil {
			return nil, errors.Join(fnErr, err)
		}
		return nil, err
	}

	res := &Result{Token: done.GetToken(), Attempt: lease.Attempt, Holder: cfg.holder, Late: done.GetLate()}
	switch done.GetState() {
	case StateCompleted:
		res.Outcome, res.Response = Completed, response
	case StateReleased:
		res.Outcome, res.Retryable, res.Error = Failed, true, errText(fnErr)
	case StateFailed:
		res.Outcome, res.Error = Failed, errText(fnErr)
		res.Reconcile = c.handle(cfg.namespace, key, res.Token)
	case StateUncertain:
		res.Outcome, res.Error = Uncertain, errText(fnErr)
		res.UncertainReason = sentinelv1.UncertainReason_UNCERTAIN_REASON_REPORTED
		res.Reconcile = c.handle(cfg.namespace, key, res.Token)
	default:
		return nil, errors.Join(fnErr, fmt.Errorf("sentinel: complete %s/%s: unexpected state %s", cfg.namespace, key, done.GetState()))
	}
	return res, fnErr
}

// invoke runs fn. If fn panics or ends its goroutine (runtime.Goexit), it first reports a
// failure with possible side effects, since whatever fn did may have happened; then the panic
// goes on.
func (c *Client) invoke(ctx, fctx context.Context, cfg *callConfig, lease Lease, fn Func) (response []byte, err error) {
	returned := false
	defer func() {
		if returned {
			return
		}
		r := recover()
		msg := "the function exited without returning (runtime.Goexit)"
		if r != nil {
			msg = fmt.Sprintf("the function panicked: %v", r)
		}
		_, _ = c.complete(ctx, cfg, lease, failure(msg, sentinelv1.SideEffects_SIDE_EFFECTS_POSSIBLE, false))
		if r != nil {
			panic(r)
		}
	}()
	response, err = fn(fctx, lease)
	returned = true
	return response, err
}

// complete reports the outcome, retrying on UNAVAILABLE: repeating the same outcome under the
// same token is safe. It ignores the caller's cancellation (within the retry budget), because
// an outcome that is never reported leaves the execution uncertain.
func (c *Client) complete(ctx context.Context, cfg *callConfig, lease Lease, outcome *sentinelv1.CompleteRequest) (*sentinelv1.CompleteResponse, error) {
	req := &sentinelv1.CompleteRequest{
		Namespace: lease.Namespace, Key: lease.Key, Token: lease.Token, Fingerprint: cfg.fingerprint,
		Outcome: outcome.GetOutcome(),
	}
	var resp *sentinelv1.CompleteResponse
	_, err := c.withRetry(context.WithoutCancel(ctx), func(ctx context.Context) error {
		var err error
		resp, err = c.rpc.Complete(ctx, req)
		return err
	})
	return resp, err
}

// defaultLeaseTTL is the server's documented default, used only if a reply lacks ttl_remaining.
const defaultLeaseTTL = 30 * time.Second

// maxMessage is the server's default limit on a failure message; longer ones are cut so the
// report itself is not refused.
const maxMessage = 4096

// success and failure build the outcome part of a CompleteRequest; complete fills in the rest.
func success(response []byte) *sentinelv1.CompleteRequest {
	return &sentinelv1.CompleteRequest{Outcome: &sentinelv1.CompleteRequest_Success{Success: &sentinelv1.CompleteSuccess{Response: response}}}
}

func failure(msg string, side sentinelv1.SideEffects, retryable bool) *sentinelv1.CompleteRequest {
	if len(msg) > maxMessage {
		cut := maxMessage
		for cut > 0 && !utf8.RuneStart(msg[cut]) {
			cut--
		}
		msg = msg[:cut]
	}
	return &sentinelv1.CompleteRequest{Outcome: &sentinelv1.CompleteRequest_Failure{
		Failure: &sentinelv1.CompleteFailure{Message: msg, Retryable: retryable, SideEffects: side},
	}}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func optDuration(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}
