package sentinel_test

// These tests talk to a real server over a real socket: run them through
// scripts/with-server.sh (see clients/go/test.sh), which exports SENTINEL_ADDR.

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/sentinel-dev/sentinel/clients/go/sentinel"

	sentinelv1 "github.com/sentinel-dev/sentinel/clients/go/gen/sentinel/v1"
)

var (
	addr  string
	runID = "go-" + strings.ToLower(rand.Text()[:10]) // shared server: keep this run's records apart
	nsSeq atomic.Int64
)

func TestMain(m *testing.M) {
	addr = os.Getenv("SENTINEL_ADDR")
	if addr == "" {
		fmt.Fprintln(os.Stderr, "SENTINEL_ADDR is not set: run these tests via scripts/with-server.sh clients/go/test.sh")
		os.Exit(2)
	}
	os.Exit(m.Run())
}

// newClient dials the test server with a namespace of the test's own.
func newClient(t *testing.T) *sentinel.Client {
	t.Helper()
	c, err := sentinel.Dial(addr, sentinel.WithNamespace(fmt.Sprintf("%s.%d", runID, nsSeq.Add(1))), sentinel.WithHolder("go-test/"+t.Name()))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func notCalled(t *testing.T) sentinel.Func {
	return func(context.Context, sentinel.Lease) ([]byte, error) {
		t.Error("the function ran, but the key was already resolved")
		return nil, errors.New("must not run")
	}
}

func TestOneExecutionAmongConcurrentCallers(t *testing.T) {
	c := newClient(t)
	ctx := ctxFor(t)
	const callers = 24
	var runs atomic.Int32
	fn := func(ctx context.Context, lease sentinel.Lease) ([]byte, error) {
		runs.Add(1)
		time.Sleep(300 * time.Millisecond) // keep the others waiting on a live lease
		return []byte("charged once, nonce " + rand.Text()), nil
	}
	results := make([]*sentinel.Result, callers)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			results[i], errs[i] = c.Once(ctx, "payment-42", fn, sentinel.WaitWhileInProgress(), sentinel.LeaseTTL(5*time.Second))
		})
	}
	wg.Wait()
	if n := runs.Load(); n != 1 {
		t.Fatalf("the function ran %d times, want 1", n)
	}
	completed := 0
	for i := range callers {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		r := results[i]
		if !bytes.Equal(r.Response, results[0].Response) {
			t.Errorf("caller %d got %q, caller 0 got %q", i, r.Response, results[0].Response)
		}
		switch r.Outcome {
		case sentinel.Completed:
			completed++
		case sentinel.Replayed:
			if !r.Cached {
				t.Errorf("caller %d: replayed but not marked cached", i)
			}
		default:
			t.Errorf("caller %d: outcome %v, want completed or replayed", i, r.Outcome)
		}
	}
	if completed != 1 {
		t.Errorf("%d callers report Completed, want exactly 1", completed)
	}
}

func TestReplayIsByteIdenticalAndCached(t *testing.T) {
	c := newClient(t)
	ctx := ctxFor(t)
	// Bytes that no text round trip survives: NUL, invalid UTF-8, a trailing newline.
	want := []byte{0x00, 0xff, 0xfe, 'o', 'k', 0xc3, 0x28, '\n', 0x00}
	first, err := c.Once(ctx, "order-1", func(context.Context, sentinel.Lease) ([]byte, error) { return want, nil })
	if err != nil {
		t.Fatal(err)
	}
	if first.Outcome != sentinel.Completed || first.Cached || !bytes.Equal(first.Response, want) {
		t.Fatalf("first call: %+v", first)
	}
	for range 3 {
		again, err := c.Once(ctx, "order-1", notCalled(t))
		if err != nil {
			t.Fatal(err)
		}
		if again.Outcome != sentinel.Replayed || !again.Cached {
			t.Fatalf("replay: outcome %v cached %v", again.Outcome, again.Cached)
		}
		if !bytes.Equal(again.Response, want) {
			t.Fatalf("replay bytes %x, want %x", again.Response, want)
		}
		if again.Token != first.Token {
			t.Fatalf("replay token %d, completion token %d", again.Token, first.Token)
		}
	}
}

