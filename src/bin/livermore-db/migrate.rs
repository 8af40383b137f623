//! `migrate` and `status`: the crate's migrations against a target, one at a time, said as they go.

use std::time::Instant;

use livermore_db::{LockRetry, MIGRATOR, Prepared};
use sqlx::migrate::{MigrateError, Migration};
use sqlx::{Connection, PgConnection};

use crate::env::Target;
use crate::failure::{Failure, describe};

/// One row of `_sqlx_migrations`.
struct Applied {
    version: i64,
    description: String,
    success: bool,
    checksum: Vec<u8>,
    installed_on: String,
}

/// Where each migration stands on a database.
enum State<'m> {
    Applied(&'m Migration, String),
    Pending(&'m Migration),
    /// Applied, but the file changed since (checksum mismatch).
    Mismatched(&'m Migration),
    /// Recorded as failed (a migration that ran without a transaction and broke).
    Failed(i64, String),
    /// Applied, but this build does not know it (a newer repo applied it).
    Unknown(i64, String),
}

fn up_migrations() -> impl Iterator<Item = &'static Migration> {
    MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
}

fn label(version: i64, description: &str) -> String {
    format!("{version:04} {description}")
}

async fn read_applied(conn: &mut PgConnection) -> Result<Vec<Applied>, sqlx::Error> {
    let exists =
        sqlx::query_scalar!(r#"SELECT to_regclass('_sqlx_migrations') IS NOT NULL AS "exists!""#)
            .fetch_one(&mut *conn)
            .await?;
    if !exists {
        return Ok(Vec::new());
    }
    sqlx::query_as!(
        Applied,
        r#"SELECT version, description, success, checksum,
                  to_char(installed_on AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS "UTC"') AS "installed_on!"
           FROM _sqlx_migrations ORDER BY version"#
    )
    .fetch_all(conn)
    .await
}

fn states_of(applied: &[Applied]) -> Vec<State<'static>> {
    let mut out = Vec::new();
    for m in up_migrations() {
        out.push(match applied.iter().find(|a| a.version == m.version) {
            None => State::Pending(m),
            Some(a) if !a.success => State::Failed(a.version, a.description.clone()),
            Some(a) if a.checksum != *m.checksum => State::Mismatched(m),
            Some(a) => State::Applied(m, a.installed_on.clone()),
        });
    }
    for a in applied {
        if !up_migrations().any(|m| m.version == a.version) {
            out.push(if a.success {
                State::Unknown(a.version, a.description.clone())
            } else {
                State::Failed(a.version, a.description.clone())
            });
        }
    }
    out
}

fn print_states(states: &[State<'_>]) {
    for s in states {
        match s {
            State::Applied(m, on) => {
                println!("  {:<32} applied {on}", label(m.version, &m.description))
            }
            State::Pending(m) => println!("  {:<32} pending", label(m.version, &m.description)),
            State::Mismatched(m) => println!(
                "  {:<32} MISMATCH: edited after it was applied",
                label(m.version, &m.description)
            ),
            State::Failed(v, d) => {
                println!("  {:<32} FAILED: recorded as unsuccessful", label(*v, d))
            }
            State::Unknown(v, d) => {
                println!("  {:<32} applied, but not in this repository", label(*v, d))
            }
        }
    }
    let count = |f: fn(&State<'_>) -> bool| states.iter().filter(|s| f(s)).count();
    println!(
        "{} applied, {} pending, {} mismatched",
        count(|s| matches!(s, State::Applied(..) | State::Unknown(..))),
        count(|s| matches!(s, State::Pending(_))),
        count(|s| matches!(s, State::Mismatched(_) | State::Failed(..))),
    );
}

/// Refuses to go on past an edited or failed migration.
fn check_consistent(states: &[State<'_>]) -> Result<(), Failure> {
    for s in states {
        match s {
            State::Mismatched(m) => {
                return Err(Failure::new(format!(
                    "migration {} was edited after it was applied (checksum mismatch): restore the file as it was applied and put the change in a new migration",
                    label(m.version, &m.description)
                )));
            }
            State::Failed(v, d) => {
                return Err(Failure::new(format!(
                    "migration {} is recorded as failed in _sqlx_migrations: fix the database by hand, then delete that row",
                    label(*v, d)
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// `status`: applied, pending and mismatched migrations. Exit status 1 when any is mismatched or failed.
pub async fn status(target: &Target) -> Result<bool, Failure> {
    println!("target: {}", target.shown);
    let Some(mut conn) = target.connect().await? else {
        println!(
            "database {:?} does not exist: all {} migrations pending",
            target.database,
            up_migrations().count()
        );
        return Ok(true);
    };
    // What `migrate` would first record (migrations applied under their first texts), rolled back.
    let applied = prepare_then_read(&mut conn, true).await?;
    let states = states_of(&applied);
    print_states(&states);
    let consistent = check_consistent(&states).is_ok();
    let pending: Vec<(i64, String)> = states
        .iter()
        .filter_map(|s| match s {
            State::Pending(m) => Some((m.version, label(m.version, &m.description))),
            _ => None,
        })
        .collect();
    crate::locks::say(&mut conn, &pending)
        .await
        .map_err(|e| Failure::new(describe(&e)))?;
    let clean = say_survey(&mut conn).await?;
    Ok(consistent && clean)
}

/// Says what the pending migrations will meet in the data ([`livermore_db::survey`]), one `data:`
/// line each; whether nothing there needs fixing first.
async fn say_survey(conn: &mut PgConnection) -> Result<bool, Failure> {
    let found = livermore_db::survey(conn).await.map_err(|e| match e {
        livermore_db::Error::Database(e) => Failure::new(describe(&e)),
        other => Failure::new(other.to_string()),
    })?;
    for f in &found {
        let fix = if f.trouble { "FIX FIRST: " } else { "" };
        println!("data: {:04} {fix}{}", f.version, f.said);
    }
    Ok(found.iter().all(|f| !f.trouble))
}

/// Runs [`livermore_db::prepare_to_migrate`], says what it recorded, and reads `_sqlx_migrations`
/// after it. With `dry_run`, inside a transaction that is rolled back: nothing changes, and what it
/// would record is said as such.
async fn prepare_then_read(
    conn: &mut PgConnection,
    dry_run: bool,
) -> Result<Vec<Applied>, Failure> {
    let fail = |e: sqlx::Error| Failure::new(describe(&e));
    if !dry_run {
        say_prepared(&prepare(conn, false).await?, false);
        return read_applied(conn).await.map_err(fail);
    }
    let mut tx = conn.begin().await.map_err(fail)?;
    say_prepared(&prepare(&mut tx, true).await?, true);
    let applied = read_applied(&mut tx).await.map_err(fail);
    let _ = tx.rollback().await;
    applied
}

/// [`livermore_db::prepare_to_migrate`], its refusal said as the command says failures.
async fn prepare(conn: &mut PgConnection, dry_run: bool) -> Result<Prepared, Failure> {
    livermore_db::prepare_to_migrate(conn)
        .await
        .map_err(|e| match e {
            livermore_db::Error::MigrationBlocked { reason } => Failure::new(format!(
                "refusing to migrate{}: {reason}",
                if dry_run { " (dry run)" } else { "" }
            )),
            livermore_db::Error::Database(e) => Failure::new(describe(&e)),
            other => Failure::new(other.to_string()),
        })
}

fn say_prepared(prepared: &Prepared, dry_run: bool) {
    let (record, now) = if dry_run {
        ("would record", "would be recorded")
    } else {
        ("recorded", "is recorded")
    };
    for v in &prepared.rewritten {
        println!(
            "migration {v:04} was applied here under its first text, rewritten once before release (README, \"The migrations\"): {record} under the rewritten one"
        );
    }
    for v in &prepared.recorded {
        println!(
            "migration {v:04} {now} as applied: the first text of an earlier one did its work"
        );
    }
}

/// `migrate`: creates the database when missing, then applies the pending migrations one at a time.
pub async fn migrate(target: &Target, dry_run: bool, retry: LockRetry) -> Result<bool, Failure> {
    println!("target: {}", target.shown);
    let mut conn = match target.connect().await? {
        Some(conn) => conn,
        None if dry_run => {
            println!("would create database {:?}", target.database);
            println!("locks: none on an existing table (the database is new, so is every table)");
            for m in up_migrations() {
                println!("would apply {}", label(m.version, &m.description));
            }
            println!("dry run: nothing was changed");
            return Ok(true);
        }
        None => {
            if target.create_database().await? {
                println!("created database {:?}", target.database);
            } else {
                println!("database {:?} was created meanwhile", target.database);
            }
            target.connect_existing().await?
        }
    };

    let applied = prepare_then_read(&mut conn, dry_run).await?;
    let states = states_of(&applied);
    check_consistent(&states)?;
    let pending: Vec<&Migration> = states
        .iter()
        .filter_map(|s| match s {
            State::Pending(m) => Some(*m),
            _ => None,
        })
        .collect();

    if !pending.is_empty() {
        check_adoption(&mut conn, &pending).await?;
    }
    let labels: Vec<(i64, String)> = pending
        .iter()
        .map(|m| (m.version, label(m.version, &m.description)))
        .collect();
    crate::locks::say(&mut conn, &labels)
        .await
        .map_err(|e| Failure::new(describe(&e)))?;

    if dry_run {
        let clean = say_survey(&mut conn).await?;
        for m in &pending {
            println!("would apply {}", label(m.version, &m.description));
        }
        if pending.is_empty() {
            println!("nothing to apply");
        }
        println!("dry run: nothing was changed");
        return Ok(clean);
    }

    for m in &pending {
        let started = Instant::now();
        // `migrate_on` takes the migration lock, re-checks every applied checksum, and applies each
        // migration in its own transaction (so a failure leaves no half-applied migration), waiting
        // for locks in short attempts (livermore_db::LockRetry).
        livermore_db::migrate_on(&mut conn, Some(m.version), retry)
            .await
            .map_err(|e| match e {
                livermore_db::Error::Migrate(e) => migrate_failure(&e),
                livermore_db::Error::MigrationBlocked { reason } => {
                    Failure::new(format!("migrating is blocked: {reason}"))
                }
                livermore_db::Error::Database(e) => Failure::new(describe(&e)),
                other => Failure::new(other.to_string()),
            })?;
        println!(
            "applied {} ({} ms)",
            label(m.version, &m.description),
            started.elapsed().as_millis()
        );
    }
    if pending.is_empty() {
        println!("nothing to apply: the database is up to date");
    }
    println!("now:");
    let applied = read_applied(&mut conn)
        .await
        .map_err(|e| Failure::new(describe(&e)))?;
    print_states(&states_of(&applied));
    Ok(true)
}

/// Before a database whose `users` was not made by these migrations is adopted: refuses a `users`
/// that lives in another schema on the search path (the migrations would create a second, empty one),
/// and tries the pending migrations on an empty copy of the live tables' structure, in a transaction
/// that is rolled back (the live tables are only read from the catalog: no lock is waited on, no row
/// read), comparing what they would leave with what they create on an empty database. Any difference (a nullable `role`, a length, a
/// non-unique index, a constraint under another name, …) is listed and nothing is changed.
async fn check_adoption(conn: &mut PgConnection, pending: &[&Migration]) -> Result<(), Failure> {
    let found = sqlx::query!(
        r#"SELECT current_schema() AS "current",
                  to_regclass(quote_ident(current_schema()) || '.users') IS NOT NULL AS "here!",
                  (SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE c.relname = 'users' AND c.relkind IN ('r', 'p')
                     AND n.nspname = ANY (current_schemas(false))
                     AND n.nspname IS DISTINCT FROM current_schema()
                   LIMIT 1) AS "elsewhere""#
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| Failure::new(describe(&e)))?;
    if let (false, Some(schema)) = (found.here, &found.elsewhere) {
        return Err(Failure::new(format!(
            "refusing to migrate: a table users exists in schema {schema:?} on the search path, not in {:?} where the migrations work; they would create a second, empty users. Set the role's search_path (ALTER ROLE … SET search_path) so that the schema holding users comes first, or move the table",
            found.current.as_deref().unwrap_or("(no schema)")
        )));
    }
    let adopting = found.here && pending.iter().any(|m| m.version == 1);
    if !adopting {
        return Ok(());
    }
    let (expected, live) = crate::drift::reference_and_live(conn, true).await?;
    let mismatches = crate::drift::adoption_mismatches(&live, &expected);
    if mismatches.is_empty() {
        println!("adopting an existing users table: its shape matches what the migrations create");
        return Ok(());
    }
    println!("the existing users table differs from what the migrations create:");
    for m in &mismatches {
        println!("  - {m}");
    }
    Err(Failure::new(format!(
        "refusing to adopt this database: {} difference(s) from what the migrations create (listed above); nothing was changed. Fix the table by hand to match, then migrate again",
        mismatches.len()
    )))
}

fn migrate_failure(e: &MigrateError) -> Failure {
    let message = match e {
        MigrateError::ExecuteMigration(inner, version) => {
            let description = up_migrations()
                .find(|m| m.version == *version)
                .map_or(String::new(), |m| m.description.to_string());
            format!(
                "migration {} failed and was rolled back: {}",
                label(*version, &description),
                describe(inner)
            )
        }
        MigrateError::Execute(inner) => format!("migrating failed: {}", describe(inner)),
        MigrateError::VersionMismatch(v) => {
            format!("migration {v:04} was edited after it was applied (checksum mismatch)")
        }
        other => format!("migrating failed: {other}"),
    };
    Failure::new(message)
}
