//! Versioned plain-SQL migrations, embedded in the binary. Applied by `sentinel migrate` and
//! at start-up, under an advisory lock so that replicas starting together apply each once.

use crate::error::{Error, Result};

/// (version, name, SQL), in order. Never edit a released migration: add a new one.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("migrations/0001_init.sql")),
    (
        2,
        "hot_updates",
        include_str!("migrations/0002_hot_updates.sql"),
    ),
    (
        3,
        "byte_keys_and_history_key",
        include_str!("migrations/0003_byte_keys_and_history_key.sql"),
    ),
];

const MIGRATION_LOCK: i64 = 1397050963;

/// Applies every pending migration; returns the versions applied.
pub async fn migrate(client: &mut deadpool_postgres::Object) -> Result<Vec<i32>> {
    let fail = |e: tokio_postgres::Error| Error::DatabaseUnavailable(format!("migrating: {e}"));
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(fail)?;
    let result = apply(client).await;
    // Release even when a migration failed; a dropped connection releases it anyway.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result
}

async fn apply(client: &mut deadpool_postgres::Object) -> Result<Vec<i32>> {
    let fail = |e: tokio_postgres::Error| Error::DatabaseUnavailable(format!("migrating: {e}"));
    client
        .batch_execute(
            "SET client_min_messages = warning;
             CREATE TABLE IF NOT EXISTS sentinel_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );
             RESET client_min_messages;",
        )
        .await
        .map_err(fail)?;
    let applied: Vec<i32> = client
        .query("SELECT version FROM sentinel_migrations", &[])
        .await
        .map_err(fail)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if let Some(newest) = applied.iter().max() {
        if *newest > MIGRATIONS.last().map_or(0, |m| m.0) {
            return Err(Error::Internal(format!(
                "the database has migration {newest}, newer than this binary knows: refusing to run an old server on a newer schema"
            )));
        }
    }
    let mut done = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        let tx = client.transaction().await.map_err(fail)?;
        tx.batch_execute(sql).await.map_err(fail)?;
        tx.execute(
            "INSERT INTO sentinel_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        tracing::info!(version, name, "applied migration");
        done.push(*version);
    }
    Ok(done)
}