func TestLeaseLossCancelsContextAndLateCompleteIsFenced(t *testing.T) {
	c := newClient(t)
	ctx := ctxFor(t)
	const ttl = 1500 * time.Millisecond // heartbeat every 500 ms
	leases := make(chan sentinel.Lease, 1)
	type cancelled struct {
		at    time.Time
		cause error
	}
	done := make(chan cancelled, 1)
	var res *sentinel.Result
	var onceErr error
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		res, onceErr = c.Once(ctx, "job-7", func(ctx context.Context, lease sentinel.Lease) ([]byte, error) {
			leases <- lease
			select {
			case <-ctx.Done():
				done <- cancelled{time.Now(), context.Cause(ctx)}
			case <-time.After(20 * time.Second):
				done <- cancelled{}
			}
			// A zombie that ignores the cancellation and reports anyway.
			return []byte("zombie result"), nil
		}, sentinel.LeaseTTL(ttl))
	}()
	lease := <-leases
	// Let a few heartbeats succeed first: the lease must survive until it is taken away.
	time.Sleep(ttl)
	if _, err := c.Reconcile(ctx, "job-7", lease.Token, sentinel.ResolveRetry(), sentinel.Force(), sentinel.Operator("test"), sentinel.Note("forced during fn")); err != nil {
		t.Fatalf("forced reconcile: %v", err)
	}
	reconciledAt := time.Now()
	got := <-done
	if got.cause == nil {
		t.Fatal("the lease context was not cancelled within 20 s of a forced reconcile")
	}
	// One heartbeat interval is ttl/3; allow a full ttl plus slack on a busy machine.
	if lag := got.at.Sub(reconciledAt); lag > 2*ttl {
		t.Errorf("context cancelled %v after the reconcile, want within about one heartbeat interval (%v)", lag, ttl/3)
	}
	if !errors.Is(got.cause, sentinel.ErrLeaseLost) || !errors.Is(got.cause, sentinel.ErrFenced) {
		t.Errorf("cancel cause %v, want a lease lost as fenced", got.cause)
	}
	var lost *sentinel.LeaseLostError
	if !errors.As(got.cause, &lost) || lost.Token != lease.Token || lost.Local {
		t.Errorf("cancel cause %#v, want the server's LOST for token %d", got.cause, lease.Token)
	}
	<-finished
	if onceErr == nil || !errors.Is(onceErr, sentinel.ErrFenced) {
		t.Fatalf("Once returned (%+v, %v), want the late Complete rejected as fenced", res, onceErr)
	}
	var se *sentinel.Error
	if !errors.As(onceErr, &se) {
		t.Fatalf("error %v carries no *sentinel.Error", onceErr)
	}
	if cur, ok := se.CurrentToken(); ok && cur <= lease.Token {
		t.Errorf("FENCED reports current token %d, want above %d", cur, lease.Token)
	}
	// The reconcile released the key: the next Once runs again, under a larger token.
	next, err := c.Once(ctx, "job-7", func(_ context.Context, l sentinel.Lease) ([]byte, error) {
		if l.Token <= lease.Token {
			t.Errorf("new token %d not above fenced token %d", l.Token, lease.Token)
		}
		return []byte("rerun"), nil
	})
	if err != nil || next.Outcome != sentinel.Completed || string(next.Response) != "rerun" {
		t.Fatalf("rerun after reconcile: %+v, %v", next, err)
	}
}

func TestStaleCompleteIsFenced(t *testing.T) {
	c := newClient(t)
	ctx := ctxFor(t)
	ns := c.Namespace()
	// A worker claims and then goes silent (no heartbeats): its lease expires.
	stale, err := c.Raw().Claim(ctx, &sentinelv1.ClaimRequest{
		Namespace: ns, Key: "batch-9", Holder: "zombie", ClaimId: rand.Text(),
		LeaseTtl: durationpb.New(200 * time.Millisecond),
	})
	if err != nil {
		t.Fatal(err)
	}
	oldToken := stale.GetAcquired().GetToken()
	if oldToken == 0 {
		t.Fatalf("zombie claim: %v", stale)
	}
	time.Sleep(600 * time.Millisecond)
	// A second worker takes the expired execution over and completes it.
	res, err := c.Once(ctx, "batch-9", func(_ context.Context, l sentinel.Lease) ([]byte, error) {
		return []byte("done by the new holder"), nil
	}, sentinel.OnLeaseExpiry(sentinel.ExpiredIsRetried))
	if err != nil || res.Outcome != sentinel.Completed {
		t.Fatalf("takeover: %+v, %v", res, err)
	}
	if res.Token <= oldToken {
		t.Fatalf("takeover token %d not above %d", res.Token, oldToken)
	}
	// The zombie wakes up and reports: its old token must be refused.
	_, err = c.Raw().Complete(ctx, &sentinelv1.CompleteRequest{
		Namespace: ns, Key: "batch-9", Token: oldToken,
		Outcome: &sentinelv1.CompleteRequest_Success{Success: &sentinelv1.CompleteSuccess{Response: []byte("zombie")}},
	})
	err = sentinel.FromError(err)
	if !errors.Is(err, sentinel.ErrFenced) {
		t.Fatalf("stale complete: %v, want FENCED", err)
	}
	var se *sentinel.Error
	if errors.As(err, &se) {
		if cur, ok := se.CurrentToken(); !ok || cur != res.Token {
			t.Errorf("FENCED metadata %v, want current_token %d", se.Metadata, res.Token)
		}
	}
	replay, err := c.Once(ctx, "batch-9", notCalled(t))
	if err != nil || replay.Outcome != sentinel.Replayed || string(replay.Response) != "done by the new holder" {
		t.Fatalf("after the stale complete: %+v, %v", replay, err)
	}
}

