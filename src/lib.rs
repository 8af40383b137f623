//! # livermore-db
//!
//! The identity-and-access (IAM) part of the Livermore trading platform's PostgreSQL database:
//! the `users` table's schema as [sqlx migrations](MIGRATOR), and the [`Role`] enum stored in its
//! `role` column.
//!
//! Every statement this crate runs is a `sqlx::query!` family macro, checked at compile time against
//! the offline cache committed in `.sqlx/`, so dependants build without a database.
//!
//! ## Migrating at start-up
//!
//! ```no_run
//! # async fn start() -> Result<(), livermore_db::Error> {
//! let pool = sqlx::PgPool::connect("postgres://livermore@127.0.0.1:54329/livermore").await?;
//! livermore_db::MIGRATOR.run(&pool).await?;
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod error;
mod role;

pub use error::Error;
pub use role::Role;

/// The crate's migrations (`migrations/` in the repository), embedded at compile time.
///
/// Run it with [`Migrator::run`](sqlx::migrate::Migrator::run) at service start-up, or use
/// `make migrate` from the repository. The migrations adopt a database whose schema was created by the
/// older TypeScript tooling: they change no row there and are recorded as applied.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

// The README's examples are compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
