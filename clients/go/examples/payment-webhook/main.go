// Command payment-webhook charges a card once per webhook event, however many times the
// payment provider delivers it and however many replicas of this handler receive it.
//
// Start a server with `sentinel dev`, then either
//
//	go run ./examples/payment-webhook                  # demo: duplicate deliveries, printed
//	go run ./examples/payment-webhook -listen :8080    # serve POST /webhook
//	curl -d '{"event_id":"evt_1","amount_cents":1299}' localhost:8080/webhook
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sentinel-dev/sentinel/clients/go/sentinel"
)

type event struct {
	EventID     string `json:"event_id"`
	AmountCents int64  `json:"amount_cents"`
}

type receipt struct {
	EventID      string `json:"event_id"`
	ChargedCents int64  `json:"charged_cents"`
	ChargeID     string `json:"charge_id"`
}

// charges counts the calls that reached the (pretend) payment provider.
var charges sync.Map

// charge stands in for the provider call. The fencing token goes with it, so a provider that
// supports it can refuse a write from a worker that was fenced meanwhile.
func charge(ctx context.Context, ev event, lease sentinel.Lease) ([]byte, error) {
	if ev.AmountCents <= 0 {
		// Nothing was sent and sending again will not help: a definite, replayed failure.
		return nil, sentinel.Permanent(fmt.Errorf("invalid amount %d", ev.AmountCents))
	}
	select {
	case <-time.After(300 * time.Millisecond): // the provider's latency
	case <-ctx.Done():
		// The lease is gone before the charge was sent: nothing happened, let it be retried.
		return nil, sentinel.NothingHappened(context.Cause(ctx))
	}
	n, _ := charges.LoadOrStore(ev.EventID, new(atomic.Int64))
	n.(*atomic.Int64).Add(1)
	return json.Marshal(receipt{
		EventID:      ev.EventID,
		ChargedCents: ev.AmountCents,
		ChargeID:     fmt.Sprintf("ch_%s_t%d", ev.EventID, lease.Token),
	})
}

func webhook(c *sentinel.Client) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, "cannot read body", http.StatusBadRequest)
			return
		}
		var ev event
		if err := json.Unmarshal(body, &ev); err != nil || ev.EventID == "" {
			http.Error(w, "want JSON {event_id, amount_cents}", http.StatusBadRequest)
			return
		}
		// The same event id with another payload is a bug or an attack, never a duplicate.
		sum := sha256.Sum256(body)
		res, err := c.Once(r.Context(), ev.EventID, func(ctx context.Context, lease sentinel.Lease) ([]byte, error) {
			return charge(ctx, ev, lease)
		}, sentinel.Fingerprint(sum[:]), sentinel.LeaseTTL(5*time.Second), sentinel.WaitWhileInProgress())
		switch {
		case errors.Is(err, sentinel.ErrFingerprintMismatch):
			http.Error(w, "event id reused with a different payload", http.StatusConflict)
		case res == nil:
			// The server could not be asked: the provider will deliver again.
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		case res.OK():
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("X-Sentinel-Outcome", res.Outcome.String())
			_, _ = w.Write(res.Response)
		case res.Outcome == sentinel.Failed && res.Retryable, res.Outcome == sentinel.InProgress:
			w.Header().Set("Retry-After", "1")
			http.Error(w, "try again", http.StatusServiceUnavailable)
		case res.Outcome == sentinel.Failed:
			http.Error(w, res.Error, http.StatusUnprocessableEntity)
		default: // Uncertain: a human must check with the provider before anything runs again.
			log.Printf("event %s is uncertain (token %d): %s", ev.EventID, res.Token, res.Error)
			http.Error(w, "payment state uncertain; under reconciliation", http.StatusInternalServerError)
		}
	}
}

func main() {
	defaultAddr := os.Getenv("SENTINEL_ADDR")
	if defaultAddr == "" {
		defaultAddr = sentinel.DefaultAddress
	}
	addr := flag.String("addr", defaultAddr, "Sentinel server address")
	namespace := flag.String("namespace", "payments", "Sentinel namespace")
	listen := flag.String("listen", "", "serve POST /webhook on this address instead of running the demo")
	flag.Parse()

	c, err := sentinel.Dial(*addr,
		sentinel.WithNamespace(*namespace),
		sentinel.WithHolder("payment-webhook/"+strconv.Itoa(os.Getpid())),
		// Answer 503 soon when Sentinel is down: the provider will deliver the event again.
		sentinel.WithRetryBudget(5*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	mux := http.NewServeMux()
	mux.Handle("POST /webhook", webhook(c))
	if *listen != "" {
		log.Printf("listening on %s, Sentinel at %s", *listen, *addr)
		log.Fatal(http.ListenAndServe(*listen, mux))
	}
	if err := demo(mux); err != nil {
		log.Fatal(err)
	}
}

// demo delivers one event five times at once (as a provider's retries and fan-out do), then
// once more later, and shows that the card was charged once and every delivery got the same
// receipt.
func demo(h http.Handler) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	url := "http://" + ln.Addr().String() + "/webhook"

	id := fmt.Sprintf("evt_%d", time.Now().UnixNano())
	body, _ := json.Marshal(event{EventID: id, AmountCents: 1299})
	deliver := func(n int) string {
		resp, err := http.Post(url, "application/json", bytes.NewReader(body))
		if err != nil {
			return fmt.Sprintf("delivery %d: %v", n, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return fmt.Sprintf("delivery %d: %d %-9s %s", n, resp.StatusCode, resp.Header.Get("X-Sentinel-Outcome"), bytes.TrimSpace(b))
	}

	fmt.Printf("delivering %s five times at once\n", id)
	lines := make([]string, 5)
	var wg sync.WaitGroup
	for i := range lines {
		wg.Go(func() { lines[i] = deliver(i + 1) })
	}
	wg.Wait()
	for _, l := range lines {
		fmt.Println(l)
	}
	fmt.Println("delivering it again a moment later")
	fmt.Println(deliver(6))

	count := int64(0)
	if n, ok := charges.Load(id); ok {
		count = n.(*atomic.Int64).Load()
	}
	fmt.Printf("the payment provider was called %d time(s)\n", count)
	if count != 1 {
		return fmt.Errorf("charged %d times, want 1", count)
	}
	return nil
}
