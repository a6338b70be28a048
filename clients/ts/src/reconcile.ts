/**
 * Reconcile handles: a result that needs a human or a reconciler carries one, bound to the
 * key and to the token the caller saw, so that resolving it is a compare-and-set: if anything
 * changed the execution since, the server refuses with FencedError instead of overwriting.
 */
import type { Codec } from "./codec.js";
import type { ExecutionState } from "./types.js";

export interface ResolveOptions {
  /** Who resolved it, for the history; defaults to the client's holder. */
  operator?: string;
  /** Why, for the history. */
  note?: string;
  /** Also end a live RUNNING execution; its holder is fenced. */
  force?: boolean;
}

export interface ReconcileHandle<T> {
  readonly key: string;
  /** The token the resolution is conditioned on. */
  readonly expectedToken: bigint;
  /** Stores `value` (encoded with the call's codec) as if the work had completed. */
  markCompleted(value: T, options?: ResolveOptions): Promise<{ state: ExecutionState; token: bigint }>;
  /** Releases the key: the next `once` runs the work again. */
  retry(options?: ResolveOptions): Promise<{ state: ExecutionState; token: bigint }>;
  /** Stores a definite failure, replayed to later callers. */
  markFailed(message: string, options?: ResolveOptions): Promise<{ state: ExecutionState; token: bigint }>;
}

type ResolveFn = (req: {
  key: string;
  expectedToken: bigint;
  resolution: { kind: "mark_completed"; response: Uint8Array } | { kind: "retry" } | { kind: "mark_failed"; message: string };
  operator?: string;
  note?: string;
  force?: boolean;
}) => Promise<{ state: ExecutionState; token: bigint }>;

export class Reconciler {
  constructor(private readonly resolve: ResolveFn) {}

  handle<T>(key: string, expectedToken: bigint, codec: Codec<T>): ReconcileHandle<T> {
    const resolve = this.resolve;
    return {
      key,
      expectedToken,
      markCompleted: (value, options) =>
        resolve({ key, expectedToken, resolution: { kind: "mark_completed", response: codec.encode(value) }, ...options }),
      retry: (options) => resolve({ key, expectedToken, resolution: { kind: "retry" }, ...options }),
      markFailed: (message, options) =>
        resolve({ key, expectedToken, resolution: { kind: "mark_failed", message }, ...options }),
    };
  }
}
