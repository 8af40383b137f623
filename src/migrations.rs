//! What runs before the migrations: recording the migrations' first texts under their rewritten ones,
//! and refusing to go on over an index a failed concurrent build left behind.

use std::time::Duration;

use sqlx::migrate::Migration;
use sqlx::{Connection, PgConnection};

use crate::Error;

mod backfill;
mod survey;

pub use backfill::Backfill;
pub use survey::{Finding, survey};

/// A migration rewritten once, before release (README, "The migrations"): the SHA-384 checksum of
/// the text some databases applied, and what that text did beyond the rewritten one.
struct Rewritten {
    version: i64,
    first_checksum: &'static str,
    /// Migrations added with the rewrite whose work the first text already did, and which must not
    /// run again where it was applied (version 9 would mark again as set by Clerk a role set by
    /// hand since). Recorded as applied there.
    did_also: &'static [i64],
}

const REWRITTEN: &[Rewritten] = &[
    // 0002's first text also built the index (now 0007) and validated the checks (now 0008); both run
    // again harmlessly where it was applied (the index exists, the checks are valid).
    Rewritten {
        version: 2,
        first_checksum: "7bef030834421ad76803f7a28338a4bff7391c447cb266c6eeb8c93084671e9f8335bd245c2391d91b0b4e77b51136d0",
        did_also: &[],
    },
    // 0005's first text also brought the existing rows up to date (now 0009).
    Rewritten {
        version: 5,
        first_checksum: "1abd37fe7cb2584b78e386254a14738c9d67081d25568ec0d46f8c6900ce6557930c786e8df3a8e179ab415eeb5f6ac5",
        did_also: &[9],
    },
    // 0009's first text counted a role set by hand after 0005 (set_role writes the role's time) as
    // set by Clerk (issue 31). Where it ran, what it changed cannot be told apart any more; the
    // rewritten text does the same for rows that existed before 0005, so it is recorded in its place
    // and does not run again.
    Rewritten {
        version: 9,
        first_checksum: "1973d38345afe5be3519cb1b4479522c530f7b0c5c7a21aa440a0d131110df39e0e06d779debf5d7d05365b227d895d5",
        did_also: &[],
    },
    // 0002-0006 before they read `livermore.lock_timeout` (issue 31): the same migrations, which
    // waited up to 5 s for their locks whoever ran them.
    Rewritten {
        version: 2,
        first_checksum: "b3997d1ce44f10ffa951d30955351c4a49f0c39048f27038145dbbf6924def74f1743afe131686535973fb3e74aac910",
        did_also: &[],
    },
    Rewritten {
        version: 3,
        first_checksum: "f5220079daf4940ef16867df9f4123484c1de1dc77b05e044e7989563425d149c156f9e8f269a8c0ee560a28b9992b53",
        did_also: &[],
    },
    Rewritten {
        version: 4,
        first_checksum: "7fd9e77f4f17dc6f1fb5fe873cce26ab2687550644ddafc327374c5a54ac324081bc6a17c40bd21997d9abfc0b9e560e",
        did_also: &[],
    },
    Rewritten {
        version: 5,
        first_checksum: "31f12d24f7bd5a0ca090c3e1cce92210ef113fc0025ee9ff625edc17579e44d6afc57e5c1c3f603388361ea68d3ed8ad",
        did_also: &[],
    },
    Rewritten {
        version: 6,
        first_checksum: "d5bf6eacf5963cb8cf088a9b000c81cf47c55661ede72da4f5a2cbd28a934e5f11bb5dd4b77e673723f6aeea866e2503",
        did_also: &[],
    },
    // 0005 and 0006 before they adopted columns that already exist (issue 31): the same migrations
    // where they ran (they could only run where none of their columns existed).
    Rewritten {
        version: 5,
        first_checksum: "3c4c6fae1e87ab8c211e360b541c9961b5eaae576b5cded542f35b7b69d2ae4c457205ccd0283d5a8aed86c2300034d8",
        did_also: &[],
    },
    Rewritten {
        version: 6,
        first_checksum: "c477af7e5dd38fe901895c9eaac6a43be30e2372641e6b57dd8d057e5e7d0f4cf4a039d4d2c1d538d3c53d805586614e",
        did_also: &[],
    },
    // 0008 before it validated each check in one read (issue 31): it looked for breaking rows with a
    // query of its own first, six reads of `users` in all. The same checks, validated the same way.
    Rewritten {
        version: 8,
        first_checksum: "4acbbcdbf57351d890a133759d002ec2bddd1a3662085023215e1c047460b21944b9c7889d6972f2eba0776dcea00cd9",
        did_also: &[],
    },
];

