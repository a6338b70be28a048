/** Exponential backoff with jitter, shared by claim/complete retries and stream re-opens. */
export interface BackoffOptions {
  /** First delay in milliseconds. */
  initialMs: number;
  /** Cap on one delay in milliseconds. */
  maxMs: number;
}

/**
 * The delay before retry number `attempt` (0-based): doubling, capped, and drawn from the
 * upper half of the window so that many clients retrying together spread out without ever
 * retrying immediately.
 */
export function backoffDelay(attempt: number, options: BackoffOptions): number {
  const ceiling = Math.min(options.maxMs, options.initialMs * 2 ** Math.min(attempt, 30));
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
