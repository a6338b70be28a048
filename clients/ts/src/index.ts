/**
 * @sentinel-dev/client: run keyed operations once, with fencing tokens, leases kept alive over
 * one shared heartbeat stream, and outcomes replayed byte-for-byte.
 */
export {
  createSentinel,
  Sentinel,
  type InspectResult,
  type LeaseContext,
  type ListOptions,
  type OnceOptions,
  type OnceResult,
  type OnceStatus,
  type OnLeaseExpiry,
  type Resolution,
  type ResolveRequest,
  type ResolveResult,
  type RetryOptions,
  type SentinelOptions,
} from "./client.js";
export { CodecError, jsonCodec, rawCodec, type Codec, type JsonValue } from "./codec.js";
export {
  AlreadyResolvedError,
  ERROR_DOMAIN,
  FencedError,
  FingerprintMismatchError,
  InvalidArgumentError,
  LeaseLostError,
  NotFoundError,
  NothingHappenedError,
  NotReconcilableError,
  nothingHappened,
  ResourceExhaustedError,
  SentinelError,
  StoredFailureError,
  UnavailableError,
  type FieldViolation,
  type LeaseLostReason,
} from "./errors.js";
export type { HeartbeatStats } from "./heartbeat.js";
export type { ReconcileHandle, ResolveOptions } from "./reconcile.js";
export type { Execution, ExecutionState, HistoryEvent, UncertainReason } from "./types.js";
export { Code } from "@connectrpc/connect";
