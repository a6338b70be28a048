package sentinel

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sentinelv1 "github.com/sentinel-dev/sentinel/clients/go/gen/sentinel/v1"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of every error the server explains.
const ErrorDomain = "sentinel.v1"

// ErrorInfo reasons sent by the server. Branch on them with errors.Is and the sentinel errors
// below rather than on message text.
const (
	ReasonFenced              = "FENCED"
	ReasonFingerprintMismatch = "FINGERPRINT_MISMATCH"
	ReasonAlreadyResolved     = "ALREADY_RESOLVED"
	ReasonNotReconcilable     = "NOT_RECONCILABLE"
	ReasonDatabaseUnavailable = "DATABASE_UNAVAILABLE"
	ReasonCommitUnknown       = "COMMIT_UNKNOWN"
)

// Targets for errors.Is. An *Error matches the one its reason or status code names; a
// *LeaseLostError matches ErrLeaseLost (and ErrFenced when the server fenced the lease).
var (
	// ErrFenced: the token is not the execution's current token; someone took over or reconciled.
	ErrFenced = errors.New("sentinel: fenced")
	// ErrFingerprintMismatch: the key was first claimed with a different fingerprint.
	ErrFingerprintMismatch = errors.New("sentinel: fingerprint mismatch")
	// ErrAlreadyResolved: a different outcome was already stored under this token.
	ErrAlreadyResolved = errors.New("sentinel: already resolved")
	// ErrNotReconcilable: the execution's state does not allow this reconcile (e.g. RUNNING without force).
	ErrNotReconcilable = errors.New("sentinel: not reconcilable")
	// ErrDatabaseUnavailable: the server could not reach its database; the call may be retried.
	ErrDatabaseUnavailable = errors.New("sentinel: database unavailable")
	// ErrCommitUnknown: the server does not know whether the write committed; retry with the same claim id.
	ErrCommitUnknown = errors.New("sentinel: commit outcome unknown")
	// ErrUnavailable matches every UNAVAILABLE status, whatever its reason.
	ErrUnavailable = errors.New("sentinel: unavailable")
	// ErrNotFound: no execution exists for the namespace and key.
	ErrNotFound = errors.New("sentinel: not found")
	// ErrInvalidArgument: the request broke a limit; Error.FieldViolations says which.
	ErrInvalidArgument = errors.New("sentinel: invalid argument")
	// ErrTooLarge: a response or message is over the server's size limit.
	ErrTooLarge = errors.New("sentinel: too large")
	// ErrLeaseLost is the cause of a lease context cancelled because the lease is gone.
	ErrLeaseLost = errors.New("sentinel: lease lost")
	// ErrClientClosed is returned, and is the cause of lease contexts, after Client.Close.
	ErrClientClosed = errors.New("sentinel: client closed")
)

// Error is a gRPC error from the server with its machine-readable details decoded.
// It keeps the original status, so status.FromError and status.Code still work on it.
type Error struct {
	// Code is the gRPC status code.
	Code codes.Code
	// Reason is the google.rpc.ErrorInfo reason (one of the Reason constants), empty if none.
	Reason string
	// Message is the server's human-readable message.
	Message string
	// Metadata is the ErrorInfo metadata, e.g. "current_token" and "state" for FENCED.
	Metadata map[string]string
	// FieldViolations lists the invalid fields of an INVALID_ARGUMENT.
	FieldViolations []*errdetails.BadRequest_FieldViolation

	status *status.Status
}

func (e *Error) Error() string {
	if e.Reason != "" {
		return fmt.Sprintf("sentinel: %s (%s): %s", e.Code, e.Reason, e.Message)
	}
	return fmt.Sprintf("sentinel: %s: %s", e.Code, e.Message)
}

// GRPCStatus returns the status the server sent, so the grpc status package sees through Error.
func (e *Error) GRPCStatus() *status.Status { return e.status }

