/**
 * The Sentinel client: `createSentinel` and `Sentinel.once`.
 *
 * The client decides nothing about the execution: the server's reply to Claim says whether to
 * run, and the server's reply to Complete says what the execution became. The client's own
 * decisions are limited to what only it can know: whether `fn` returned, threw, or threw
 * "nothing happened", and whether its lease is still provably alive.
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs, durationMs } from "@bufbuild/protobuf/wkt";
import { Code, createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { randomUUID } from "node:crypto";
import { hostname } from "node:os";
import { backoffDelay, sleep, type BackoffOptions } from "./backoff.js";
import { CodecError, jsonCodec, type Codec } from "./codec.js";
import {
  fromRpcError,
  NothingHappenedError,
  SentinelError,
  StoredFailureError,
  UnavailableError,
} from "./errors.js";
import {
  ClaimRequestSchema,
  CompleteRequestSchema,
  ExecutionState as PbExecutionState,
  LeaseExpiryPolicy,
  type ReconcileRequestSchema,
  SentinelService,
  SideEffects,
  type ClaimResponse,
  type CompleteResponse,
} from "./gen/sentinel/v1/sentinel_pb.js";
import { HeartbeatMux, type HeartbeatStats } from "./heartbeat.js";
import { Reconciler, type ReconcileHandle } from "./reconcile.js";
import {
  dateFromPb,
  stateFromPb,
  executionFromPb,
  historyEventFromPb,
  stateToPb,
  uncertainReasonFromPb,
  type Execution,
  type ExecutionState,
  type HistoryEvent,
  type UncertainReason,
} from "./types.js";

const DEFAULT_TTL_MS = 30_000;
/** The server's limit on failure messages is 4 KiB; stay under it rather than be refused. */
const MAX_MESSAGE_BYTES = 4_000;

export interface SentinelOptions {
  /** The server: "host:port" (plaintext HTTP/2) or a URL, "http://host:port" or "https://host:port". */
  target: string;
  /** The namespace of every key this client touches. */
  namespace: string;
  /** Names this worker in the server's records; defaults to "hostname:pid". */
  holder?: string;
  /** Interceptors for every call (auth headers, tracing). Ignored when `transport` is given. */
  interceptors?: Interceptor[];
  /** A ready Connect transport, replacing the one built from `target`. `close()` leaves it open. */
  transport?: Transport;
  /** Retries of Claim and Complete on UNAVAILABLE; the same claim id is reused every time. */
  retry?: Partial<RetryOptions>;
}

export interface RetryOptions extends BackoffOptions {
  /** Total tries, the first included. */
  attempts: number;
}

const DEFAULT_RETRY: RetryOptions = { attempts: 8, initialMs: 100, maxMs: 3_000 };

/** What `fn` receives. */
export interface LeaseContext {
  /** The fencing token: pass it to downstream writes so that they can reject a stale worker. */
  readonly token: bigint;
  /** Aborted when the lease is lost (server said LOST, or the local deadline passed without ALIVE). */
  readonly signal: AbortSignal;
  readonly namespace: string;
  readonly key: string;
  /** 1 for the first acquisition of this execution, then 2, 3, ... */
  readonly attempt: number;
}

export type OnLeaseExpiry = "uncertain" | "retry";

export interface OnceOptions<T> {
  key: string;
  /** The work. Its return value is encoded by `codec` and replayed to every later caller. */
  fn: (lease: LeaseContext) => T | Promise<T>;
  /** Lease time-to-live without a heartbeat (default 30 s; the server allows 100 ms..1 h). */
  ttlMs?: number;
  /** Cap on the whole execution from the claim; heartbeats never extend past it (server default 1 h). */
  hardTtlMs?: number;
  /** Identifies the request payload; the same key with another fingerprint is refused. Strings are UTF-8. */
  fingerprint?: Uint8Array | string;
  /** How long the outcome is kept and replayed, in milliseconds (server default 24 h). */
  retentionMs?: number;
  /** What this claim does with an execution whose lease expired: report it (default) or take it over. */
  onLeaseExpiry?: OnLeaseExpiry;
  /** Encodes the result; defaults to a strict JSON codec. */
  codec?: Codec<T>;
  /** Overrides the client's holder for this call. */
  holder?: string;
}

/** The five ways a `once` call can end; each names the state the execution is in afterwards. */
export type OnceStatus = "completed" | "failed" | "released" | "in_progress" | "uncertain";

