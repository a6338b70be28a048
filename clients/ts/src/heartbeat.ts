/**
 * One bidirectional Heartbeat stream per client carries the heartbeats of every lease the
 * client holds, as the contract requires.
 *
 * Safety does not depend on the stream: each lease keeps a local deadline on the monotonic
 * clock (`performance.now()`), computed from the server's `ttl_remaining` measured from when
 * the request was *sent* (so it can only be early, never late). If no ALIVE moves the
 * deadline before it passes, the lease's AbortSignal fires, whatever the stream is doing:
 * a stalled or broken stream can never make a worker believe it still holds a lease.
 *
 * The stream is opened when the first lease registers, half-closed when the last one is
 * released, and re-opened with backoff when it breaks while leases remain; a stream whose
 * replies stop coming is torn down and re-opened too.
 */
import { create } from "@bufbuild/protobuf";
import { durationMs } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import { backoffDelay } from "./backoff.js";
import { LeaseLostError } from "./errors.js";
import {
  HeartbeatRequestSchema,
  type HeartbeatRequest,
  type HeartbeatResponse,
  type SentinelService,
} from "./gen/sentinel/v1/sentinel_pb.js";
import { lostReasonFromPb } from "./types.js";

const REOPEN_BACKOFF = { initialMs: 50, maxMs: 2_000 };
/** Floor of the no-reply window after which a stream counts as stalled. */
const MIN_STALL_MS = 1_000;
/** How long a half-closed, unused stream may take to end before it is cancelled. */
const HALF_CLOSE_GRACE_MS = 5_000;

/** A lease held by this client, as `once` sees it. */
export interface LeaseHandle {
  readonly signal: AbortSignal;
  /** Stops heartbeating (after Complete); the signal is left as it is. */
  release(): void;
}

export interface RegisterLease {
  namespace: string;
  key: string;
  token: bigint;
  ttlMs: number;
  /** ttl_remaining from the claim reply. */
  ttlRemainingMs: number;
  /** performance.now() when the Claim that returned the lease was sent. */
  claimSentAt: number;
}

class Lease implements LeaseHandle {
  readonly controller = new AbortController();
  /** Send times of heartbeats not answered yet on the current stream, oldest first. */
  pending: number[] = [];
  deadline: number;
  private beatTimer: ReturnType<typeof setInterval> | undefined;
  private deadlineTimer: ReturnType<typeof setTimeout> | undefined;
  private done = false;

  constructor(
    readonly id: string,
    readonly namespace: string,
    readonly key: string,
    readonly token: bigint,
    readonly intervalMs: number,
    deadline: number,
    private readonly mux: HeartbeatMux,
  ) {
    this.deadline = deadline;
    this.beatTimer = setInterval(() => mux.beat(this), intervalMs);
    this.armDeadline();
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  get active(): boolean {
    return !this.done;
  }

  alive(ttlRemainingMs: number): void {
    const sentAt = this.pending.shift() ?? performance.now();
    this.deadline = Math.max(this.deadline, sentAt + ttlRemainingMs);
  }

  lose(reason: LeaseLostError): void {
    if (!this.controller.signal.aborted) this.controller.abort(reason);
    this.stop();
  }

  release(): void {
    this.stop();
  }

  private stop(): void {
    if (this.done) return;
    this.done = true;
    clearInterval(this.beatTimer);
    clearTimeout(this.deadlineTimer);
    this.beatTimer = undefined;
    this.deadlineTimer = undefined;
    this.mux.forget(this);
  }

  /** Re-arms lazily: an ALIVE only moves `deadline`; the timer checks it when it fires. */
  private armDeadline(): void {
    const wait = this.deadline - performance.now();
    if (wait <= 0) {
      this.lose(new LeaseLostError("LOCAL_DEADLINE", "no ALIVE heartbeat before the lease's local deadline"));
      return;
    }
    this.deadlineTimer = setTimeout(() => this.armDeadline(), wait + 1);
  }
}

/** A push-fed async iterable: the request side of the Heartbeat stream. */
class RequestQueue implements AsyncIterable<HeartbeatRequest> {
  private items: HeartbeatRequest[] = [];
  private wake: (() => void) | undefined;
  private ended = false;

  push(item: HeartbeatRequest): void {
    if (this.ended) return;
    this.items.push(item);
    this.notify();
  }

  end(): void {
    this.ended = true;
    this.items = [];
    this.notify();
  }

  // A generator, because Connect drives request iterables with next/throw/return.
  async *[Symbol.asyncIterator](): AsyncGenerator<HeartbeatRequest, void, undefined> {
    try {
      for (;;) {
        const item = this.items.shift();
        if (item !== undefined) {
          yield item;
        } else if (this.ended) {
          return;
        } else {
          await new Promise<void>((resolve) => {
            this.wake = resolve;
          });
        }
      }
    } finally {
      this.end();
    }
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }
}

interface Stream {
  queue: RequestQueue;
  abort: AbortController;
}

/** Statistics for tests and metrics. */
export interface HeartbeatStats {
  /** Heartbeat streams opened over the client's life. */
  streamsOpened: number;
  /** Leases currently heartbeated. */
  leases: number;
  /** The last error that broke a stream, if any. */
  lastStreamError: unknown;
}

export class HeartbeatMux {
  private readonly leases = new Map<string, Lease>();
  private stream: Stream | undefined;
  private reopenTimer: ReturnType<typeof setTimeout> | undefined;
  private failures = 0;
  private closed = false;
  private readonly stats: HeartbeatStats = { streamsOpened: 0, leases: 0, lastStreamError: undefined };