/// What [`prepare_to_migrate`] changed in `_sqlx_migrations`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Prepared {
    /// Migrations applied under their first text, now recorded under the rewritten one.
    pub rewritten: Vec<i64>,
    /// Migrations recorded as applied without running, because a first text already did their work.
    pub recorded: Vec<i64>,
}

/// Makes a database ready for [`MIGRATOR`](crate::MIGRATOR); [`migrate`](crate::migrate) and
/// `make migrate` call it first. Call it yourself before running `MIGRATOR` any other way.
///
/// - Migrations 0002 and 0005 were rewritten once, before release, so that none holds `users`
///   while it reads every row, and 0009 once, so that it no longer counts a role set by hand after
///   0005 as set by Clerk. A database that applied their first texts (the sandbox) has those
///   texts' checksums in `_sqlx_migrations`, which sqlx would refuse as edited: they are recorded
///   under the rewritten texts, and 0009 (whose work the first 0005 did) as applied. Only those
///   three exact checksums are accepted; any other edit still stops sqlx.
/// - `users_identity_provider_sub_idx` must be the index sign-ins need (unique, on
///   `(identity_provider, identity_sub)`, `WHERE identity_provider IS NOT NULL`, valid) whenever it
///   exists: 0007's `IF NOT EXISTS` keeps any index of that name, such as the INVALID one a failed
///   concurrent build leaves or a plain one made by hand. Otherwise [`Error::MigrationBlocked`] says
///   what was found and the fix (wait for a build still running; drop a failed or wrong one).
/// - While 0002, 0005 or 0006 is pending on a `users` that already has its columns (an adopted
///   database), rows the checks it would add refuse are refused first (they could not be updated
///   once it ran), with each check, how many rows and their first ids.
///
/// Idempotent, and safe when several services start at once (one transaction; the updates match
/// only the first texts' checksums).
pub async fn prepare_to_migrate(conn: &mut PgConnection) -> Result<Prepared, Error> {
    let mut prepared = Prepared::default();
    let mut tx = conn.begin().await?;
    let recorded =
        sqlx::query_scalar!(r#"SELECT to_regclass('_sqlx_migrations') IS NOT NULL AS "exists!""#)
            .fetch_one(&mut *tx)
            .await?;
    let mut index_applied = false;
    if recorded {
        for r in REWRITTEN {
            let first = hex(r.first_checksum);
            let Some(rewritten) = up(r.version) else {
                continue;
            };
            for version in r.did_also {
                let Some(m) = up(*version) else {
                    continue;
                };
                let inserted = sqlx::query!(
                    r#"INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
                       SELECT $1, $2, true, $3, 0
                       WHERE EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = $4 AND checksum = $5)
                       ON CONFLICT (version) DO NOTHING"#,
                    m.version,
                    &*m.description,
                    &*m.checksum,
                    r.version,
                    &first,
                )
                .execute(&mut *tx)
                .await?;
                if inserted.rows_affected() == 1 {
                    prepared.recorded.push(m.version);
                }
            }
            let updated = sqlx::query!(
                "UPDATE _sqlx_migrations SET checksum = $1 WHERE version = $2 AND checksum = $3",
                &*rewritten.checksum,
                r.version,
                &first,
            )
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() == 1 {
                prepared.rewritten.push(r.version);
            }
        }
        index_applied = sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = 7) AS "applied!""#
        )
        .fetch_one(&mut *tx)
        .await?;
    }
    check_identity_index(&mut tx, index_applied).await?;
    let applied = if recorded {
        sqlx::query_scalar!(r#"SELECT version AS "version!" FROM _sqlx_migrations"#)
            .fetch_all(&mut *tx)
            .await?
    } else {
        Vec::new()
    };
    check_rows_for_added_checks(&mut tx, &applied).await?;
    tx.commit().await?;
    prepared.recorded.sort_unstable();
    Ok(prepared)
}