// Is matches the sentinel errors named by the reason and the status code, and the context
// errors for CANCELLED and DEADLINE_EXCEEDED.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrFenced:
		return e.Reason == ReasonFenced
	case ErrFingerprintMismatch:
		return e.Reason == ReasonFingerprintMismatch
	case ErrAlreadyResolved:
		return e.Reason == ReasonAlreadyResolved
	case ErrNotReconcilable:
		return e.Reason == ReasonNotReconcilable
	case ErrDatabaseUnavailable:
		return e.Reason == ReasonDatabaseUnavailable
	case ErrCommitUnknown:
		return e.Reason == ReasonCommitUnknown
	case ErrUnavailable:
		return e.Code == codes.Unavailable
	case ErrNotFound:
		return e.Code == codes.NotFound
	case ErrInvalidArgument:
		return e.Code == codes.InvalidArgument
	case ErrTooLarge:
		return e.Code == codes.ResourceExhausted
	case context.Canceled:
		return e.Code == codes.Canceled
	case context.DeadlineExceeded:
		return e.Code == codes.DeadlineExceeded
	}
	return false
}

// CurrentToken is the execution's current token that a FENCED error reports, if it does.
func (e *Error) CurrentToken() (uint64, bool) {
	v, ok := e.Metadata["current_token"]
	if !ok {
		return 0, false
	}
	t, err := strconv.ParseUint(v, 10, 64)
	return t, err == nil
}

// FromError turns an error returned by a generated stub (e.g. through Client.Raw) into an
// *Error with its details decoded. Errors that carry no gRPC status are returned unchanged.
func FromError(err error) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok || st.Code() == codes.OK {
		return err
	}
	e := &Error{Code: st.Code(), Message: st.Message(), status: st}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			if d.GetDomain() == ErrorDomain || e.Reason == "" {
				e.Reason = d.GetReason()
				e.Metadata = d.GetMetadata()
			}
		case *errdetails.BadRequest:
			e.FieldViolations = append(e.FieldViolations, d.GetFieldViolations()...)
		}
	}
	return e
}

// LeaseLostError is the cause (context.Cause) of a lease context cancelled because the lease is
// gone: the server answered LOST, or no ALIVE arrived before the local monotonic deadline.
type LeaseLostError struct {
	Namespace string
	Key       string
	Token     uint64
	// Reason is the server's LOST reason; LOST_REASON_UNSPECIFIED when Local is set.
	Reason sentinelv1.LostReason
	// Detail is the server's explanation, or the local one.
	Detail string
	// Local means the client gave up on its own: the lease's time ran out without an ALIVE
	// (heartbeat stream broken or stalled). The server may not know yet.
	Local bool
}

func (e *LeaseLostError) Error() string {
	if e.Local {
		return fmt.Sprintf("sentinel: lease %s/%s token %d lost: %s", e.Namespace, e.Key, e.Token, e.Detail)
	}
	return fmt.Sprintf("sentinel: lease %s/%s token %d lost (%s): %s", e.Namespace, e.Key, e.Token, e.Reason, e.Detail)
}

// Is matches ErrLeaseLost, and ErrFenced when the server said the token was fenced.
func (e *LeaseLostError) Is(target error) bool {
	return target == ErrLeaseLost || (target == ErrFenced && e.Reason == sentinelv1.LostReason_LOST_REASON_FENCED)
}

// outcomeMark is the wrapper that NothingHappened and Permanent put around an error.
type outcomeMark struct {
	err       error
	retryable bool
}

func (m *outcomeMark) Error() string { return m.err.Error() }
func (m *outcomeMark) Unwrap() error { return m.err }

// NothingHappened marks an error returned by the function given to Once as a failure with no
// side effects that may be retried: it is reported as FAILURE{side_effects: NONE, retryable},
// the server releases the key, and the next Once for it runs the function again. Return it only
// when nothing outside the process was changed (e.g. the downstream call was never sent).
// Any error returned unmarked is reported as FAILURE{POSSIBLE} and the execution becomes
// UNCERTAIN. NothingHappened(nil) is nil.
func NothingHappened(err error) error {
	if err == nil {
		return nil
	}
	return &outcomeMark{err: err, retryable: true}
}

// Permanent marks an error as a definite failure with no side effects: it is reported as
// FAILURE{side_effects: NONE, not retryable}, stored as FAILED, and replayed to later callers
// (e.g. a card was declined). Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &outcomeMark{err: err, retryable: false}
}

// IsNothingHappened reports whether err carries the NothingHappened mark.
func IsNothingHappened(err error) bool {
	var m *outcomeMark
	return errors.As(err, &m) && m.retryable
}

// IsPermanent reports whether err carries the Permanent mark.
func IsPermanent(err error) bool {
	var m *outcomeMark
	return errors.As(err, &m) && !m.retryable
}
