/** The `once` contract against the real server: who runs, what is replayed, what is released. */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import {
  CodecError,
  nothingHappened,
  NothingHappenedError,
  rawCodec,
  StoredFailureError,
  type OnceResult,
} from "../src/index.js";
import { client, closeAll, sleep, uniqueNamespace } from "./harness.js";

after(closeAll);

test("one execution among 20 concurrent callers; the others see it alive or replay it", async () => {
  const ns = uniqueNamespace();
  const clients = [client(ns), client(ns), client(ns), client(ns)];
  let runs = 0;
  const calls: Promise<OnceResult<{ order: number }>>[] = [];
  for (let i = 0; i < 20; i++) {
    calls.push(
      clients[i % clients.length]!.once({
        key: "order-42",
        ttlMs: 5_000,
        fn: async () => {
          runs++;
          await sleep(300);
          return { order: 42 };
        },
      }),
    );
  }
  const results = await Promise.all(calls);
  assert.equal(runs, 1, "fn must run exactly once");
  const fresh = results.filter((r) => r.status === "completed" && !r.cached);
  assert.equal(fresh.length, 1, "exactly one caller ran the work");
  for (const r of results) {
    if (r.status === "in_progress") {
      assert.equal(r.executionAlive, true);
      assert.equal(r.response, undefined);
    } else {
      assert.equal(r.status, "completed", `unexpected outcome ${r.status}`);
      assert.deepEqual(r.response, { order: 42 });
    }
  }
  // Everyone who asks afterwards gets the replay, and nobody runs it again.
  const again = await clients[1]!.once({ key: "order-42", fn: () => ({ order: -1 }) });
  assert.equal(again.status, "completed");
  assert.equal(again.cached, true);
  assert.deepEqual(again.response, { order: 42 });
  assert.equal(runs, 1);
});

test("replays are byte-identical to what the first caller stored, and marked cached", async () => {
  const ns = uniqueNamespace();
  const value = { z: 1, a: [3, 2, 1], "10": "numeric keys stay where JS puts them", s: "caf\u00e9 \u{1F600}", f: 0.1 };
  const first = await client(ns).once({ key: "k", fn: () => value });
  assert.equal(first.status, "completed");
  assert.equal(first.cached, false);
  assert.deepEqual(first.response, value);

  const second = await client(ns).once<typeof value>({ key: "k", fn: () => assert.fail("must not run") });
  assert.equal(second.status, "completed");
  assert.equal(second.cached, true);
  assert.deepEqual(second.responseBytes, first.responseBytes);
  assert.deepEqual(second.response, value);
  assert.equal(second.token, first.token);

  const raw = new Uint8Array([0, 1, 2, 254, 255]);
  const r1 = await client(ns).once({ key: "raw", codec: rawCodec, fn: () => raw });
  const r2 = await client(ns).once({ key: "raw", codec: rawCodec, fn: () => new Uint8Array([9]) });
  assert.equal(r2.cached, true);
  assert.deepEqual(r2.response, raw);
  assert.deepEqual(r2.responseBytes, r1.responseBytes);

  const inspected = await client(ns).inspect("raw");
  assert.equal(inspected.execution.state, "completed");
  assert.deepEqual(inspected.execution.response, raw);
});

test("nothingHappened releases the key: the next caller runs the work with a newer token", async () => {
  const ns = uniqueNamespace();
  const s = client(ns);
  const declined = new Error("card declined before charging");
  const first = await s.once<string>({
    key: "pay",
    fn: () => {
      throw nothingHappened(declined);
    },
  });
  assert.equal(first.status, "released");
  assert.ok(first.error instanceof NothingHappenedError);
  assert.equal((first.error as NothingHappenedError).cause, declined);
  assert.equal(first.uncertain, false);

  let attempt = 0;
  const second = await s.once({
    key: "pay",
    fn: (lease) => {
      attempt = lease.attempt;
      return "charged";
    },
  });
  assert.equal(second.status, "completed");
  assert.equal(second.cached, false);
  assert.equal(second.response, "charged");
  assert.equal(attempt, 2);
  assert.ok(second.token > first.token, "a released key is re-claimed with a larger token");
});

test("nothingHappened with retryable false stores a definite failure that is replayed", async () => {
  const ns = uniqueNamespace();
  const s = client(ns);
  const first = await s.once({
    key: "k",
    fn: () => {
      throw nothingHappened(new Error("invalid card number"), { retryable: false });
    },
  });
  assert.equal(first.status, "failed");
  assert.equal(first.cached, false);
  const replay = await s.once({ key: "k", fn: () => assert.fail("must not run") });
  assert.equal(replay.status, "failed");
  assert.equal(replay.cached, true);
  assert.ok(replay.error instanceof StoredFailureError);
  assert.match((replay.error as Error).message, /invalid card number/);
});

test("any other error makes the execution uncertain; the reconcile handle resolves it", async () => {
  const ns = uniqueNamespace();
  const s = client(ns);
  const boom = new Error("connection reset after sending the charge");
  const first = await s.once({
    key: "charge",
    fn: (): { charged: boolean } => {
      throw boom;
    },
  });
  assert.equal(first.status, "uncertain");
  assert.equal(first.uncertain, true);
  assert.equal(first.uncertainReason, "REPORTED");
  assert.equal(first.error, boom);

  const replay = await s.once<{ charged: boolean }>({ key: "charge", fn: () => assert.fail("an uncertain execution is never re-run silently") });
  assert.equal(replay.status, "uncertain");
  assert.equal(replay.uncertainReason, "REPORTED");
  assert.match(String((replay.error as Error).message), /connection reset/);

  const listed: string[] = [];
  for await (const e of s.listUncertain()) listed.push(e.key);
  assert.deepEqual(listed, ["charge"]);

  assert.ok(replay.status === "uncertain");
  const resolved = await replay.reconcile.markCompleted({ charged: true }, { operator: "test", note: "checked the PSP" });
  assert.equal(resolved.state, "completed");
  assert.ok(resolved.token > replay.token, "a reconcile bumps the token");

  const after = await s.once({ key: "charge", fn: () => assert.fail("must not run") });
  assert.equal(after.status, "completed");
  assert.equal(after.cached, true);
  assert.deepEqual(after.response, { charged: true });
  const history = (await s.inspect("charge")).history;
  assert.ok(history.length >= 3, "claim, report and reconcile are all in the history");
  assert.equal(history[0]!.toState, "completed");
});

test("a result the codec cannot store is reported as possible side effects, not lost", async () => {
  const ns = uniqueNamespace();
  const s = client(ns);
  const r = await s.once<unknown>({ key: "k", fn: () => ({ amount: 10n }) });
  assert.equal(r.status, "uncertain");
  assert.ok(r.error instanceof CodecError);
  const e = (await s.inspect("k")).execution;
  assert.equal(e.state, "uncertain");
  assert.equal(e.uncertainReason, "REPORTED");
  assert.match(e.error, /bigint/);
});