/// How migrating waits for the locks its migrations need on a live `users` table.
///
/// A migration's `ALTER TABLE` needs `ACCESS EXCLUSIVE` for a moment; while it waits for one behind
/// any open transaction (a long report, a connection idle in a transaction), every read and write of
/// `users` queues behind it. So each attempt waits at most [`attempt`](Self::attempt) (the
/// migrations' `lock_timeout`, through the `livermore.lock_timeout` setting they read), then rolls
/// back, lets the queue drain for a jittered, growing pause, and tries again, until
/// [`budget`](Self::budget) has passed: then [`Error::MigrationBlocked`] names the sessions that
/// held `users` (pid, application name, state, how long their transaction had been open; never
/// their statements). The way GitLab's and strong_migrations' runners do it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockRetry {
    /// The longest one attempt waits for a lock: what the reads and writes queued behind it may
    /// wait, at most, on its account. Default 300 ms.
    pub attempt: Duration,
    /// How long to keep trying before giving up. Default 60 s.
    pub budget: Duration,
}

impl Default for LockRetry {
    fn default() -> Self {
        LockRetry {
            attempt: Duration::from_millis(300),
            budget: Duration::from_secs(60),
        }
    }
}

impl LockRetry {
    /// Attempts of at most `attempt` each, for at most `budget` in all.
    pub fn new(attempt: Duration, budget: Duration) -> LockRetry {
        LockRetry { attempt, budget }
    }
}

/// How [`migrate_on`] treats a live database: how it waits for locks, and how it runs 0009's
/// backfill. A [`LockRetry`] converts into it, with the default [`Backfill`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrateOptions {
    /// Waiting for locks.
    pub lock: LockRetry,
    /// Migration 0009's batches.
    pub backfill: Backfill,
}

impl MigrateOptions {
    /// Options of these two parts.
    pub fn new(lock: LockRetry, backfill: Backfill) -> MigrateOptions {
        MigrateOptions { lock, backfill }
    }
}

impl From<LockRetry> for MigrateOptions {
    fn from(lock: LockRetry) -> MigrateOptions {
        MigrateOptions {
            lock,
            ..MigrateOptions::default()
        }
    }
}

/// The pause after the `n`th failed attempt (from 0): 200 ms doubling up to 5 s, each between half
/// and one and a half times that (jitter, so that several services starting at once do not retry in
/// step).
fn pause_after(n: u32) -> Duration {
    use std::hash::BuildHasher;
    let base = Duration::from_millis(200).saturating_mul(1 << n.min(5));
    let base = base.min(Duration::from_secs(5));
    let random = std::collections::hash_map::RandomState::new().hash_one(n);
    base.mul_f64(0.5 + (random % 1000) as f64 / 1000.0)
}

