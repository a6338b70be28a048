/**
 * Test harness: every test talks to the real server named by SENTINEL_ADDR (started by
 * scripts/with-server.sh), in a namespace of its own so that suites can share one server.
 */
import { randomBytes } from "node:crypto";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { createSentinel, type Sentinel, type SentinelOptions } from "../src/index.js";

export function serverAddr(): string {
  const addr = process.env["SENTINEL_ADDR"];
  if (addr === undefined || addr === "") {
    throw new Error(
      "SENTINEL_ADDR is not set: run the tests against a real server, e.g. `scripts/with-server.sh clients/ts/test.sh` from the repository root",
    );
  }
  return addr;
}

export function uniqueNamespace(prefix = "ts"): string {
  return `${prefix}-${Date.now().toString(36)}-${randomBytes(4).toString("hex")}`;
}

/** Clients created here are closed by `closeAll` (call it in an `after` hook). */
const open: Sentinel[] = [];

export function client(namespace: string, options?: Partial<SentinelOptions>): Sentinel {
  const s = createSentinel({ target: serverAddr(), namespace, ...options });
  open.push(s);
  return s;
}

export async function closeAll(): Promise<void> {
  await Promise.all(open.splice(0).map((s) => s.close()));
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Resolves when `signal` aborts, or rejects after `ms` so a broken test cannot hang. */
export function aborted(signal: AbortSignal, ms: number): Promise<unknown> {
  if (signal.aborted) return Promise.resolve(signal.reason);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`signal not aborted within ${ms} ms`)), ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve(signal.reason);
    });
  });
}

/** A promise with its resolve function, for handing control between a worker and a test. */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/**
 * A client-side fault: every Heartbeat stream this client opens gets no reply (it hangs until
 * cancelled), as a stalled proxy or a half-dead connection would behave. The server is real;
 * only this client's view of it is cut.
 */
export const stallHeartbeats: Interceptor = (next) => async (req) => {
  if (req.method.name !== "Heartbeat") return next(req);
  return new Promise((_, reject) => {
    const fail = () => reject(new ConnectError("heartbeat stalled by the test", Code.Canceled));
    if (req.signal.aborted) fail();
    req.signal.addEventListener("abort", fail);
  });
};
