/**
 * Typed errors. Servers explain refusals with google.rpc.ErrorInfo in the
 * grpc-status-details-bin trailer; clients branch on its `reason`, never on message text.
 * `fromRpcError` is the one place where a transport error becomes one of these classes.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";

/** The domain Sentinel sets in every ErrorInfo. */
export const ERROR_DOMAIN = "sentinel.v1";

export interface SentinelErrorOptions {
  code: Code;
  reason?: string | undefined;
  metadata?: Record<string, string> | undefined;
  cause?: unknown;
}

/** An RPC the server (or the network) refused. `code` is the gRPC status code. */
export class SentinelError extends Error {
  override name = "SentinelError";
  readonly code: Code;
  /** ErrorInfo.reason, e.g. "FENCED"; undefined when the status carried no ErrorInfo. */
  readonly reason: string | undefined;
  /** ErrorInfo.metadata. */
  readonly metadata: Readonly<Record<string, string>>;
  /**
   * When `once` ran the work and then could not report it, the error `fn` threw (if it threw),
   * so that it is not lost behind the reporting error.
   */
  declare workError?: unknown;

  constructor(message: string, options: SentinelErrorOptions) {
    super(message, { cause: options.cause });
    this.code = options.code;
    this.reason = options.reason;
    this.metadata = options.metadata ?? {};
  }

  /** The gRPC status name, e.g. "FAILED_PRECONDITION". */
  get codeName(): string {
    return codeName(this.code);
  }
}

/** FAILED_PRECONDITION/FENCED: the token is no longer the execution's current token. */
export class FencedError extends SentinelError {
  override name = "FencedError";
  /** The execution's current token, when the server said. */
  get currentToken(): bigint | undefined {
    const raw = this.metadata["current_token"];
    return raw !== undefined && /^\d+$/.test(raw) ? BigInt(raw) : undefined;
  }
  /** The execution's current state as the server named it, when it said. */
  get state(): string | undefined {
    return this.metadata["state"];
  }
}

/** FAILED_PRECONDITION/FINGERPRINT_MISMATCH: the key was first claimed with another fingerprint. */
export class FingerprintMismatchError extends SentinelError {
  override name = "FingerprintMismatchError";
}

/** FAILED_PRECONDITION/ALREADY_RESOLVED: a different outcome was already stored for this token. */
export class AlreadyResolvedError extends SentinelError {
  override name = "AlreadyResolvedError";
}

/** FAILED_PRECONDITION/NOT_RECONCILABLE: the execution's state does not allow this reconcile. */
export class NotReconcilableError extends SentinelError {
  override name = "NotReconcilableError";
}

/** UNAVAILABLE: the server or its database could not be reached; safe to retry. */
export class UnavailableError extends SentinelError {
  override name = "UnavailableError";
}

/** One BadRequest field violation. */
export interface FieldViolation {
  field: string;
  description: string;
}

/** INVALID_ARGUMENT, with the server's BadRequest field violations. Nothing was written. */
export class InvalidArgumentError extends SentinelError {
  override name = "InvalidArgumentError";
  readonly fieldViolations: readonly FieldViolation[];
  constructor(message: string, options: SentinelErrorOptions & { fieldViolations?: FieldViolation[] }) {
    super(message, options);
    this.fieldViolations = options.fieldViolations ?? [];
  }
}

/** NOT_FOUND: no execution exists for the namespace and key. */
export class NotFoundError extends SentinelError {
  override name = "NotFoundError";
}

/** RESOURCE_EXHAUSTED: e.g. a response over the server's size limit. */
export class ResourceExhaustedError extends SentinelError {
  override name = "ResourceExhaustedError";
}

/** Why a lease was lost: a server LostReason, or a local decision of this client. */
export type LeaseLostReason =
  | "FENCED"
  | "LEASE_EXPIRED"
  | "HARD_DEADLINE"
  | "RESOLVED"
  | "NOT_FOUND"
  | "UNSPECIFIED"
  /** No ALIVE arrived before the local monotonic deadline. */
  | "LOCAL_DEADLINE"
  /** The client was closed while the work ran. */
  | "CLIENT_CLOSED";

/** The reason of the AbortSignal handed to `fn` when its lease is gone. */
export class LeaseLostError extends Error {
  override name = "LeaseLostError";
  constructor(
    readonly reason: LeaseLostReason,
    readonly detail: string,
  ) {
    super(detail === "" ? `lease lost: ${reason}` : `lease lost: ${reason}: ${detail}`);
  }
}

/**
 * Marks a failure after which nothing happened, so the key is released and the next caller
 * runs the work again (FAILURE{NONE, retryable}). With `retryable: false` the failure is stored
 * and replayed instead (FAILED).
 */
export class NothingHappenedError extends Error {
  override name = "NothingHappenedError";
  readonly retryable: boolean;
  constructor(message: string, options?: { cause?: unknown; retryable?: boolean }) {
    super(message, { cause: options?.cause });
    this.retryable = options?.retryable ?? true;
  }
}

/**
 * Wraps an error to say that the attempt had no side effects: `throw nothingHappened(err)`.
 * Any other error thrown by `fn` is reported as FAILURE{POSSIBLE}, which makes the execution
 * UNCERTAIN, because the client cannot know how far the work went.
 */
export function nothingHappened(err: unknown, options?: { retryable?: boolean }): NothingHappenedError {
  if (err instanceof NothingHappenedError && options?.retryable === undefined) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new NothingHappenedError(message, { cause: err, retryable: options?.retryable ?? true });
}

/** A definite failure stored by a worker or a reconciler, replayed to later callers. */
export class StoredFailureError extends Error {
  override name = "StoredFailureError";
}

/** Converts any error from a Connect call into the matching typed error. */
export function fromRpcError(err: unknown): SentinelError {
  if (err instanceof SentinelError) return err;
  const ce = ConnectError.from(err);
  let reason: string | undefined;
  let metadata: Record<string, string> | undefined;
  let fieldViolations: FieldViolation[] | undefined;
  try {
    const info = ce.findDetails(ErrorInfoSchema)[0];
    if (info !== undefined) {
      reason = info.reason;
      metadata = { ...info.metadata };
    }
    const bad = ce.findDetails(BadRequestSchema)[0];
    if (bad !== undefined) {
      fieldViolations = bad.fieldViolations.map((v) => ({ field: v.field, description: v.description }));
    }
  } catch {
    // Undecodable details: keep the status code and message, which still say what happened.
  }
  const options = { code: ce.code, reason, metadata, cause: err };
  const message = `${codeName(ce.code)}${reason ? `/${reason}` : ""}: ${ce.rawMessage}`;
  switch (ce.code) {
    case Code.FailedPrecondition:
      switch (reason) {
        case "FENCED":
          return new FencedError(message, options);
        case "FINGERPRINT_MISMATCH":
          return new FingerprintMismatchError(message, options);
        case "ALREADY_RESOLVED":
          return new AlreadyResolvedError(message, options);
        case "NOT_RECONCILABLE":
          return new NotReconcilableError(message, options);
        default:
          return new SentinelError(message, options);
      }
    case Code.Unavailable:
      return new UnavailableError(message, options);
    case Code.InvalidArgument:
      return new InvalidArgumentError(message, { ...options, fieldViolations });
    case Code.NotFound:
      return new NotFoundError(message, options);
    case Code.ResourceExhausted:
      return new ResourceExhaustedError(message, options);
    default:
      return new SentinelError(message, options);
  }
}

function codeName(code: Code): string {
  const name = Code[code] as string | undefined;
  return name === undefined ? `CODE_${code}` : name.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}