/// Applies [`MIGRATOR`](crate::MIGRATOR)'s pending migrations (up to `target`, or all) on `conn`,
/// waiting for locks as [`LockRetry`] says; [`migrate`](crate::migrate) calls it on a connection
/// of its own.
///
/// Migration 0009 (bringing the rows that existed before 0005 up to date) is run here in batches
/// as [`Backfill`] says: each batch a transaction and statements of its own, bounded by a real
/// `statement_timeout`, paused while a streaming replica lags on what earlier batches wrote. Then
/// 0009 is recorded as applied without running its SQL, which does the same work for other runners
/// (sqlx-cli) in one statement, where neither bound can be kept. Everything runs under the advisory lock sqlx's migrator takes (the same key: other
/// sqlx migrators wait; another run holding it is waited for within the same budget),
/// [`prepare_to_migrate`] included, so that what it checks still holds when
/// the migrations run. A database that is ahead of this build is accepted (see
/// [`migrate`](crate::migrate)). After a failure, close the connection: sqlx's advisory lock is
/// released here on every path, but a broken connection cannot release it.
pub async fn migrate_on(
    conn: &mut PgConnection,
    target: Option<i64>,
    options: impl Into<MigrateOptions>,
) -> Result<(), Error> {
    let options = options.into();
    let retry = options.lock;
    let database = sqlx::query_scalar!(r#"SELECT current_database() AS "name!""#)
        .fetch_one(&mut *conn)
        .await?;
    let key = lock_key(&database);
    let started = std::time::Instant::now();
    // Another run (another service starting, an operator) may hold it for a while: waited for
    // within the same budget, not for ever.
    let mut tries = 0;
    while !sqlx::query_scalar!(r#"SELECT pg_try_advisory_lock($1) AS "locked!""#, key)
        .fetch_one(&mut *conn)
        .await?
    {
        let pause = pause_after(tries).min(Duration::from_secs(1));
        tries += 1;
        if started.elapsed() + pause > retry.budget {
            return Err(Error::MigrationBlocked {
                reason: format!(
                    "another migration run held the migration lock (advisory lock {key}) for \
                     {:.1} s: wait for it to finish, then migrate again",
                    started.elapsed().as_secs_f64()
                ),
            });
        }
        tokio::time::sleep(pause).await;
    }
    let result = migrate_locked(conn, target, options, started).await;
    let reset = async {
        sqlx::query_scalar!(
            r#"SELECT set_config('livermore.lock_timeout', '', false) AS "reset!""#
        )
        .fetch_one(&mut *conn)
        .await?;
        sqlx::query_scalar!(r#"SELECT pg_advisory_unlock($1) AS "unlocked!""#, key)
            .fetch_one(&mut *conn)
            .await?;
        Ok::<_, Error>(())
    }
    .await;
    result.and(reset)
}

async fn migrate_locked(
    conn: &mut PgConnection,
    target: Option<i64>,
    options: MigrateOptions,
    started: std::time::Instant,
) -> Result<(), Error> {
    prepare_to_migrate(conn).await?;
    let retry = options.lock;
    let attempt = format!("{}ms", retry.attempt.as_millis().max(1));
    sqlx::query_scalar!(
        r#"SELECT set_config('livermore.lock_timeout', $1, false) AS "set!""#,
        attempt
    )
    .fetch_one(&mut *conn)
    .await?;
    let backfill = up(BACKFILL).filter(|_| target.is_none_or(|t| t >= BACKFILL));
    if let Some(m) = backfill
        && !(recorded(conn).await? && applied(conn, BACKFILL).await?)
    {
        run_with_retries(conn, Some(BACKFILL - 1), retry, started).await?;
        let began = std::time::Instant::now();
        backfill::run(conn, options.backfill, retry, started).await?;
        record_applied(conn, m, began.elapsed()).await?;
    }
    run_with_retries(conn, target, retry, started).await
}

/// The migration whose work [`backfill::run`] does.
const BACKFILL: i64 = 9;

/// Records `m` as applied, as sqlx's migrator would have.
async fn record_applied(
    conn: &mut PgConnection,
    m: &Migration,
    took: Duration,
) -> Result<(), Error> {
    let nanos = i64::try_from(took.as_nanos()).unwrap_or(i64::MAX);
    sqlx::query!(
        r#"INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
           VALUES ($1, $2, true, $3, $4)"#,
        m.version,
        &*m.description,
        &*m.checksum,
        nanos,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Runs the pending migrations up to `target`, trying again after a lock wait ran out.
async fn run_with_retries(
    conn: &mut PgConnection,
    target: Option<i64>,
    retry: LockRetry,
    started: std::time::Instant,
) -> Result<(), Error> {
    let attempt = format!("{}ms", retry.attempt.as_millis().max(1));
    let mut migrator = tolerating_newer();
    // The lock is taken above, around the preparation as well.
    migrator.locking = false;
    // `run_direct`, not `run`: `run` is generic over `Acquire`, and the compiler cannot prove such a
    // future `Send` ("implementation of `Acquire` is not general enough"), so a service could not
    // spawn it. `run_direct` is what `run` calls after acquiring; sqlx keeps it public for this.
    let mut failed = 0;
    loop {
        let version = match migrator.run_direct(target, &mut *conn, false).await {
            Ok(()) => return Ok(()),
            Err(sqlx::migrate::MigrateError::ExecuteMigration(e, version))
                if lock_timed_out(&e) =>
            {
                version
            }
            Err(e) => return Err(e.into()),
        };
        let pause = pause_after(failed);
        failed += 1;
        if started.elapsed() + pause + retry.attempt > retry.budget {
            let holders = holders_of_users(conn).await?;
            return Err(Error::MigrationBlocked {
                reason: format!(
                    "migration {version:04} could not lock users in {failed} attempts of at most \
                     {attempt} each over {:.1} s; sessions holding users: {holders}. End or wait for \
                     them (a long transaction, a connection idle in a transaction), then migrate again",
                    started.elapsed().as_secs_f64()
                ),
            });
        }
        tokio::time::sleep(pause).await;
    }
}

/// Whether a migration failed waiting for a lock (`lock_timeout`, SQLSTATE 55P03).
fn lock_timed_out(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}

/// The sessions holding a lock on `users` now: pid, application name, state and how long their
/// transaction has been open (their statements are not shown: they may carry values).
async fn holders_of_users(conn: &mut PgConnection) -> Result<String, Error> {
    let rows = sqlx::query!(
        r#"SELECT DISTINCT ON (a.pid) a.pid AS "pid!", coalesce(a.application_name, '') AS "app!",
                  coalesce(a.state, '') AS "state!",
                  coalesce(extract(epoch FROM clock_timestamp() - a.xact_start), 0)::float8 AS "open_s!"
           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
           WHERE l.locktype = 'relation' AND l.granted AND l.pid <> pg_backend_pid()
             AND l.relation = to_regclass(format('%I.users', current_schema()))
           ORDER BY a.pid"#
    )
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Ok("none now (they have ended)".to_owned());
    }
    Ok(rows
        .iter()
        .map(|r| {
            format!(
                "pid {} ({:?}, {}, transaction open {:.1} s)",
                r.pid, r.app, r.state, r.open_s
            )
        })
        .collect::<Vec<_>>()
        .join(", "))
}

/// The advisory lock key sqlx's migrator takes for a database (sqlx-postgres `generate_lock_id`):
/// the same key, so that this crate's runs and any other sqlx migrator exclude each other.
fn lock_key(database: &str) -> i64 {
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    0x3d32ad9e * i64::from(CRC.checksum(database.as_bytes()))
}

/// [`MIGRATOR`](crate::MIGRATOR), but accepting a database that recorded migrations it does not
/// know (a newer release applied them; a service of the previous release, rolled back to or still
/// running in a rolling deploy, must start there). sqlx's default refuses such a database
/// (`VersionMissing`), and every restart of that service would fail. A known migration recorded
/// with another checksum is still refused.
pub(crate) fn tolerating_newer() -> sqlx::migrate::Migrator {
    let m = &crate::MIGRATOR;
    sqlx::migrate::Migrator {
        migrations: m.migrations.clone(),
        ignore_missing: true,
        locking: m.locking,
        no_tx: m.no_tx,
        table_name: m.table_name.clone(),
        create_schemas: m.create_schemas.clone(),
    }
}

/// Whether `_sqlx_migrations` exists (a new database has none until the first migration).
async fn recorded(conn: &mut PgConnection) -> Result<bool, Error> {
    Ok(
        sqlx::query_scalar!(r#"SELECT to_regclass('_sqlx_migrations') IS NOT NULL AS "exists!""#)
            .fetch_one(conn)
            .await?,
    )
}

async fn applied(conn: &mut PgConnection, version: i64) -> Result<bool, Error> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = $1) AS "applied!""#,
        version
    )
    .fetch_one(conn)
    .await?)
}

/// A check a migration adds `NOT VALID` to `users`, where its columns may exist already (an adopted
/// database): the check's name, the migration, its columns, and what a breaking row holds and needs.
struct AddedCheck {
    name: &'static str,
    which: Which,
    version: i64,
    columns: &'static [&'static str],
    broken: &'static str,
    fix: &'static str,
}

