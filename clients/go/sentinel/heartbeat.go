package sentinel

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	sentinelv1 "github.com/sentinel-dev/sentinel/clients/go/gen/sentinel/v1"
)

// The heartbeater keeps every lease of a client alive over ONE bidirectional stream.
//
// One goroutine (run) owns the stream and is the only sender; a receiver goroutine per stream
// applies the replies. Each lease has a local deadline measured on the monotonic clock: the
// send time of the request that an ALIVE answers plus the ttl_remaining it carries (or the
// claim's send time plus its ttl_remaining). Measuring from the send time, not the receive
// time, keeps the local deadline at or before the server's, whatever the network delay. When
// the deadline passes without an ALIVE, or the server says LOST, the lease's context is
// cancelled: a worker is never left running on a lease that may be gone.
type heartbeater struct {
	rpc sentinelv1.SentinelServiceClient

	mu       sync.Mutex
	leases   map[leaseID]*leaseState
	failures int // consecutive stream failures, reset by any reply; drives reopen backoff
	gen      int // generation of the open stream (0: none); replies from older ones are ignored
	closed   bool

	kick chan struct{} // wakes run after a change to leases
	stop chan struct{} // closed by close()
	done chan struct{} // closed when run returns
	once sync.Once
}

type leaseID struct {
	namespace string
	key       string
	token     uint64
}

type leaseState struct {
	id       leaseID
	interval time.Duration
	nextBeat time.Time
	deadline time.Time
	// outstanding holds the send times of requests not yet answered, oldest first. Replies are
	// matched to the oldest one, which is never later than the request really answered, so the
	// deadline derived from it errs on the early side.
	outstanding []time.Time
	cancel      context.CancelCauseFunc
	lost        bool
}

const (
	// idleStreamClose is how long the stream stays open with no lease, to spare reopening it
	// between back-to-back executions.
	idleStreamClose = 30 * time.Second
	minBeatInterval = 10 * time.Millisecond
)

func newHeartbeater(rpc sentinelv1.SentinelServiceClient) *heartbeater {
	h := &heartbeater{
		rpc:    rpc,
		leases: make(map[leaseID]*leaseState),
		kick:   make(chan struct{}, 1),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	go h.run()
	return h
}

// add starts heartbeating a lease. ttl is the lease ttl asked for at claim; deadline is the
// local monotonic deadline from the claim. cancel is called once with the reason the lease is
// gone. It returns false if the client is closed.
func (h *heartbeater) add(id leaseID, ttl time.Duration, deadline time.Time, cancel context.CancelCauseFunc) bool {
	interval := max(ttl/3, minBeatInterval)
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return false
	}
	h.leases[id] = &leaseState{
		id:       id,
		interval: interval,
		nextBeat: time.Now().Add(interval),
		deadline: deadline,
		cancel:   cancel,
	}
	h.mu.Unlock()
	h.wake()
	return true
}

// remove stops heartbeating a lease. Replies still in flight for it are ignored.
func (h *heartbeater) remove(id leaseID) {
	h.mu.Lock()
	delete(h.leases, id)
	h.mu.Unlock()
	h.wake()
}

func (h *heartbeater) wake() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

func (h *heartbeater) close() {
	h.once.Do(func() {
		h.mu.Lock()
		h.closed = true
		for _, l := range h.leases {
			if !l.lost {
				l.lost = true
				l.cancel(ErrClientClosed)
			}
		}
		h.mu.Unlock()
		close(h.stop)
	})
	<-h.done
}

// streamEnd reports that the stream of generation gen broke (open, send or receive failed).
type streamEnd struct{ gen int }

// hbStream is one generation of the heartbeat stream. Its own goroutines open it, send what
// run queues on out, and receive; so a stream that blocks (connecting, flow control) never
// keeps run from enforcing deadlines.
type hbStream struct {
	gen    int
	cancel context.CancelFunc
	out    chan *sentinelv1.HeartbeatRequest
}

func (h *heartbeater) run() {
	defer close(h.done)
	var (
		stream    *hbStream
		gen       int
		reopenAt  time.Time
		idleSince = time.Now()
		ended     = make(chan streamEnd)
		timer     = time.NewTimer(time.Hour)
	)
	defer timer.Stop()
	closeStream := func() {
		if stream != nil {
			stream.cancel()
			stream = nil
			h.mu.Lock()
			h.gen = 0
			h.mu.Unlock()
		}
	}
	defer closeStream()
	broken := func() {
		closeStream()
		h.mu.Lock()
		h.failures++
		n := h.failures
		h.mu.Unlock()
		reopenAt = time.Now().Add(reopenBackoff(n))
	}

	for {
		now := time.Now()
		active := h.expire(now)
		if active > 0 {
			idleSince = now
		}

		if stream == nil && active > 0 && !now.Before(reopenAt) {
			gen++
			stream = h.open(gen, ended)
			h.resetAfterReopen(now, gen)
		}
		if stream != nil && active == 0 && now.Sub(idleSince) >= idleStreamClose {
			closeStream()
		}

		if stream != nil {
			if h.stalled(now) {
				broken()
			} else {
				for _, req := range h.due(now) {
					select {
					case stream.out <- req:
					default:
						// The stream is not draining; the stall check will reopen it.
					}
				}
			}
		}

		wait := h.nextWake(time.Now())
		if stream == nil && active > 0 {
			wait = min(wait, max(time.Until(reopenAt), 0))
		}
		if stream != nil && active == 0 {
			wait = min(wait, max(idleStreamClose-time.Since(idleSince), 0))
		}
		timer.Reset(wait)
		select {
		case <-h.stop:
			return
		case <-h.kick:
		case <-timer.C:
		case e := <-ended:
			if stream != nil && e.gen == stream.gen {
				broken()
			}
		}
	}
}

