//! # livermore-db
//!
//! The identity-and-access (IAM) part of the Livermore trading platform's PostgreSQL database:
//! the `users` table's schema as [sqlx migrations](MIGRATOR), the [`Role`] enum stored in its `role`
//! column, and the calls that find, create and update users signing in through an identity provider.
//!
//! **A service uses [`Db`]**: one handle, built at start-up and cloned into every request handler,
//! that holds its own connections (one round trip per call), coalesces concurrent identity
//! look-ups, and routes look-ups to fresh streaming replicas when it has some.
//!
//! ```no_run
//! # async fn start() -> Result<(), livermore_db::Error> {
//! use livermore_db::{Db, Identity};
//!
//! let db = Db::connect("postgres://livermore@127.0.0.1:54329/livermore".parse()?).await?;
//! db.migrate().await?;
//! let identity = Identity::parse("clerk", "user_2NNEqL2nrIRdJ194ndJqAHwEfxC")?;
//! let user = db.find_by_identity(&identity).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Inside a transaction of your own (from [`Db::pool`] or any `PgPool`), use the executor-generic
//! functions: [`sign_in`], [`find_by_identity`], [`find_by_identities`], [`link_identity`],
//! [`record_login`], [`set_role`], [`list_by_role`], [`deactivate`], [`clerk::apply_event`].
//!
//! Inputs are parsed once into types that can only hold valid values ([`Profile`], [`Identity`],
//! [`Email`], …), so bad input is an [`Error::InvalidInput`] before any SQL runs. Times are UTC
//! whatever the server's or session's `TimeZone` (see [`User`]).
//!
//! Every statement this crate runs is a `sqlx::query!` family macro, checked at compile time against
//! the offline cache committed in `.sqlx/`, so dependants build without a database.
#![warn(missing_docs)]

// `sqlx.toml` maps `users.id` and `users.role` to `::livermore_db::UserId` and `::livermore_db::Role`
// in every checked query; this makes that path resolve inside the crate too (tests, benches and
// examples are other crates, where it resolves anyway).
extern crate self as livermore_db;

pub mod clerk;
mod db;
mod error;
mod id;
mod input;
mod migrations;
mod role;
mod tx;
mod users;

pub use db::{
    DEFAULT_CALL_TIMEOUT, DEFAULT_CHECK_INTERVAL, DEFAULT_CONNECTIONS, DEFAULT_LOOKUP_CONNECTIONS,
    DEFAULT_MAX_BATCH, DEFAULT_MAX_LAG, DEFAULT_REPLICA_TIMEOUT, Db, DbBuilder, PrimaryReasons,
    RoutingStats, SessionStats, WalPosition,
};
pub use error::Error;
pub use input::{DisplayName, Email, Identity, PictureUrl, Profile, Provider, Subject};
pub use migrations::{
    Backfill, Finding, LockRetry, MigrateOptions, Prepared, migrate_on, prepare_to_migrate, survey,
};
pub use role::Role;
pub use users::{
    RoleSource, SignIn, USERNAME_ATTEMPTS, User, UserId, deactivate, find_by_email, find_by_id,
    find_by_identities, find_by_identity, link_identity, list_by_role, record_login, set_role,
    sign_in, username_from_email,
};

/// Pool options suited to this crate's short statements; use them for the pool you pass in.
///
/// The difference from sqlx's defaults: no `test_before_acquire` (sqlx's default pings the server on
/// every acquire, a round trip as long as the look-up itself; a broken connection surfaces as an
/// error on use instead, and `max_lifetime` retires old ones). Set `max_connections` to your
/// concurrency. What it cannot remove: sqlx 0.9 pings the server again on every *release*
/// (`return_to_pool`), whatever the options, so a one-statement call through a pool is two round
/// trips. For a service's calls use [`Db`], which holds its connections; use a pool for
/// transactions of your own ([`Db::pool`] is one).
///
/// ```no_run
/// # async fn f() -> Result<(), sqlx::Error> {
/// let pool = livermore_db::pool_options()
///     .max_connections(16)
///     .connect("postgres://livermore@127.0.0.1:54329/livermore")
///     .await?;
/// # Ok(())
/// # }
/// ```
pub fn pool_options() -> sqlx::postgres::PgPoolOptions {
    sqlx::postgres::PgPoolOptions::new()
        .test_before_acquire(false)
        .max_lifetime(std::time::Duration::from_secs(30 * 60))
}

/// The crate's migrations (`migrations/` in the repository), embedded at compile time.
///
/// At service start-up prefer [`migrate`], which runs them on a connection of its own. Or use
/// `make migrate` from the repository. Running `MIGRATOR` yourself, call [`prepare_to_migrate`]
/// first: a database that applied the first texts of 0002 and 0005 (rewritten once, before release)
/// is otherwise refused as edited. The migrations adopt a database whose schema was created by the
/// older TypeScript tooling: they change no row there and are recorded as applied.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Applies the pending [`MIGRATOR`] migrations on a connection of its own, opened with the pool's
/// connect options and closed afterwards, whether they succeed or fail.
///
/// A database that is ahead of this build (a newer release recorded migrations it does not know:
/// a rollback, or a rolling deploy) is accepted, as Flyway does by default; every migration this
/// build knows must still be recorded with its own checksum, else it fails with
/// [`sqlx::migrate::MigrateError::VersionMismatch`] naming the version.
///
/// A migration that must lock `users` while other sessions hold it waits in short attempts with
/// pauses between ([`LockRetry::default`]: 300 ms each, 60 s in all), so that reads and writes are
/// never queued behind it for long; past the budget it fails with [`Error::MigrationBlocked`],
/// naming the sessions in the way. Migration 0009's backfill runs in batches each bounded by a
/// real `statement_timeout`, paused while a replica lags on what they wrote ([`Backfill::default`]).
/// [`migrate_on`] takes other bounds.
///
/// Safe when several replicas of a service start at once. sqlx's migrator serializes them with a
/// session advisory lock, which it releases only on success: after a failure (a migration's
/// `lock_timeout` on a busy table, say) the lock would stay on a pooled connection, and every other
/// replica's migrator would wait on it, with no timeout, until that connection is retired. Here the
/// failed connection is closed, so the server releases the lock and the next replica goes on at once.
///
/// # Examples
///
/// ```no_run
/// # async fn start() -> Result<(), livermore_db::Error> {
/// let pool = livermore_db::pool_options()
///     .max_connections(8)
///     .connect("postgres://livermore@127.0.0.1:54329/livermore")
///     .await?;
/// livermore_db::migrate(&pool).await?;
/// # Ok(())
/// # }
/// ```
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), Error> {
    use sqlx::Connection;

    let options = pool.connect_options();
    let mut conn = sqlx::PgConnection::connect_with(&options).await?;
    let result = migrate_on(&mut conn, None, LockRetry::default()).await;
    // Closing ends the session, and with it any advisory lock a failed run left behind. Should the
    // polite close fail (a broken socket), dropping the connection still ends the session.
    let _ = conn.close().await;
    result
}

// The README's examples are compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