/// Which of [`ADDED_CHECKS`] (what [`rows_breaking`] counts).
#[derive(Clone, Copy)]
enum Which {
    IdentityPair,
    Role,
    RoleSource,
    ClerkRole,
}

const ADDED_CHECKS: &[AddedCheck] = &[
    AddedCheck {
        name: "users_identity_pair_check",
        which: Which::IdentityPair,
        version: 2,
        columns: &["identity_provider", "identity_sub"],
        broken: "with a provider but no subject, or the reverse, or an empty one",
        fix: "set both or neither",
    },
    AddedCheck {
        name: "users_role_check",
        which: Which::Role,
        version: 2,
        columns: &["role"],
        broken: "with a role other than user, admin, subscriber_basic, subscriber_pro",
        fix: "set one of those",
    },
    AddedCheck {
        name: "users_role_source_check",
        which: Which::RoleSource,
        version: 5,
        columns: &["role_source"],
        broken: "with a role_source other than manual, clerk",
        fix: "set one of those",
    },
    AddedCheck {
        name: "users_clerk_role_check",
        which: Which::ClerkRole,
        version: 6,
        columns: &["clerk_role"],
        broken: "with a clerk_role other than user, admin, subscriber_basic, subscriber_pro",
        fix: "set one of those, or NULL",
    },
];

