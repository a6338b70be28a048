package sentinel

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sentinelv1 "github.com/sentinel-dev/sentinel/clients/go/gen/sentinel/v1"
)

func withDetails(t *testing.T, c codes.Code, msg string, details ...*errdetails.ErrorInfo) error {
	t.Helper()
	st := status.New(c, msg)
	for _, d := range details {
		var err error
		if st, err = st.WithDetails(d); err != nil {
			t.Fatal(err)
		}
	}
	return st.Err()
}

func TestFromErrorDecodesFenced(t *testing.T) {
	raw := withDetails(t, codes.FailedPrecondition, "token 3 is not current", &errdetails.ErrorInfo{
		Reason: ReasonFenced, Domain: ErrorDomain,
		Metadata: map[string]string{"token": "3", "current_token": "5", "state": "RUNNING"},
	})
	err := fmt.Errorf("complete: %w", FromError(raw))
	if !errors.Is(err, ErrFenced) || errors.Is(err, ErrAlreadyResolved) || errors.Is(err, ErrUnavailable) {
		t.Fatalf("errors.Is misreads %v", err)
	}
	var se *Error
	if !errors.As(err, &se) || se.Code != codes.FailedPrecondition || se.Metadata["state"] != "RUNNING" {
		t.Fatalf("decoded %#v", se)
	}
	if cur, ok := se.CurrentToken(); !ok || cur != 5 {
		t.Fatalf("current token %d %v, want 5", cur, ok)
	}
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("status.Code sees %v through the wrapper", status.Code(err))
	}
}

func TestFromErrorDecodesBadRequestAndCodes(t *testing.T) {
	st, err := status.New(codes.InvalidArgument, "invalid request").WithDetails(&errdetails.BadRequest{
		FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "namespace", Description: "must match [a-z0-9._-]"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := FromError(st.Err())
	var se *Error
	if !errors.Is(got, ErrInvalidArgument) || !errors.As(got, &se) || len(se.FieldViolations) != 1 || se.FieldViolations[0].GetField() != "namespace" {
		t.Fatalf("decoded %v", got)
	}
	unavailable := FromError(withDetails(t, codes.Unavailable, "db down", &errdetails.ErrorInfo{Reason: ReasonCommitUnknown, Domain: ErrorDomain}))
	if !errors.Is(unavailable, ErrUnavailable) || !errors.Is(unavailable, ErrCommitUnknown) || errors.Is(unavailable, ErrDatabaseUnavailable) {
		t.Fatalf("decoded %v", unavailable)
	}
	if !errors.Is(FromError(status.Error(codes.Canceled, "gone")), context.Canceled) {
		t.Fatal("CANCELLED does not match context.Canceled")
	}
	plain := errors.New("not a status")
	if FromError(plain) != plain || FromError(nil) != nil {
		t.Fatal("FromError changed an error without a status")
	}
}

func TestMarksSurviveWrapping(t *testing.T) {
	base := errors.New("connection refused")
	wrapped := fmt.Errorf("charging: %w", NothingHappened(base))
	if !IsNothingHappened(wrapped) || IsPermanent(wrapped) || !errors.Is(wrapped, base) {
		t.Fatalf("marks lost in %v", wrapped)
	}
	if !IsPermanent(Permanent(base)) || IsNothingHappened(Permanent(base)) {
		t.Fatal("Permanent misread")
	}
	if NothingHappened(nil) != nil || Permanent(nil) != nil {
		t.Fatal("marking nil must stay nil")
	}
	lost := &LeaseLostError{Reason: sentinelv1.LostReason_LOST_REASON_FENCED}
	if !errors.Is(lost, ErrLeaseLost) || !errors.Is(lost, ErrFenced) {
		t.Fatal("a fenced lease loss must match ErrLeaseLost and ErrFenced")
	}
	if errors.Is(&LeaseLostError{Local: true}, ErrFenced) {
		t.Fatal("a local expiry is not a fence")
	}
}

func TestFailureMessageIsCutOnARuneBoundary(t *testing.T) {
	long := strings.Repeat("é", maxMessage) // 2 bytes each
	msg := failure(long, sentinelv1.SideEffects_SIDE_EFFECTS_POSSIBLE, false).GetFailure().GetMessage()
	if len(msg) > maxMessage || !utf8.ValidString(msg) || len(msg) < maxMessage-4 {
		t.Fatalf("cut to %d bytes, valid UTF-8 %v", len(msg), utf8.ValidString(msg))
	}
}