func TestNothingHappenedReleasesTheKey(t *testing.T) {
	c := newClient(t)
	ctx := ctxFor(t)
	refused := errors.New("payment provider refused the connection")
	res, err := c.Once(ctx, "refund-3", func(context.Context, sentinel.Lease) ([]byte, error) {
		return nil, sentinel.NothingHappened(refused)
	})
	if !errors.Is(err, refused) || !sentinel.IsNothingHappened(err) {
		t.Fatalf("Once error %v, want the function's error marked NothingHappened", err)
	}
	if res == nil || res.Outcome != sentinel.Failed || !res.Retryable || res.Reconcile != nil {
		t.Fatalf("result %+v, want a retryable failure that released the key", res)
	}
	var runs int
	again, err := c.Once(ctx, "refund-3", func(_ context.Context, l sentinel.Lease) ([]byte, error) {
		runs++
		if l.Attempt != 2 || l.Token <= res.Token {
			t.Errorf("second run: attempt %d token %d", l.Attempt, l.Token)
		}
		return []byte("refunded"), nil
	})
	if err != nil || runs != 1 || again.Outcome != sentinel.Completed || string(again.Response) != "refunded" {
		t.Fatalf("second Once: runs=%d %+v %v", runs, again, err)
	}
}

func TestUnmarkedErrorIsUncertainAndReconcilable(t *testing.T) {
	c := newClient(t)
	ctx := ctxFor(t)
	boom := errors.New("timeout after sending the transfer")
	res, err := c.Once(ctx, "transfer-5", func(context.Context, sentinel.Lease) ([]byte, error) { return nil, boom })
	if !errors.Is(err, boom) {
		t.Fatalf("Once error %v, want the function's error", err)
	}
	if res == nil || res.Outcome != sentinel.Uncertain || res.Reconcile == nil ||
		res.UncertainReason != sentinelv1.UncertainReason_UNCERTAIN_REASON_REPORTED {
		t.Fatalf("result %+v, want Uncertain (reported) with a reconcile handle", res)
	}
	// Nobody runs it again on their own: every caller is told it is uncertain.
	again, err := c.Once(ctx, "transfer-5", notCalled(t))
	if err != nil || again.Outcome != sentinel.Uncertain || again.Token != res.Token || !strings.Contains(again.Error, boom.Error()) {
		t.Fatalf("second Once: %+v, %v", again, err)
	}
	pending, err := c.ListUncertain(ctx)
	if err != nil || len(pending) != 1 || pending[0].GetKey() != "transfer-5" {
		t.Fatalf("ListUncertain: %v, %v", pending, err)
	}
	// An operator checks the bank and records what really happened.
	if _, err := again.Reconcile.MarkCompleted(ctx, []byte("transfer confirmed"), sentinel.Operator("ops"), sentinel.Note("bank statement")); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	// The same handle is now stale: the reconcile bumped the token.
	if _, err := again.Reconcile.Retry(ctx); !errors.Is(err, sentinel.ErrFenced) {
		t.Fatalf("second reconcile on the old token: %v, want FENCED", err)
	}
	replay, err := c.Once(ctx, "transfer-5", notCalled(t))
	if err != nil || replay.Outcome != sentinel.Replayed || string(replay.Response) != "transfer confirmed" {
		t.Fatalf("after reconcile: %+v, %v", replay, err)
	}
	if pending, err := c.ListUncertain(ctx); err != nil || len(pending) != 0 {
		t.Fatalf("ListUncertain after reconcile: %v, %v", pending, err)
	}
}