/// Before 0002, 0005 or 0006 adopts a `users` that already has their columns: refuses rows that the
/// checks they would add break. They add them `NOT VALID` (no scan under their lock), and PostgreSQL
/// checks the whole new row on every `UPDATE`: such a row could no longer be written by anyone (a
/// sign-in's `record_login`, the TypeScript app's login update, 0009's own backfill) until fixed. So
/// nothing is changed while any exists; the refusal names each check, how many rows break it, the
/// first ids and the fix. Only checks still to be added are looked at (a pending migration, its
/// columns there, no constraint of that name yet). (Read with plain scans, which block no read or
/// write. A row written between this check and the migration is not seen: 0008 then warns and leaves
/// that check `NOT VALID`.)
async fn check_rows_for_added_checks(
    conn: &mut PgConnection,
    applied: &[i64],
) -> Result<(), Error> {
    let table = sqlx::query!(
        r#"SELECT ARRAY(SELECT attname::text FROM pg_attribute
                        WHERE attrelid = to_regclass(format('%I.users', current_schema()))
                          AND attnum > 0 AND NOT attisdropped) AS "columns!",
                  ARRAY(SELECT conname::text FROM pg_constraint
                        WHERE conrelid = to_regclass(format('%I.users', current_schema())))
                    AS "constraints!""#
    )
    .fetch_one(&mut *conn)
    .await?;
    let mut broken = Vec::new();
    let mut versions = Vec::new();
    for check in ADDED_CHECKS {
        if applied.contains(&check.version)
            || table.constraints.iter().any(|c| c == check.name)
            || !check
                .columns
                .iter()
                .all(|c| table.columns.iter().any(|t| t == c))
        {
            continue;
        }
        let (n, ids) = rows_breaking(conn, check.which).await?;
        if n > 0 {
            broken.push(format!(
                "{}: {n} row(s) {} (ids {}): {}",
                check.name,
                check.broken,
                ids_shown(&ids, n),
                check.fix
            ));
            if !versions.contains(&check.version) {
                versions.push(check.version);
            }
        }
    }
    if broken.is_empty() {
        return Ok(());
    }
    let versions = versions
        .iter()
        .map(|v| format!("{v:04}"))
        .collect::<Vec<_>>()
        .join(", ");
    Err(Error::MigrationBlocked {
        reason: format!(
            "rows of users break checks that migration {versions} adds, and could not be updated \
             once it has; nothing was changed. {}. Fix those rows, then migrate again",
            broken.join("; ")
        ),
    })
}

