//! The one place that opens savepoints: statements that may fail on a constraint run through here, so
//! that a failure inside a caller's transaction leaves it usable.

use sqlx::{Connection, PgConnection};

use crate::error::Error;

/// Runs `statement` (one or several) inside a transaction of its own (a savepoint when `conn` is already in one),
/// committed when it succeeds and rolled back when it fails. The outer `Result` is the savepoint's own
/// (a lost connection); the inner one is the statement's, for the caller to map.
pub(crate) async fn atomically<T, E>(
    conn: &mut PgConnection,
    statement: impl AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
) -> Result<Result<T, E>, Error> {
    let mut savepoint = Connection::begin(&mut *conn).await?;
    let result = statement(&mut savepoint).await;
    if result.is_ok() {
        savepoint.commit().await?;
    } else {
        savepoint.rollback().await?;
    }
    Ok(result)
}

/// Like [`atomically`], but only when `conn` is in a transaction: on its own, one statement is atomic
/// already, and the hot path saves the two round trips.
pub(crate) async fn attempt<T>(
    conn: &mut PgConnection,
    statement: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
) -> Result<Result<T, sqlx::Error>, Error> {
    if conn.is_in_transaction() {
        atomically(conn, statement).await
    } else {
        Ok(statement(conn).await)
    }
}