interface ResultFields<T> {
  key: string;
  /** The fencing token of the outcome (undefined for in_progress, whose token is not reported). */
  token: bigint | undefined;
  /** The decoded response when status is "completed". */
  response: T | undefined;
  /** The exact stored bytes when status is "completed". */
  responseBytes: Uint8Array | undefined;
  /** True when the outcome was replayed from an earlier execution rather than produced by this call. */
  cached: boolean;
  /** True when another worker holds a live lease right now. */
  executionAlive: boolean;
  /** True when the work may have partly happened and needs reconciliation. */
  uncertain: boolean;
  /** Why the execution is uncertain. */
  uncertainReason: UncertainReason | undefined;
  /** Resolves an uncertain or failed execution (compare-and-set on `token`). */
  reconcile: ReconcileHandle<T> | undefined;
  /** The error `fn` threw (or the stored failure, when replayed). */
  error: unknown;
  /** The attempt number, when the server reported it. */
  attempt: number | undefined;
  /** True when this call completed after its lease had expired and the server still accepted it. */
  late: boolean;
  /** For in_progress: who holds the lease and until when. */
  holder: string | undefined;
  leaseExpiresAt: Date | undefined;
}

export type OnceResult<T> =
  | (ResultFields<T> & { status: "completed"; response: T; responseBytes: Uint8Array; token: bigint })
  | (ResultFields<T> & { status: "failed"; error: unknown; token: bigint; reconcile: ReconcileHandle<T> })
  | (ResultFields<T> & { status: "released"; error: unknown; token: bigint })
  | (ResultFields<T> & { status: "in_progress"; executionAlive: true })
  | (ResultFields<T> & { status: "uncertain"; uncertain: true; token: bigint; reconcile: ReconcileHandle<T> });

export interface InspectResult {
  execution: Execution;
  history: HistoryEvent[];
}

export interface ListOptions {
  /** Only executions in this state; all states when omitted. */
  state?: ExecutionState;
  /** Executions fetched per page (server default 100, at most 1000). */
  pageSize?: number;
}

export type Resolution =
  | { kind: "mark_completed"; response: Uint8Array }
  | { kind: "retry" }
  | { kind: "mark_failed"; message: string };

export interface ResolveRequest {
  key: string;
  /** Must be the execution's current token, or the call is refused with FencedError. */
  expectedToken: bigint;
  resolution: Resolution;
  /** Who resolved it, for the history; defaults to the client's holder. */
  operator?: string;
  note?: string;
  /** Also end a live RUNNING execution; its holder is fenced. */
  force?: boolean;
}

export interface ResolveResult {
  state: ExecutionState;
  /** The new current token. */
  token: bigint;
}

/** Creates a client. Connections are made lazily; call `close()` when done. */
export function createSentinel(options: SentinelOptions): Sentinel {
  return new Sentinel(options);
}

export class Sentinel {
  readonly namespace: string;
  readonly holder: string;
  private readonly rpc: Client<typeof SentinelService>;
  private readonly heartbeats: HeartbeatMux;
  private readonly session: Http2SessionManager | undefined;
  private readonly retry: RetryOptions;
  private readonly reconciler: Reconciler;
  private closed = false;

  constructor(options: SentinelOptions) {
    if (typeof options.namespace !== "string" || options.namespace === "") {
      throw new TypeError("createSentinel: namespace must be a non-empty string");
    }
    this.namespace = options.namespace;
    this.holder = options.holder ?? `${hostname()}:${process.pid}`;
    this.retry = { ...DEFAULT_RETRY, ...options.retry };
    if (!Number.isInteger(this.retry.attempts) || this.retry.attempts < 1) {
      throw new TypeError("createSentinel: retry.attempts must be an integer >= 1");
    }
    let transport = options.transport;
    if (transport === undefined) {
      if (typeof options.target !== "string" || options.target === "") {
        throw new TypeError('createSentinel: target must be "host:port" or a URL');
      }
      const baseUrl = /^https?:\/\//.test(options.target) ? options.target : `http://${options.target}`;
      // Our own session manager, so that close() can end the connection; pings detect a dead
      // peer on an otherwise quiet connection.
      this.session = new Http2SessionManager(baseUrl, { pingIntervalMs: 10_000, pingTimeoutMs: 5_000 });
      transport = createGrpcTransport({
        baseUrl,
        sessionManager: this.session,
        interceptors: options.interceptors ?? [],
      });
    }
    this.rpc = createClient(SentinelService, transport);
    this.heartbeats = new HeartbeatMux(this.rpc);
    this.reconciler = new Reconciler((req) => this.resolve(req));
  }

