/** Leases: the shared heartbeat stream, lease loss, local deadlines and fencing. */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { FencedError, LeaseLostError, type OnceResult } from "../src/index.js";
import { aborted, client, closeAll, deferred, sleep, stallHeartbeats, uniqueNamespace } from "./harness.js";

after(closeAll);

test("all leases of a client share one heartbeat stream and stay alive past their ttl", async () => {
  const ns = uniqueNamespace();
  let heartbeatCalls = 0;
  const count: Interceptor = (next) => (req) => {
    if (req.method.name === "Heartbeat") heartbeatCalls++;
    return next(req);
  };
  const s = client(ns, { interceptors: [count] });
  const ttlMs = 600;
  const allRunning = deferred();
  let running = 0;
  const results = await Promise.all(
    Array.from({ length: 5 }, (_, i) =>
      s.once({
        key: `job-${i}`,
        ttlMs,
        fn: async ({ signal }) => {
          if (++running === 5) allRunning.resolve();
          await allRunning.promise;
          // Several ttl periods: only heartbeats can keep these leases.
          await sleep(ttlMs * 4);
          assert.equal(signal.aborted, false, `lease job-${i} was lost: ${String(signal.reason)}`);
          return i;
        },
      }),
    ),
  );
  results.forEach((r, i) => {
    assert.equal(r.status, "completed");
    assert.equal(r.late, false);
    assert.equal(r.response, i);
  });
  assert.equal(heartbeatCalls, 1, "one Heartbeat stream for all five leases");
  assert.equal(s.heartbeatStats().streamsOpened, 1);
  assert.equal(s.heartbeatStats().leases, 0);
});

test("a forced reconcile during fn aborts its signal within about one heartbeat interval, and its Complete is fenced", async (t) => {
  const ns = uniqueNamespace();
  const worker = client(ns);
  const operator = client(ns);
  const ttlMs = 1_500;
  const started = deferred<bigint>();
  let reason: unknown;
  let abortedAfterMs = Number.NaN;
  let reconciledAt = 0;
  const run = worker.once({
    key: "etl-batch-7",
    ttlMs,
    fn: async ({ token, signal }) => {
      started.resolve(token);
      reason = await aborted(signal, 20_000);
      abortedAfterMs = performance.now() - reconciledAt;
      return "finished anyway";
    },
  });
  const token = await started.promise;
  const resolved = await operator.resolve({
    key: "etl-batch-7",
    expectedToken: token,
    resolution: { kind: "retry" },
    force: true,
    note: "operator ends a stuck run",
  });
  reconciledAt = performance.now();
  assert.ok(resolved.token > token);
  await assert.rejects(run, (err: unknown) => {
    assert.ok(err instanceof FencedError, `expected FencedError, got ${String(err)}`);
    assert.equal(err.reason, "FENCED");
    if (err.currentToken !== undefined) assert.equal(err.currentToken, resolved.token);
    return true;
  });
  assert.ok(reason instanceof LeaseLostError);
  assert.equal(reason.reason, "FENCED");
  // One interval is ttl/3 = 500 ms; allow for a noisy machine but stay well under the ttl
  // itself, which is what a client without LOST handling would take.
  t.diagnostic(`signal aborted ${abortedAfterMs.toFixed(0)} ms after the reconcile reply (interval ${ttlMs / 3} ms)`);
  assert.ok(abortedAfterMs < ttlMs, `aborted ${abortedAfterMs.toFixed(0)} ms after the reconcile`);

  // The key was released by the reconcile: the next caller runs it again.
  const rerun = await operator.once({ key: "etl-batch-7", fn: () => "second run" });
  assert.equal(rerun.status, "completed");
  assert.equal(rerun.cached, false);
});

test("without any ALIVE, the local monotonic deadline aborts the signal", async () => {
  const ns = uniqueNamespace();
  const s = client(ns, { interceptors: [stallHeartbeats] });
  const ttlMs = 600;
  let reason: unknown;
  let elapsed = 0;
  const r = await s.once({
    key: "k",
    ttlMs,
    fn: async ({ signal }) => {
      const t0 = performance.now();
      reason = await aborted(signal, 10_000);
      elapsed = performance.now() - t0;
      return "done late";
    },
  });
  assert.ok(reason instanceof LeaseLostError);
  assert.equal(reason.reason, "LOCAL_DEADLINE");
  // The deadline counts from when the Claim was sent, so it fires no later than the ttl after
  // fn starts; the slack is only for timer latency on a loaded machine.
  assert.ok(elapsed <= ttlMs + 250, `aborted after ${elapsed.toFixed(0)} ms, past the ${ttlMs} ms lease`);
  assert.ok(elapsed >= ttlMs / 3, `aborted after only ${elapsed.toFixed(0)} ms`);
  // Nobody took over, so the token is still current and the late completion is accepted.
  assert.equal(r.status, "completed");
  assert.equal(r.response, "done late");
});

