/**
 * Quickstart: run against `sentinel dev` (127.0.0.1:50051), or SENTINEL_ADDR when set.
 *
 *   npm run example
 *
 * Charges a (pretend) card once however many workers try, replays the receipt, shows a
 * retryable failure releasing the key, and lists what needs a human.
 */
import { createSentinel, FencedError, nothingHappened } from "@sentinel-dev/client";

const target = process.env["SENTINEL_ADDR"] ?? "127.0.0.1:50051";
const sentinel = createSentinel({ target, namespace: "quickstart" });
const orderId = `order-${Date.now()}`;
// In real code: a hash of the request body. The same key with another payload is refused.
const fingerprint = `sha256-of-the-body-of-${orderId}`;

// Stands in for a payment provider that accepts a fencing token and refuses stale ones.
let highestToken = 0n;
async function charge(amountCents: number, token: bigint, signal: AbortSignal): Promise<string> {
  signal.throwIfAborted();
  if (token < highestToken) throw new Error(`stale token ${token}`);
  highestToken = token;
  await new Promise((resolve) => setTimeout(resolve, 200));
  return `receipt-${amountCents}-${token}`;
}

try {
  // Five workers race for the same order; one charges, the others see it running or replay it.
  const results = await Promise.all(
    Array.from({ length: 5 }, () =>
      sentinel.once({
        key: orderId,
        ttlMs: 3_000,
        fingerprint,
        fn: async ({ token, signal }) => ({ receipt: await charge(4_200, token, signal) }),
      }),
    ),
  );
  for (const r of results) {
    console.log(`${r.status.padEnd(11)} cached=${r.cached} alive=${r.executionAlive} response=${JSON.stringify(r.response)}`);
  }

  const replay = await sentinel.once({ key: orderId, fingerprint, fn: () => ({ receipt: "never used" }) });
  console.log(`later caller: ${replay.status}, cached=${replay.cached}, receipt=${replay.response?.receipt}`);

  // A failure before anything happened releases the key for the next attempt.
  const declined = await sentinel.once({
    key: `${orderId}-retry`,
    fn: () => {
      throw nothingHappened(new Error("provider said 503 before charging"));
    },
  });
  console.log(`first attempt: ${declined.status}; second attempt:`,
    (await sentinel.once({ key: `${orderId}-retry`, fn: () => "charged on attempt 2" })).response);

  // Anything else may have had side effects: the execution becomes UNCERTAIN for a human.
  const unsure = await sentinel.once({
    key: `${orderId}-unsure`,
    fn: (): string => {
      throw new Error("timeout after the charge request was sent");
    },
  });
  console.log(`unknown outcome: ${unsure.status}, uncertain=${unsure.uncertain}`);
  for await (const e of sentinel.listUncertain()) {
    console.log(`  needs reconciling: ${e.key} (token ${e.token}, ${e.uncertainReason}): ${e.error}`);
  }
  if (unsure.status === "uncertain") {
    await unsure.reconcile.markCompleted("checked with the provider: charged", { note: "quickstart" });
    console.log("  resolved as completed");
  }
} catch (err) {
  if (err instanceof FencedError) console.error("our lease was taken over; the outcome was not recorded");
  throw err;
} finally {
  await sentinel.close();
}