  /**
   * Runs `fn` at most once for `key` across every caller of the namespace, and tells how the
   * execution stands. Resolves for every outcome the server reports; rejects with a typed
   * error when the server refuses the call (e.g. FingerprintMismatchError, or FencedError when
   * the work ran but its lease had been taken away) or stays unreachable.
   */
  async once<T>(options: OnceOptions<T>): Promise<OnceResult<T>> {
    this.assertOpen();
    const { key, fn } = options;
    if (typeof key !== "string" || key === "") throw new TypeError("once: key must be a non-empty string");
    if (typeof fn !== "function") throw new TypeError("once: fn must be a function");
    const ttlMs = positiveMs("ttlMs", options.ttlMs) ?? DEFAULT_TTL_MS;
    const hardTtlMs = positiveMs("hardTtlMs", options.hardTtlMs);
    const retentionMs = positiveMs("retentionMs", options.retentionMs);
    const codec = options.codec ?? (jsonCodec() as Codec<T>);
    const fingerprint =
      typeof options.fingerprint === "string" ? new TextEncoder().encode(options.fingerprint) : options.fingerprint;
    const policy =
      options.onLeaseExpiry === undefined
        ? LeaseExpiryPolicy.UNSPECIFIED
        : options.onLeaseExpiry === "retry"
          ? LeaseExpiryPolicy.RETRY
          : options.onLeaseExpiry === "uncertain"
            ? LeaseExpiryPolicy.UNCERTAIN
            : invalid(`once: onLeaseExpiry must be "uncertain" or "retry", got ${String(options.onLeaseExpiry)}`);

    const request = create(ClaimRequestSchema, {
      namespace: this.namespace,
      key,
      leaseTtl: durationFromMs(ttlMs),
      hardTtl: hardTtlMs === undefined ? undefined : durationFromMs(hardTtlMs),
      fingerprint: fingerprint ?? new Uint8Array(0),
      holder: options.holder ?? this.holder,
      claimId: randomUUID(),
      retention: retentionMs === undefined ? undefined : durationFromMs(retentionMs),
      onLeaseExpiry: policy,
    });
    let sentAt = 0;
    const claim: ClaimResponse = await this.withRetry(() => {
      sentAt = performance.now();
      return this.rpc.claim(request);
    });

    const base = this.emptyResult<T>(key);
    const outcome = claim.outcome;
    switch (outcome.case) {
      case "completed": {
        const bytes = outcome.value.response;
        return {
          ...base,
          status: "completed",
          token: outcome.value.token,
          response: decodeStored(codec, bytes),
          responseBytes: bytes,
          cached: true,
        };
      }
      case "failed":
        return {
          ...base,
          status: "failed",
          token: outcome.value.token,
          cached: true,
          error: new StoredFailureError(outcome.value.error),
          reconcile: this.reconciler.handle(key, outcome.value.token, codec),
        };
      case "inProgress":
        return {
          ...base,
          status: "in_progress",
          executionAlive: true,
          holder: outcome.value.holder,
          attempt: outcome.value.attempt,
          leaseExpiresAt: dateFromPb(outcome.value.leaseExpiresAt),
        };
      case "uncertain":
        return {
          ...base,
          status: "uncertain",
          uncertain: true,
          token: outcome.value.token,
          uncertainReason: uncertainReasonFromPb(outcome.value.reason),
          holder: outcome.value.holder,
          attempt: outcome.value.attempt,
          error: outcome.value.error === "" ? undefined : new StoredFailureError(outcome.value.error),
          reconcile: this.reconciler.handle(key, outcome.value.token, codec),
        };
      case "acquired": {
        const a = outcome.value;
        const ttlRemainingMs = a.ttlRemaining === undefined ? ttlMs : durationMs(a.ttlRemaining);
        return this.run(key, fn, codec, fingerprint, { token: a.token, attempt: a.attempt, ttlMs, ttlRemainingMs, sentAt });
      }
      default:
        throw new SentinelError("server sent a ClaimResponse with no outcome", { code: Code.Internal });
    }
  }