func (h *heartbeater) open(gen int, ended chan<- streamEnd) *hbStream {
	ctx, cancel := context.WithCancel(context.Background())
	s := &hbStream{gen: gen, cancel: cancel, out: make(chan *sentinelv1.HeartbeatRequest, 1024)}
	report := func() {
		select {
		case ended <- streamEnd{gen: gen}:
		case <-h.done:
		}
	}
	go func() {
		stream, err := h.rpc.Heartbeat(ctx)
		if err != nil {
			report()
			return
		}
		go func() {
			for {
				resp, err := stream.Recv()
				if err != nil {
					report()
					return
				}
				h.apply(gen, resp, time.Now())
			}
		}()
		for {
			select {
			case <-ctx.Done():
				return
			case req := <-s.out:
				// A failed send means the stream is gone; Recv reports why.
				if stream.Send(req) != nil {
					return
				}
			}
		}
	}()
	return s
}

func reopenBackoff(failures int) time.Duration {
	d := 50 * time.Millisecond
	for i := 1; i < failures && d < 2*time.Second; i++ {
		d *= 2
	}
	d = min(d, 2*time.Second)
	return d/2 + rand.N(d/2+1)
}

func (h *heartbeater) apply(gen int, resp *sentinelv1.HeartbeatResponse, now time.Time) {
	id := leaseID{resp.GetNamespace(), resp.GetKey(), resp.GetToken()}
	h.mu.Lock()
	defer h.mu.Unlock()
	if gen != h.gen {
		// Its request was sent on a stream whose send times were forgotten at the reopen.
		return
	}
	h.failures = 0
	l, ok := h.leases[id]
	if !ok || l.lost {
		return
	}
	sent := now
	if len(l.outstanding) > 0 {
		sent = l.outstanding[0]
		l.outstanding = l.outstanding[1:]
	}
	switch r := resp.GetResult().(type) {
	case *sentinelv1.HeartbeatResponse_Alive:
		// A later deadline needs no wake-up: run wakes at the old one, finds it moved, sleeps on.
		if d := sent.Add(r.Alive.GetTtlRemaining().AsDuration()); d.After(l.deadline) {
			l.deadline = d
		}
	case *sentinelv1.HeartbeatResponse_Lost:
		l.lost = true
		l.cancel(&LeaseLostError{
			Namespace: id.namespace, Key: id.key, Token: id.token,
			Reason: r.Lost.GetReason(), Detail: r.Lost.GetDetail(),
		})
	}
}

// expire cancels the leases whose local deadline has passed and counts the live ones.
func (h *heartbeater) expire(now time.Time) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	active := 0
	for _, l := range h.leases {
		if l.lost {
			continue
		}
		if !now.Before(l.deadline) {
			l.lost = true
			l.cancel(&LeaseLostError{
				Namespace: l.id.namespace, Key: l.id.key, Token: l.id.token,
				Detail: "no ALIVE from the server before the lease's local deadline", Local: true,
			})
			continue
		}
		active++
	}
	return active
}

// resetAfterReopen forgets requests sent on the old stream (they will never be answered) and
// makes every lease beat at once on the new one.
func (h *heartbeater) resetAfterReopen(now time.Time, gen int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gen = gen
	for _, l := range h.leases {
		l.outstanding = nil
		l.nextBeat = now
	}
}

// stalled reports a stream that takes requests but has not answered one for two beat intervals
// (at least a second, so a slow but healthy server under load is not abandoned): reopening it
// is the only hope of keeping the leases. It also resynchronises the send-time queues: the
// server sends no reply when its database cannot answer a heartbeat, and such an unanswered
// request would otherwise stay at the head of its queue, dating every later ALIVE too early.
func (h *heartbeater) stalled(now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, l := range h.leases {
		if !l.lost && len(l.outstanding) > 0 && now.Sub(l.outstanding[0]) > max(2*l.interval, time.Second) {
			return true
		}
	}
	return false
}

// due returns the heartbeats to send now and schedules the next ones.
func (h *heartbeater) due(now time.Time) []*sentinelv1.HeartbeatRequest {
	h.mu.Lock()
	defer h.mu.Unlock()
	var reqs []*sentinelv1.HeartbeatRequest
	for _, l := range h.leases {
		if l.lost || now.Before(l.nextBeat) {
			continue
		}
		l.nextBeat = now.Add(l.interval)
		l.outstanding = append(l.outstanding, now)
		reqs = append(reqs, &sentinelv1.HeartbeatRequest{Namespace: l.id.namespace, Key: l.id.key, Token: l.id.token})
	}
	return reqs
}

// nextWake is how long run may sleep before a beat or a deadline is due.
func (h *heartbeater) nextWake(now time.Time) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	wait := time.Hour
	for _, l := range h.leases {
		if l.lost {
			continue
		}
		wait = min(wait, l.nextBeat.Sub(now), l.deadline.Sub(now))
	}
	return max(wait, 0)
}
