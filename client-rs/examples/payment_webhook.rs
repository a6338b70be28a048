//! A payment webhook handler that charges each event once, however often it is delivered.
//!
//! Start a server with `sentinel dev`, then:
//!
//! ```text
//! cargo run -p sentinel-client --example payment_webhook [ADDR]
//! ```
//!
//! ADDR defaults to `$SENTINEL_ADDR`, then `127.0.0.1:50051`. Event ids are fixed, so a second
//! run replays every stored outcome and charges nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sentinel_client::{Client, Error, OnceOptions, Outcome, WorkError, WorkResultExt};
use sha2::{Digest, Sha256};

/// What the payment provider sent us.
#[derive(Clone, Debug)]
struct Event {
    id: &'static str,
    customer: &'static str,
    amount_cents: u64,
}

impl Event {
    /// The canonical payload: a redelivery with other content under the same id is a bug
    /// (or an attack), and Sentinel rejects it with FINGERPRINT_MISMATCH.
    fn fingerprint(&self) -> Vec<u8> {
        let payload = format!("{}|{}|{}", self.id, self.customer, self.amount_cents);
        Sha256::digest(payload.as_bytes()).to_vec()
    }
}

/// Charges that actually reached the (simulated) card network.
static CHARGES: AtomicUsize = AtomicUsize::new(0);
/// The first call to the provider for this event fails to connect.
const FLAKY_EVENT: &str = "evt_1003";
static FLAKY_FAILED: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug)]
enum ChargeError {
    /// The provider could not be reached: no request left this process.
    ConnectFailed,
    /// The provider refused the charge: nothing happened, and retrying will not help.
    Declined,
}

impl std::fmt::Display for ChargeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ConnectFailed => f.write_str("payment provider unreachable"),
            Self::Declined => f.write_str("card declined"),
        }
    }
}

impl std::error::Error for ChargeError {}

/// A stand-in for the provider's API. The idempotency token is what a real provider would
/// receive, so that a zombie worker with an old token can be refused downstream too.
async fn charge(event: &Event, token: u64) -> Result<String, ChargeError> {
    if event.id == FLAKY_EVENT && FLAKY_FAILED.fetch_add(1, Ordering::SeqCst) == 0 {
        return Err(ChargeError::ConnectFailed);
    }
    if event.amount_cents == 0 {
        return Err(ChargeError::Declined);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    CHARGES.fetch_add(1, Ordering::SeqCst);
    Ok(format!(
        "charged {} cents to {} (fencing token {token})",
        event.amount_cents, event.customer
    ))
}

/// Handles one delivery and returns the HTTP status the webhook would answer with.
async fn handle(client: &Client, event: &Event) -> Result<(u16, String), Error> {
    let options = OnceOptions::new()
        .lease_ttl(Duration::from_secs(10))
        .fingerprint(event.fingerprint())
        // Concurrent deliveries wait for the first one instead of failing fast.
        .wait_in_progress(Duration::from_secs(30));
    let outcome = client
        .once(event.id, &options, |lease| async move {
            match charge(event, lease.token()).await {
                Ok(receipt) => Ok(receipt.into_bytes()),
                Err(ChargeError::ConnectFailed) => {
                    Err(ChargeError::ConnectFailed).nothing_happened()
                }
                Err(ChargeError::Declined) => Err(WorkError::definite(ChargeError::Declined)),
            }
        })
        .await?;
    Ok(match outcome {
        Outcome::Completed(r) => (200, String::from_utf8_lossy(&r.bytes).into_owned()),
        Outcome::Replayed(r) => (
            200,
            format!("(replayed) {}", String::from_utf8_lossy(&r.bytes)),
        ),
        // Another worker is still on it: the provider will redeliver.
        Outcome::InProgress(p) => (409, format!("in progress on {}", p.holder)),
        Outcome::Failed(f) if f.released => (503, format!("not charged, retry: {}", f.message)),
        Outcome::Failed(f) if f.cached => (402, format!("(replayed) failed: {}", f.message)),
        Outcome::Failed(f) => (402, format!("failed: {}", f.message)),
        // Possibly charged: never charge again blindly; a human or a reconciler decides.
        Outcome::Uncertain(u) => (
            202,
            format!(
                "needs reconciliation (token {}): {:?} {}",
                u.reconcile.token(),
                u.uncertain.reason,
                u.uncertain.error
            ),
        ),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("SENTINEL_ADDR").ok())
        .unwrap_or_else(|| "127.0.0.1:50051".to_owned());
    let client = Client::builder(&addr)
        .namespace("payments-example")
        .holder("webhook-example")
        .connect()
        .await?;
    println!("connected to {addr}");

    let paid = Event {
        id: "evt_1001",
        customer: "cus_alice",
        amount_cents: 4200,
    };
    // The provider delivers the same event three times at once (a retry storm).
    let deliveries = (0..3).map(|_| handle(&client, &paid));
    for (i, result) in futures::future::join_all(deliveries)
        .await
        .into_iter()
        .enumerate()
    {
        let (status, body) = result?;
        println!("{} delivery {}: {status} {body}", paid.id, i + 1);
    }
    // ... and once more, a minute later.
    let (status, body) = handle(&client, &paid).await?;
    println!("{} redelivery: {status} {body}", paid.id);

    let declined = Event {
        id: "evt_1002",
        customer: "cus_bob",
        amount_cents: 0,
    };
    for attempt in 1..=2 {
        let (status, body) = handle(&client, &declined).await?;
        println!("{} delivery {attempt}: {status} {body}", declined.id);
    }

    let flaky = Event {
        id: FLAKY_EVENT,
        customer: "cus_carol",
        amount_cents: 1500,
    };
    for attempt in 1..=2 {
        let (status, body) = handle(&client, &flaky).await?;
        println!("{} delivery {attempt}: {status} {body}", flaky.id);
    }

    let tampered = Event {
        amount_cents: 999_999,
        ..paid
    };
    match handle(&client, &tampered).await {
        Err(Error::FingerprintMismatch { .. }) => {
            println!(
                "{} with another payload: rejected (fingerprint mismatch)",
                tampered.id
            )
        }
        other => println!("{} with another payload: unexpected {other:?}", tampered.id),
    }

    println!(
        "charges that reached the card network in this run: {}",
        CHARGES.load(Ordering::SeqCst)
    );
    Ok(())
}