  private async run<T>(
    key: string,
    fn: (lease: LeaseContext) => T | Promise<T>,
    codec: Codec<T>,
    fingerprint: Uint8Array | undefined,
    lease: { token: bigint; attempt: number; ttlMs: number; ttlRemainingMs: number; sentAt: number },
  ): Promise<OnceResult<T>> {
    const handle = this.heartbeats.register({
      namespace: this.namespace,
      key,
      token: lease.token,
      ttlMs: lease.ttlMs,
      ttlRemainingMs: lease.ttlRemainingMs,
      claimSentAt: lease.sentAt,
    });
    const context: LeaseContext = {
      token: lease.token,
      signal: handle.signal,
      namespace: this.namespace,
      key,
      attempt: lease.attempt,
    };

    let outcome: CompleteOutcome;
    let workError: unknown;
    let bytes: Uint8Array | undefined;
    try {
      const value = await (async () => fn(context))();
      try {
        bytes = codec.encode(value);
        outcome = { case: "success", value: { response: bytes } };
      } catch (err) {
        // The work ran; only its result cannot be stored. Possible side effects, by definition.
        workError = err instanceof CodecError ? err : new CodecError(`cannot encode the result: ${message(err)}`, { cause: err });
        outcome = failure(workError, SideEffects.POSSIBLE, false);
      }
    } catch (err) {
      workError = err;
      outcome =
        err instanceof NothingHappenedError
          ? failure(err, SideEffects.NONE, err.retryable)
          : failure(err, SideEffects.POSSIBLE, false);
    }

    let done: CompleteResponse;
    try {
      const req = create(CompleteRequestSchema, {
        namespace: this.namespace,
        key,
        token: lease.token,
        outcome,
        fingerprint: fingerprint ?? new Uint8Array(0),
      });
      done = await this.withRetry(() => this.rpc.complete(req));
    } catch (err) {
      if (err instanceof SentinelError && workError !== undefined) err.workError = workError;
      throw err;
    } finally {
      // Heartbeats continue until Complete is answered, so the lease cannot lapse meanwhile.
      handle.release();
    }

    const base = { ...this.emptyResult<T>(key), token: done.token, attempt: lease.attempt, late: done.late };
    switch (done.state) {
      case PbExecutionState.COMPLETED:
        if (bytes === undefined) break;
        return { ...base, status: "completed", response: decodeStored(codec, bytes), responseBytes: bytes };
      case PbExecutionState.RELEASED:
        return { ...base, status: "released", error: workError };
      case PbExecutionState.FAILED:
        return {
          ...base,
          status: "failed",
          error: workError,
          reconcile: this.reconciler.handle(key, done.token, codec),
        };
      case PbExecutionState.UNCERTAIN:
        return {
          ...base,
          status: "uncertain",
          uncertain: true,
          uncertainReason: "REPORTED",
          error: workError,
          reconcile: this.reconciler.handle(key, done.token, codec),
        };
      default:
        break;
    }
    throw new SentinelError(`server answered Complete with unexpected state ${PbExecutionState[done.state]}`, {
      code: Code.Internal,
    });
  }

  /** The execution of `key` and its recent history, newest first. Rejects with NotFoundError. */
  async inspect(key: string, options?: { historyLimit?: number }): Promise<InspectResult> {
    this.assertOpen();
    const res = await this.call(() =>
      this.rpc.inspect({ namespace: this.namespace, key, historyLimit: options?.historyLimit ?? 0 }),
    );
    if (res.execution === undefined) {
      throw new SentinelError("server sent an InspectResponse without an execution", { code: Code.Internal });
    }
    return { execution: executionFromPb(res.execution), history: res.history.map(historyEventFromPb) };
  }

  /** Every execution of the namespace (optionally in one state), paging as it goes. */
  async *list(options?: ListOptions): AsyncGenerator<Execution, void, undefined> {
    this.assertOpen();
    let pageToken = "";
    do {
      const res = await this.call(() =>
        this.rpc.listExecutions({
          namespace: this.namespace,
          state: stateToPb(options?.state ?? "unspecified"),
          pageSize: options?.pageSize ?? 0,
          pageToken,
        }),
      );
      for (const e of res.executions) yield executionFromPb(e);
      pageToken = res.nextPageToken;
    } while (pageToken !== "");
  }

  /** Every UNCERTAIN execution of the namespace: the reconciler's work list. */
  listUncertain(options?: { pageSize?: number }): AsyncGenerator<Execution, void, undefined> {
    return this.list({ state: "uncertain", pageSize: options?.pageSize });
  }