test("a stale Complete after a takeover is fenced and does not overwrite the new run", async () => {
  const ns = uniqueNamespace();
  const zombie = client(ns, { interceptors: [stallHeartbeats] });
  const other = client(ns);
  const ttlMs = 500;
  const takenOver = deferred();
  const zombieStarted = deferred();
  let zombieToken = 0n;
  const zombieRun = zombie.once({
    key: "k",
    ttlMs,
    fn: async ({ token, signal }) => {
      zombieToken = token;
      zombieStarted.resolve();
      await aborted(signal, 10_000);
      await takenOver.promise;
      return "zombie result";
    },
  });

  await zombieStarted.promise;
  let takeover: OnceResult<string> | undefined;
  for (let i = 0; i < 100 && takeover?.status !== "completed"; i++) {
    takeover = await other.once({ key: "k", ttlMs: 5_000, onLeaseExpiry: "retry", fn: () => "new result" });
    if (takeover.status === "in_progress") await sleep(100);
  }
  assert.equal(takeover?.status, "completed", "the expired lease is taken over");
  assert.ok(takeover!.token! > zombieToken);
  takenOver.resolve();

  await assert.rejects(zombieRun, (err: unknown) => {
    assert.ok(err instanceof FencedError, `expected FencedError, got ${String(err)}`);
    return true;
  });
  const replay = await other.once({ key: "k", fn: () => "must not run" });
  assert.equal(replay.response, "new result");
});

test("a broken heartbeat stream is re-opened and the lease survives", async () => {
  const ns = uniqueNamespace();
  let opened = 0;
  // The first stream fails after 300 ms as if the connection dropped; later ones are left alone.
  const breakFirst: Interceptor = (next) => async (req) => {
    if (req.method.name !== "Heartbeat" || ++opened > 1) return next(req);
    const res = await next(req);
    if (!res.stream) return res;
    const messages = res.message;
    return {
      ...res,
      message: (async function* () {
        const deadline = performance.now() + 300;
        for await (const m of messages) {
          yield m;
          if (performance.now() > deadline) break;
        }
        throw new ConnectError("connection dropped by the test", Code.Unavailable);
      })(),
    };
  };
  const s = client(ns, { interceptors: [breakFirst] });
  const ttlMs = 600;
  const r = await s.once({
    key: "k",
    ttlMs,
    fn: async ({ signal }) => {
      await sleep(ttlMs * 4);
      assert.equal(signal.aborted, false, `lease lost: ${String(signal.reason)}`);
      return "ok";
    },
  });
  assert.equal(r.status, "completed");
  assert.equal(r.late, false);
  assert.ok(s.heartbeatStats().streamsOpened >= 2, "the stream was re-opened");
});

test("heartbeats never carry a lease past its hard deadline; a late Complete with the current token is accepted", async () => {
  const ns = uniqueNamespace();
  const s = client(ns);
  const hardTtlMs = 1_200;
  let reason: unknown;
  let abortedAt = 0;
  const t0 = performance.now();
  const r = await s.once({
    key: "k",
    ttlMs: 600,
    hardTtlMs,
    fn: async ({ token, signal }) => {
      assert.equal(typeof token, "bigint");
      reason = await aborted(signal, 10_000);
      abortedAt = performance.now() - t0;
      await sleep(300); // certainly past the hard deadline now
      return "finished after the deadline";
    },
  });
  assert.ok(reason instanceof LeaseLostError);
  assert.ok(["HARD_DEADLINE", "LOCAL_DEADLINE"].includes(reason.reason), reason.reason);
  assert.ok(abortedAt <= hardTtlMs + 250, `aborted ${abortedAt.toFixed(0)} ms after the claim, past the hard deadline`);
  assert.ok(abortedAt >= 600, `aborted after ${abortedAt.toFixed(0)} ms: heartbeats should have extended the 600 ms lease`);
  assert.equal(r.status, "completed");
  assert.equal(r.late, true);
  assert.equal(r.response, "finished after the deadline");
});