func TestPanicIsReportedAsPossibleSideEffects(t *testing.T) {
	c := newClient(t)
	ctx := ctxFor(t)
	func() {
		defer func() {
			if r := recover(); r != "kaboom" {
				t.Errorf("recovered %v, want the function's panic to go on", r)
			}
		}()
		_, _ = c.Once(ctx, "panics", func(context.Context, sentinel.Lease) ([]byte, error) { panic("kaboom") })
		t.Error("Once returned after the function panicked")
	}()
	res, err := c.Once(ctx, "panics", notCalled(t))
	if err != nil || res.Outcome != sentinel.Uncertain || !strings.Contains(res.Error, "kaboom") {
		t.Fatalf("after the panic: %+v, %v", res, err)
	}
}

func TestPermanentFailureIsStoredAndReplayed(t *testing.T) {
	c := newClient(t)
	ctx := ctxFor(t)
	declined := errors.New("card declined")
	res, err := c.Once(ctx, "charge-8", func(context.Context, sentinel.Lease) ([]byte, error) {
		return nil, sentinel.Permanent(declined)
	})
	if !errors.Is(err, declined) || res == nil || res.Outcome != sentinel.Failed || res.Retryable {
		t.Fatalf("Once: %+v, %v", res, err)
	}
	again, err := c.Once(ctx, "charge-8", notCalled(t))
	if err != nil || again.Outcome != sentinel.Failed || again.Error != declined.Error() || again.Reconcile == nil {
		t.Fatalf("replayed failure: %+v, %v", again, err)
	}
}

func TestSharedHeartbeatKeepsConcurrentLeasesAlive(t *testing.T) {
	c := newClient(t)
	ctx := ctxFor(t)
	const ttl = time.Second
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Go(func() {
			key := fmt.Sprintf("long-%d", i)
			res, err := c.Once(ctx, key, func(ctx context.Context, _ sentinel.Lease) ([]byte, error) {
				select {
				case <-ctx.Done():
					return nil, sentinel.NothingHappened(context.Cause(ctx))
				case <-time.After(3 * ttl): // three lease lifetimes: only heartbeats keep it
				}
				return []byte(key), nil
			}, sentinel.LeaseTTL(ttl))
			if err != nil || res.Outcome != sentinel.Completed || res.Late || string(res.Response) != key {
				t.Errorf("%s: %+v, %v", key, res, err)
			}
		})
	}
	wg.Wait()
}

func TestHardDeadlineCancelsAndLateCompleteIsAccepted(t *testing.T) {
	c := newClient(t)
	ctx := ctxFor(t)
	var cause error
	start := time.Now()
	res, err := c.Once(ctx, "slow", func(ctx context.Context, _ sentinel.Lease) ([]byte, error) {
		select {
		case <-ctx.Done():
			cause = context.Cause(ctx)
		case <-time.After(20 * time.Second):
		}
		// The local deadline may fire a little before the server's hard deadline; report
		// surely after it.
		time.Sleep(500 * time.Millisecond)
		return []byte("finished anyway"), nil
	}, sentinel.LeaseTTL(400*time.Millisecond), sentinel.HardTTL(time.Second))
	if !errors.Is(cause, sentinel.ErrLeaseLost) {
		t.Fatalf("cause %v, want the lease lost at the hard deadline", cause)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("cancelled after %v, want about the 1 s hard deadline", d)
	}
	// Nobody took over or reconciled, so the token is still current: the result is kept.
	if err != nil || res.Outcome != sentinel.Completed || !res.Late {
		t.Fatalf("late complete: %+v, %v", res, err)
	}
}

