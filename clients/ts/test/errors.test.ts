/** Typed errors from google.rpc.ErrorInfo, and Claim retries with the same claim id. */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import {
  FencedError,
  FingerprintMismatchError,
  InvalidArgumentError,
  NotFoundError,
  NotReconcilableError,
} from "../src/index.js";
import { client, closeAll, uniqueNamespace } from "./harness.js";

after(closeAll);

test("a different fingerprint for the same key is refused with FingerprintMismatchError", async () => {
  const ns = uniqueNamespace();
  const s = client(ns);
  const first = await s.once({ key: "k", fingerprint: "payload-hash-1", fn: () => 1 });
  assert.equal(first.status, "completed");
  const same = await s.once({ key: "k", fingerprint: "payload-hash-1", fn: () => 2 });
  assert.equal(same.cached, true);
  await assert.rejects(s.once({ key: "k", fingerprint: "payload-hash-2", fn: () => 3 }), (err: unknown) => {
    assert.ok(err instanceof FingerprintMismatchError, String(err));
    assert.equal(err.code, Code.FailedPrecondition);
    assert.equal(err.reason, "FINGERPRINT_MISMATCH");
    return true;
  });
});

test("invalid input is refused with InvalidArgumentError and its field violations", async () => {
  const s = client("Not A Valid Namespace!");
  await assert.rejects(s.once({ key: "k", fn: () => 1 }), (err: unknown) => {
    assert.ok(err instanceof InvalidArgumentError, String(err));
    assert.ok(err.fieldViolations.some((v) => v.field.includes("namespace")), JSON.stringify(err.fieldViolations));
    return true;
  });
  const ok = client(uniqueNamespace());
  await assert.rejects(ok.once({ key: "k", ttlMs: 10, fn: () => 1 }), InvalidArgumentError);
});

test("inspecting an unknown key is NotFoundError", async () => {
  await assert.rejects(client(uniqueNamespace()).inspect("nothing-here"), NotFoundError);
});

test("a reconcile with a stale expected token is fenced; a completed record is not reconcilable", async () => {
  const ns = uniqueNamespace();
  const s = client(ns);
  const r = await s.once({
    key: "k",
    fn: () => {
      throw new Error("maybe charged");
    },
  });
  assert.ok(r.status === "uncertain");
  const winner = await r.reconcile.retry({ note: "first reconciler" });
  assert.equal(winner.state, "released");
  await assert.rejects(r.reconcile.markFailed("second reconciler"), (err: unknown) => {
    assert.ok(err instanceof FencedError, String(err));
    assert.equal(err.reason, "FENCED");
    return true;
  });

  const done = await s.once({ key: "k", fn: () => "ok" });
  assert.ok(done.status === "completed");
  await assert.rejects(
    s.resolve({ key: "k", expectedToken: done.token, resolution: { kind: "retry" } }),
    NotReconcilableError,
  );
});

test("a Claim whose reply was lost is retried with the same claim id and gets the same lease", async () => {
  const ns = uniqueNamespace();
  const claimIds: string[] = [];
  let dropped = false;
  // The first Claim reaches the server and commits, but its reply never reaches the caller.
  const loseFirstReply: Interceptor = (next) => async (req) => {
    if (req.method.name !== "Claim") return next(req);
    if (!req.stream) claimIds.push((req.message as unknown as { claimId: string }).claimId);
    const res = await next(req);
    if (!dropped) {
      dropped = true;
      throw new ConnectError("reply lost by the test", Code.Unavailable);
    }
    return res;
  };
  const s = client(ns, { interceptors: [loseFirstReply], retry: { initialMs: 20, maxMs: 50 } });
  let runs = 0;
  const r = await s.once({
    key: "k",
    fn: () => {
      runs++;
      return "ran";
    },
  });
  assert.equal(claimIds.length, 2);
  assert.equal(claimIds[0], claimIds[1], "the retry carries the same claim id");
  assert.equal(r.status, "completed", "the retry got ACQUIRED, not IN_PROGRESS against itself");
  assert.equal(runs, 1);
  const history = (await s.inspect("k")).history;
  assert.equal(history.filter((h) => h.toState === "running").length, 1, "one acquisition in the history");
});