  constructor(private readonly client: Client<typeof SentinelService>) {}

  register(r: RegisterLease): LeaseHandle {
    const id = leaseId(r.namespace, r.key, r.token);
    const interval = Math.max(1, Math.floor(r.ttlMs / 3));
    const lease = new Lease(id, r.namespace, r.key, r.token, interval, r.claimSentAt + r.ttlRemainingMs, this);
    if (this.closed) {
      lease.lose(new LeaseLostError("CLIENT_CLOSED", "the client was closed"));
      return lease;
    }
    if (!lease.active) return lease; // the claim reply was already past its deadline
    this.leases.set(id, lease);
    this.ensureStream();
    return lease;
  }

  snapshot(): HeartbeatStats {
    return { ...this.stats, leases: this.leases.size };
  }

  /** Sends one heartbeat for `lease`; called by its interval timer. */
  beat(lease: Lease): void {
    if (!lease.active) return;
    const now = performance.now();
    const oldest = lease.pending[0];
    if (this.stream !== undefined && oldest !== undefined && now - oldest > Math.max(2 * lease.intervalMs, MIN_STALL_MS)) {
      // Replies stopped while the connection looks open: start over on a fresh stream.
      this.breakStream(new Error("heartbeat stream stalled: no reply in time"));
    }
    this.ensureStream();
    const stream = this.stream;
    if (stream === undefined) return; // re-opening; the local deadline keeps the lease safe
    lease.pending.push(now);
    stream.queue.push(
      create(HeartbeatRequestSchema, { namespace: lease.namespace, key: lease.key, token: lease.token }),
    );
  }

  /** Called by a lease that stopped; half-closes the stream when no lease needs it. */
  forget(lease: Lease): void {
    if (this.leases.get(lease.id) === lease) this.leases.delete(lease.id);
    if (this.leases.size === 0) {
      if (this.stream !== undefined) {
        const s = this.stream;
        this.stream = undefined;
        // Half-close so the server ends the stream cleanly; cut it if it does not.
        s.queue.end();
        setTimeout(() => s.abort.abort(), HALF_CLOSE_GRACE_MS).unref();
      }
      clearTimeout(this.reopenTimer);
      this.reopenTimer = undefined;
    }
  }

  close(): void {
    this.closed = true;
    for (const lease of [...this.leases.values()]) {
      lease.lose(new LeaseLostError("CLIENT_CLOSED", "the client was closed"));
    }
    clearTimeout(this.reopenTimer);
    this.reopenTimer = undefined;
    if (this.stream !== undefined) {
      this.stream.queue.end();
      this.stream.abort.abort();
      this.stream = undefined;
    }
  }

  private ensureStream(): void {
    if (this.stream !== undefined || this.closed || this.leases.size === 0 || this.reopenTimer !== undefined) return;
    const stream: Stream = { queue: new RequestQueue(), abort: new AbortController() };
    this.stream = stream;
    this.stats.streamsOpened++;
    for (const lease of this.leases.values()) lease.pending = [];
    const responses = this.client.heartbeat(stream.queue, { signal: stream.abort.signal });
    void this.consume(stream, responses);
  }

  private async consume(stream: Stream, responses: AsyncIterable<HeartbeatResponse>): Promise<void> {
    let error: unknown = new Error("heartbeat stream ended by the server");
    try {
      for await (const res of responses) {
        this.failures = 0;
        this.onResponse(res);
      }
    } catch (err) {
      error = err;
    }
    if (this.stream !== stream) return; // ended on purpose
    this.breakStream(error);
  }

  private breakStream(error: unknown): void {
    const stream = this.stream;
    if (stream === undefined) return;
    this.stream = undefined;
    this.stats.lastStreamError = error;
    stream.queue.end();
    stream.abort.abort();
    if (this.closed || this.leases.size === 0) return;
    const delay = backoffDelay(this.failures++, REOPEN_BACKOFF);
    this.reopenTimer = setTimeout(() => {
      this.reopenTimer = undefined;
      this.ensureStream();
      // Beat everyone at once: their last beats may have died with the old stream.
      for (const lease of [...this.leases.values()]) this.beat(lease);
    }, delay);
  }

  private onResponse(res: HeartbeatResponse): void {
    const lease = this.leases.get(leaseId(res.namespace, res.key, res.token));
    if (lease === undefined) return; // released meanwhile, or a push about a lease we no longer hold
    switch (res.result.case) {
      case "alive":
        lease.alive(res.result.value.ttlRemaining ? durationMs(res.result.value.ttlRemaining) : 0);
        break;
      case "lost":
        lease.lose(new LeaseLostError(lostReasonFromPb(res.result.value.reason), res.result.value.detail));
        break;
      default:
        break;
    }
  }
}

/** Namespaces and keys cannot contain control characters, so NUL separates them safely. */
function leaseId(namespace: string, key: string, token: bigint): string {
  return `${namespace}\u0000${key}\u0000${token}`;
}
