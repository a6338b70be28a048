// Package sentinel is the Go client of Sentinel: it runs a keyed operation once across every
// worker, replays its outcome to every later caller, and surfaces executions whose outcome is
// uncertain for reconciliation. The server decides everything; this package claims, keeps
// leases alive, runs your function and reports what it did.
//
//	c, err := sentinel.Dial("127.0.0.1:50051", sentinel.WithNamespace("payments"))
//	...
//	res, err := c.Once(ctx, eventID, func(ctx context.Context, lease sentinel.Lease) ([]byte, error) {
//		return chargeCard(ctx, lease.Token) // ctx is cancelled if the lease is lost
//	}, sentinel.LeaseTTL(10*time.Second))
//
// Once claims the key. If it gets the lease it runs the function with a context that is
// cancelled when the lease is lost: the server says LOST (fenced by a takeover or a forced
// reconcile, expired, past the hard deadline) or no ALIVE arrives before the lease's local
// monotonic deadline. All leases of a Client are renewed over one shared heartbeat stream,
// every lease ttl / 3, reopened with backoff when it breaks. The function's outcome is then
// reported: its bytes as the stored response; an error marked NothingHappened as a failure
// that released the key; Permanent as a stored definite failure; any other error, or a panic,
// as a failure with possible side effects, which makes the execution Uncertain.
//
// The Result says which of five outcomes happened: Completed (ran now), Replayed (cached),
// InProgress (another worker is running it), Uncertain (with a Reconcile handle), Failed.
// Server errors are *Error values that errors.Is matches against ErrFenced,
// ErrFingerprintMismatch, ErrAlreadyResolved, ErrNotReconcilable and the other Err values.
//
// The generated gRPC stubs live in package sentinelv1
// (github.com/sentinel-dev/sentinel/clients/go/gen/sentinel/v1); Client.Raw exposes them.
package sentinel