/// How many rows break a check of [`ADDED_CHECKS`], and the first ten ids.
async fn rows_breaking(conn: &mut PgConnection, which: Which) -> Result<(i64, Vec<i32>), Error> {
    let (n, ids) = match which {
        Which::IdentityPair => {
            let r = sqlx::query!(
                r#"SELECT count(*) AS "n!", coalesce((array_agg(id ORDER BY id))[1:10], '{}') AS "ids!"
                   FROM users
                   WHERE NOT ((identity_provider IS NULL AND identity_sub IS NULL)
                              OR (identity_provider IS NOT NULL AND identity_sub IS NOT NULL
                                  AND identity_provider <> '' AND identity_sub <> ''))"#
            )
            .fetch_one(&mut *conn)
            .await?;
            (r.n, r.ids)
        }
        Which::Role => {
            let r = sqlx::query!(
                r#"SELECT count(*) AS "n!", coalesce((array_agg(id ORDER BY id))[1:10], '{}') AS "ids!"
                   FROM users
                   WHERE role NOT IN ('user', 'admin', 'subscriber_basic', 'subscriber_pro')"#
            )
            .fetch_one(&mut *conn)
            .await?;
            (r.n, r.ids)
        }
        Which::RoleSource => {
            let r = sqlx::query!(
                r#"SELECT count(*) AS "n!", coalesce((array_agg(id ORDER BY id))[1:10], '{}') AS "ids!"
                   FROM users
                   WHERE role_source NOT IN ('manual', 'clerk')"#
            )
            .fetch_one(&mut *conn)
            .await?;
            (r.n, r.ids)
        }
        Which::ClerkRole => {
            let r = sqlx::query!(
                r#"SELECT count(*) AS "n!", coalesce((array_agg(id ORDER BY id))[1:10], '{}') AS "ids!"
                   FROM users
                   WHERE clerk_role NOT IN ('user', 'admin', 'subscriber_basic', 'subscriber_pro')"#
            )
            .fetch_one(&mut *conn)
            .await?;
            (r.n, r.ids)
        }
    };
    Ok((n, ids))
}

/// The first ids of `n` rows, "…" after them when there are more.
fn ids_shown(first: &[i32], n: i64) -> String {
    let mut shown = first
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if n > i64::try_from(first.len()).unwrap_or(i64::MAX) {
        shown.push_str(", …");
    }
    shown
}