func TestFingerprintMismatchIsRejected(t *testing.T) {
	c := newClient(t)
	ctx := ctxFor(t)
	ok := func(context.Context, sentinel.Lease) ([]byte, error) { return []byte("v1"), nil }
	if _, err := c.Once(ctx, "invoice-2", ok, sentinel.Fingerprint([]byte("sha256:aaaa"))); err != nil {
		t.Fatal(err)
	}
	if r, err := c.Once(ctx, "invoice-2", notCalled(t), sentinel.Fingerprint([]byte("sha256:aaaa"))); err != nil || r.Outcome != sentinel.Replayed {
		t.Fatalf("same fingerprint: %+v, %v", r, err)
	}
	_, err := c.Once(ctx, "invoice-2", notCalled(t), sentinel.Fingerprint([]byte("sha256:bbbb")))
	if !errors.Is(err, sentinel.ErrFingerprintMismatch) {
		t.Fatalf("other fingerprint: %v, want ErrFingerprintMismatch", err)
	}
}

func TestInvalidArgumentNamesTheField(t *testing.T) {
	c := newClient(t)
	ctx := ctxFor(t)
	_, err := c.Once(ctx, "k", notCalled(t), sentinel.Namespace("Not A Namespace"))
	var se *sentinel.Error
	if !errors.Is(err, sentinel.ErrInvalidArgument) || !errors.As(err, &se) || len(se.FieldViolations) == 0 {
		t.Fatalf("bad namespace: %v, want INVALID_ARGUMENT with field violations", err)
	}
	if f := se.FieldViolations[0].GetField(); f != "namespace" {
		t.Errorf("violation on %q, want namespace", f)
	}
}

func TestInspectShowsStateAndHistory(t *testing.T) {
	c := newClient(t)
	ctx := ctxFor(t)
	if _, err := c.Inspect(ctx, "never-claimed"); !errors.Is(err, sentinel.ErrNotFound) {
		t.Fatalf("inspect of an unknown key: %v, want ErrNotFound", err)
	}
	res, err := c.Once(ctx, "audit", func(context.Context, sentinel.Lease) ([]byte, error) { return []byte("x"), nil })
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Inspect(ctx, "audit")
	if err != nil {
		t.Fatal(err)
	}
	e := got.GetExecution()
	if e.GetState() != sentinel.StateCompleted || e.GetToken() != res.Token || string(e.GetResponse()) != "x" {
		t.Fatalf("execution %v", e)
	}
	h := got.GetHistory()
	if len(h) < 2 || h[0].GetToState() != sentinel.StateCompleted || h[len(h)-1].GetToState() != sentinel.StateRunning {
		t.Fatalf("history (newest first) %v, want claim then completion", h)
	}
	var listed int
	for e, err := range c.ListExecutions(ctx, sentinel.StateAny, sentinel.PageSize(1)) {
		if err != nil {
			t.Fatal(err)
		}
		if e.GetKey() != "audit" {
			t.Errorf("listed %q", e.GetKey())
		}
		listed++
	}
	if listed != 1 {
		t.Errorf("listed %d executions, want 1", listed)
	}
}

func TestCloseCancelsLeases(t *testing.T) {
	c, err := sentinel.Dial(addr, sentinel.WithNamespace(fmt.Sprintf("%s.%d", runID, nsSeq.Add(1))))
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t)
	started := make(chan struct{})
	var cause error
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		_, _ = c.Once(ctx, "interrupted", func(ctx context.Context, _ sentinel.Lease) ([]byte, error) {
			close(started)
			select {
			case <-ctx.Done():
				cause = context.Cause(ctx)
			case <-time.After(20 * time.Second):
			}
			return nil, sentinel.NothingHappened(cause)
		})
	}()
	<-started
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	<-finished
	if !errors.Is(cause, sentinel.ErrClientClosed) {
		t.Fatalf("cause %v, want ErrClientClosed", cause)
	}
}

func TestOversizedResponseIsReportedAsUncertain(t *testing.T) {
	c := newClient(t)
	ctx := ctxFor(t)
	huge := bytes.Repeat([]byte("x"), 1<<20+1) // one byte over the server's default limit
	res, err := c.Once(ctx, "export-11", func(context.Context, sentinel.Lease) ([]byte, error) { return huge, nil })
	if !errors.Is(err, sentinel.ErrTooLarge) {
		t.Fatalf("Once error %v, want ErrTooLarge", err)
	}
	// The work ran but its result could not be stored: that must not look like "never ran".
	if res == nil || res.Outcome != sentinel.Uncertain || res.Reconcile == nil {
		t.Fatalf("result %+v, want Uncertain", res)
	}
	again, err := c.Once(ctx, "export-11", notCalled(t))
	if err != nil || again.Outcome != sentinel.Uncertain {
		t.Fatalf("second Once: %+v, %v", again, err)
	}
}