  /**
   * Resolves an execution by compare-and-set on `expectedToken` (Reconcile). Rejects with
   * FencedError when the token moved, NotReconcilableError when the state does not allow it.
   */
  async resolve(request: ResolveRequest): Promise<ResolveResult> {
    this.assertOpen();
    const r = request.resolution;
    let resolution: MessageInitShape<typeof ReconcileRequestSchema>["resolution"];
    switch (r.kind) {
      case "mark_completed":
        resolution = { case: "markCompleted", value: { response: r.response } };
        break;
      case "retry":
        resolution = { case: "retry", value: {} };
        break;
      case "mark_failed":
        resolution = { case: "markFailed", value: { message: r.message } };
        break;
      default:
        invalid(`resolve: unknown resolution kind ${String((r as { kind?: unknown }).kind)}`);
    }
    const res = await this.call(() =>
      this.rpc.reconcile({
        namespace: this.namespace,
        key: request.key,
        expectedToken: request.expectedToken,
        resolution,
        operator: request.operator ?? this.holder,
        note: request.note ?? "",
        force: request.force ?? false,
      }),
    );
    return { state: stateFromPb(res.state), token: res.token };
  }

  /** Heartbeat statistics (streams opened, leases held), for tests and metrics. */
  heartbeatStats(): HeartbeatStats {
    return this.heartbeats.snapshot();
  }

  /**
   * Stops heartbeating and closes the connection. Leases still held lose them: their signals
   * abort with reason CLIENT_CLOSED. Call it once the `once` calls have settled.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.heartbeats.close();
    this.session?.abort();
  }

  private assertOpen(): void {
    if (this.closed) throw new Error("the Sentinel client is closed");
  }

  private emptyResult<T>(key: string): ResultFields<T> {
    return {
      key,
      token: undefined,
      response: undefined,
      responseBytes: undefined,
      cached: false,
      executionAlive: false,
      uncertain: false,
      uncertainReason: undefined,
      reconcile: undefined,
      error: undefined,
      attempt: undefined,
      late: false,
      holder: undefined,
      leaseExpiresAt: undefined,
    };
  }

  private async call<R>(rpc: () => Promise<R>): Promise<R> {
    try {
      return await rpc();
    } catch (err) {
      throw fromRpcError(err);
    }
  }

  /**
   * Retries on UNAVAILABLE only. Safe for Claim because every try carries the same claim id,
   * and for Complete because repeating an accepted Complete with the same outcome succeeds.
   */
  private async withRetry<R>(rpc: () => Promise<R>): Promise<R> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.call(rpc);
      } catch (err) {
        if (!(err instanceof UnavailableError) || attempt + 1 >= this.retry.attempts || this.closed) throw err;
        await sleep(backoffDelay(attempt, this.retry));
      }
    }
  }
}

type CompleteOutcome = MessageInitShape<typeof CompleteRequestSchema>["outcome"];

function failure(err: unknown, sideEffects: SideEffects, retryable: boolean): CompleteOutcome {
  return { case: "failure", value: { message: truncateUtf8(message(err), MAX_MESSAGE_BYTES), retryable, sideEffects } };
}

function message(err: unknown): string {
  if (err instanceof Error) return err.message === "" ? err.name : `${err.name}: ${err.message}`;
  return String(err);
}

function truncateUtf8(text: string, maxBytes: number): string {
  const bytes = new TextEncoder().encode(text);
  if (bytes.length <= maxBytes) return text;
  // Decoding a cut multi-byte sequence yields U+FFFD; drop it rather than send garbage.
  return new TextDecoder().decode(bytes.subarray(0, maxBytes - 3)).replace(/\uFFFD$/, "") + "...";
}

function decodeStored<T>(codec: Codec<T>, bytes: Uint8Array): T {
  try {
    return codec.decode(bytes);
  } catch (err) {
    throw err instanceof CodecError ? err : new CodecError(`cannot decode the stored response: ${message(err)}`, { cause: err });
  }
}

function positiveMs(name: string, value: number | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "number" || !Number.isFinite(value) || value <= 0) {
    throw new TypeError(`once: ${name} must be a positive number of milliseconds, got ${String(value)}`);
  }
  return value;
}

function invalid(text: string): never {
  throw new TypeError(text);
}
