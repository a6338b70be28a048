/**
 * Domain types: what callers of this package see instead of generated messages. Tokens are
 * bigint (uint64 on the wire), times are Date, durations are milliseconds, enums are strings.
 */
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import {
  ExecutionState as PbExecutionState,
  LostReason as PbLostReason,
  UncertainReason as PbUncertainReason,
  type Execution as PbExecution,
  type HistoryEvent as PbHistoryEvent,
} from "./gen/sentinel/v1/sentinel_pb.js";
import type { LeaseLostReason } from "./errors.js";

export type ExecutionState = "unspecified" | "running" | "completed" | "failed" | "uncertain" | "released";

export type UncertainReason = "UNSPECIFIED" | "LEASE_EXPIRED" | "HARD_DEADLINE" | "REPORTED";

/** One (namespace, key) record as every RPC reports it. */
export interface Execution {
  namespace: string;
  key: string;
  state: ExecutionState;
  token: bigint;
  attempt: number;
  holder: string;
  fingerprint: Uint8Array;
  /** Set when state is "uncertain". */
  uncertainReason: UncertainReason | undefined;
  /** The stored response bytes when state is "completed". */
  response: Uint8Array;
  error: string;
  leaseExpiresAt: Date | undefined;
  hardDeadlineAt: Date | undefined;
  createdAt: Date | undefined;
  updatedAt: Date | undefined;
  retentionUntil: Date | undefined;
}

/** One transition of an execution. */
export interface HistoryEvent {
  at: Date | undefined;
  token: bigint;
  fromState: ExecutionState;
  toState: ExecutionState;
  reason: string;
  actor: string;
  note: string;
}

export function stateFromPb(state: PbExecutionState): ExecutionState {
  switch (state) {
    case PbExecutionState.RUNNING:
      return "running";
    case PbExecutionState.COMPLETED:
      return "completed";
    case PbExecutionState.FAILED:
      return "failed";
    case PbExecutionState.UNCERTAIN:
      return "uncertain";
    case PbExecutionState.RELEASED:
      return "released";
    default:
      return "unspecified";
  }
}

export function stateToPb(state: ExecutionState): PbExecutionState {
  switch (state) {
    case "running":
      return PbExecutionState.RUNNING;
    case "completed":
      return PbExecutionState.COMPLETED;
    case "failed":
      return PbExecutionState.FAILED;
    case "uncertain":
      return PbExecutionState.UNCERTAIN;
    case "released":
      return PbExecutionState.RELEASED;
    case "unspecified":
      return PbExecutionState.UNSPECIFIED;
  }
}

export function uncertainReasonFromPb(reason: PbUncertainReason): UncertainReason {
  switch (reason) {
    case PbUncertainReason.LEASE_EXPIRED:
      return "LEASE_EXPIRED";
    case PbUncertainReason.HARD_DEADLINE:
      return "HARD_DEADLINE";
    case PbUncertainReason.REPORTED:
      return "REPORTED";
    default:
      return "UNSPECIFIED";
  }
}

export function lostReasonFromPb(reason: PbLostReason): LeaseLostReason {
  switch (reason) {
    case PbLostReason.FENCED:
      return "FENCED";
    case PbLostReason.LEASE_EXPIRED:
      return "LEASE_EXPIRED";
    case PbLostReason.HARD_DEADLINE:
      return "HARD_DEADLINE";
    case PbLostReason.RESOLVED:
      return "RESOLVED";
    case PbLostReason.NOT_FOUND:
      return "NOT_FOUND";
    default:
      return "UNSPECIFIED";
  }
}

export function dateFromPb(ts: Timestamp | undefined): Date | undefined {
  return ts === undefined ? undefined : timestampDate(ts);
}

export function executionFromPb(e: PbExecution): Execution {
  const state = stateFromPb(e.state);
  return {
    namespace: e.namespace,
    key: e.key,
    state,
    token: e.token,
    attempt: e.attempt,
    holder: e.holder,
    fingerprint: e.fingerprint,
    uncertainReason: state === "uncertain" ? uncertainReasonFromPb(e.uncertainReason) : undefined,
    response: e.response,
    error: e.error,
    leaseExpiresAt: dateFromPb(e.leaseExpiresAt),
    hardDeadlineAt: dateFromPb(e.hardDeadlineAt),
    createdAt: dateFromPb(e.createdAt),
    updatedAt: dateFromPb(e.updatedAt),
    retentionUntil: dateFromPb(e.retentionUntil),
  };
}

export function historyEventFromPb(h: PbHistoryEvent): HistoryEvent {
  return {
    at: dateFromPb(h.at),
    token: h.token,
    fromState: stateFromPb(h.fromState),
    toState: stateFromPb(h.toState),
    reason: h.reason,
    actor: h.actor,
    note: h.note,
  };
}
