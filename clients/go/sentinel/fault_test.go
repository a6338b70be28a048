package sentinel_test

// Faults between the client and the server: each test runs a server process of its own on
// the shared database (SENTINEL_BIN, SENTINEL_DATABASE_URL from scripts/with-server.sh) and
// kills, restarts or freezes it while a lease is held.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sentinel-dev/sentinel/clients/go/sentinel"
)

type serverProc struct {
	cmd  *exec.Cmd
	addr string
	done chan struct{}
}

// startServer runs `sentinel serve` on listen (127.0.0.1:0 for any port) and waits until it
// accepts connections. The process is killed when the test ends.
func startServer(t *testing.T, listen string) *serverProc {
	t.Helper()
	bin, db := os.Getenv("SENTINEL_BIN"), os.Getenv("SENTINEL_DATABASE_URL")
	if bin == "" || db == "" {
		t.Fatal("SENTINEL_BIN and SENTINEL_DATABASE_URL must be set (scripts/with-server.sh sets them)")
	}
	cmd := exec.Command(bin, "serve", "--database-url", db, "--listen", listen)
	cmd.Stderr = nil // its log is not needed; a start failure shows as a timeout below
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	s := &serverProc{cmd: cmd, done: make(chan struct{})}
	t.Cleanup(s.kill)
	addrs := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "sentinel listening on "); ok {
				addrs <- a
			}
		}
	}()
	go func() { _ = cmd.Wait(); close(s.done) }()
	select {
	case s.addr = <-addrs:
	case <-s.done:
		t.Fatalf("sentinel serve --listen %s exited before listening", listen)
	case <-time.After(30 * time.Second):
		t.Fatalf("sentinel serve --listen %s did not start within 30 s", listen)
	}
	return s
}

// kill ends the process abruptly, as a crash would: streams break without a goodbye.
func (s *serverProc) kill() {
	if s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(syscall.SIGCONT) // a frozen process must be able to die
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

func dialTo(t *testing.T, addr string) *sentinel.Client {
	t.Helper()
	c, err := sentinel.Dial(addr, sentinel.WithNamespace(fmt.Sprintf("%s.%d", runID, nsSeq.Add(1))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestHeartbeatStreamReopensAfterServerCrash(t *testing.T) {
	srv := startServer(t, "127.0.0.1:0")
	c := dialTo(t, srv.addr)
	ctx := ctxFor(t)
	const ttl = 4 * time.Second
	started := make(chan struct{})
	var cause error
	type outcome struct {
		res *sentinel.Result
		err error
	}
	finished := make(chan outcome, 1)
	go func() {
		res, err := c.Once(ctx, "survives-restart", func(ctx context.Context, _ sentinel.Lease) ([]byte, error) {
			close(started)
			// Outlive the lease by far: only heartbeats on the reopened stream can keep it.
			select {
			case <-ctx.Done():
				cause = context.Cause(ctx)
				return nil, sentinel.NothingHappened(cause)
			case <-time.After(2 * ttl):
				return []byte("ok"), nil
			}
		}, sentinel.LeaseTTL(ttl))
		finished <- outcome{res, err}
	}()
	<-started
	time.Sleep(ttl / 2) // a beat or two on the first stream
	srv.kill()
	time.Sleep(200 * time.Millisecond) // the client sees the stream break and retries against nothing
	startServer(t, srv.addr)
	got := <-finished
	if cause != nil {
		t.Fatalf("the lease was lost across the restart: %v", cause)
	}
	if got.err != nil || got.res.Outcome != sentinel.Completed || got.res.Late {
		t.Fatalf("after the restart: %+v, %v", got.res, got.err)
	}
}

func TestClaimIsRetriedWhileTheServerIsDown(t *testing.T) {
	srv := startServer(t, "127.0.0.1:0")
	c := dialTo(t, srv.addr)
	ctx := ctxFor(t)
	// Connect once, so the outage below is a lost server, not a never-seen one.
	if _, err := c.Once(ctx, "warm-up", func(context.Context, sentinel.Lease) ([]byte, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	srv.kill()
	restarted := make(chan struct{})
	go func() {
		time.Sleep(time.Second)
		startServer(t, srv.addr)
		close(restarted)
	}()
	res, err := c.Once(ctx, "claimed-after-outage", func(context.Context, sentinel.Lease) ([]byte, error) {
		return []byte("ran"), nil
	})
	<-restarted
	if err != nil || res.Outcome != sentinel.Completed || string(res.Response) != "ran" {
		t.Fatalf("claim across the outage: %+v, %v", res, err)
	}
}

func TestFrozenServerCancelsTheLeaseByTheLocalDeadline(t *testing.T) {
	srv := startServer(t, "127.0.0.1:0")
	c := dialTo(t, srv.addr)
	ctx := ctxFor(t)
	const ttl = time.Second
	var (
		cause    error
		frozenAt time.Time
		lostAt   time.Time
	)
	res, err := c.Once(ctx, "frozen", func(ctx context.Context, _ sentinel.Lease) ([]byte, error) {
		time.Sleep(ttl / 2)
		// The server stops answering but the connection stays up: a stalled stream.
		frozenAt = time.Now()
		if err := srv.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Errorf("SIGSTOP: %v", err)
		}
		select {
		case <-ctx.Done():
			lostAt, cause = time.Now(), context.Cause(ctx)
		case <-time.After(20 * time.Second):
		}
		if err := srv.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Errorf("SIGCONT: %v", err)
		}
		// The local deadline comes before the server's, and heartbeats queued during the freeze
		// may still extend the lease by a ttl once the server runs again: outwait both, so that
		// the report below is surely late.
		time.Sleep(2 * ttl)
		return []byte("finished after the freeze"), nil
	}, sentinel.LeaseTTL(ttl))
	var lost *sentinel.LeaseLostError
	if !errors.As(cause, &lost) || !lost.Local {
		t.Fatalf("cause %v, want a local deadline expiry", cause)
	}
	// The last ALIVE was at most one interval before the freeze, so the lease ends within a
	// ttl of it; the bound is generous for a busy machine.
	if lag := lostAt.Sub(frozenAt); lag > 3*ttl {
		t.Errorf("cancelled %v after the server froze, want within about %v", lag, ttl)
	}
	// Nobody took over, so the token is still current and the late result is kept.
	if err != nil || res.Outcome != sentinel.Completed || !res.Late {
		t.Fatalf("after the freeze: %+v, %v", res, err)
	}
}