/// Refuses an identity index sign-ins cannot use: `sign_in`'s `ON CONFLICT (identity_provider,
/// identity_sub) WHERE identity_provider IS NOT NULL` needs exactly 0007's index, unique, on those
/// two columns, with that predicate, and valid. 0007 (`IF NOT EXISTS`) keeps whatever index of that
/// name it finds, and 0008 checked only that it was valid: a plain index made by hand or by other
/// tooling passed both, and every sign-in then failed with 42P10. Checked before every migration
/// run, applied or not; an INVALID index whose concurrent build is still running is told apart
/// from one a failed build left (wait for the first, drop the second).
async fn check_identity_index(conn: &mut PgConnection, index_applied: bool) -> Result<(), Error> {
    let found = sqlx::query!(
        r#"SELECT i.indisvalid AS "valid!",
                  coalesce(i.indisunique AND i.indnkeyatts = 2 AND i.indexprs IS NULL
                    AND ARRAY(SELECT a.attname::text
                              FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
                              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                              WHERE k.n <= 2 ORDER BY k.n)
                        = ARRAY['identity_provider', 'identity_sub']
                    AND pg_get_expr(i.indpred, i.indrelid) = '(identity_provider IS NOT NULL)',
                    false) AS "as_needed!",
                  pg_get_indexdef(i.indexrelid) AS "definition!",
                  (SELECT min(p.pid) FROM pg_stat_progress_create_index p
                   WHERE p.relid = i.indrelid AND p.index_relid IN (0, i.indexrelid)) AS "building"
           FROM pg_index i
           WHERE i.indexrelid = to_regclass(format('%I.users_identity_provider_sub_idx', current_schema()))"#
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(index) = found else {
        return Ok(()); // not built yet: 0007 builds it, 0008 refuses to go on without it
    };
    let undo = if index_applied {
        " then delete version 7 from _sqlx_migrations,"
    } else {
        ""
    };
    let reason = if let Some(pid) = index.building.filter(|_| !index.valid) {
        format!(
            "index users_identity_provider_sub_idx is being built concurrently (backend pid \
             {pid}): wait for the build to finish, then migrate again"
        )
    } else if !index.valid {
        format!(
            "index users_identity_provider_sub_idx is INVALID (a concurrent build that failed, a \
             duplicate identity or a cancelled session, left it): run DROP INDEX CONCURRENTLY \
             users_identity_provider_sub_idx;{undo} and migrate again"
        )
    } else if !index.as_needed {
        format!(
            "index users_identity_provider_sub_idx is not the one sign-ins need (UNIQUE on \
             (identity_provider, identity_sub) WHERE identity_provider IS NOT NULL); found: {}. \
             Run DROP INDEX CONCURRENTLY users_identity_provider_sub_idx;{undo} and migrate again",
            index.definition
        )
    } else {
        return Ok(());
    };
    Err(Error::MigrationBlocked { reason })
}

/// The up migration of `version` in [`MIGRATOR`](crate::MIGRATOR).
fn up(version: i64) -> Option<&'static Migration> {
    crate::MIGRATOR
        .iter()
        .find(|m| m.version == version && !m.migration_type.is_down_migration())
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("a checksum written here is hex"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_key_is_sqlx_migrators() {
        // sqlx-postgres 0.9 `generate_lock_id("livermore")`, as its migrator computes it.
        assert_eq!(
            lock_key("livermore"),
            0x3d32ad9e * i64::from(crc32("livermore"))
        );
        assert_ne!(lock_key("livermore"), lock_key("livermore_test"));
    }

    /// CRC-32 (IEEE), bit by bit: a second reading of what the crate computes.
    fn crc32(s: &str) -> u32 {
        let mut crc = !0u32;
        for byte in s.bytes() {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn pauses_grow_with_jitter_and_stay_bounded() {
        for n in 0..40 {
            let base = Duration::from_millis(200)
                .saturating_mul(1 << n.min(5))
                .min(Duration::from_secs(5));
            let pause = pause_after(n);
            assert!(
                pause >= base / 2 && pause <= base.mul_f64(1.5),
                "{n}: {pause:?}"
            );
        }
        assert!(pause_after(30) <= Duration::from_millis(7500));
    }

    #[test]
    fn the_first_checksums_are_sha384_and_differ_from_the_rewritten_ones() {
        for r in REWRITTEN {
            let first = hex(r.first_checksum);
            assert_eq!(first.len(), 48, "migration {}", r.version);
            let now = up(r.version).unwrap();
            assert_ne!(&*now.checksum, &first[..], "migration {}", r.version);
        }
    }
}
