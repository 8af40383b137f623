//! `livermore-db --env sandbox` against an emulated sandbox: a second local PostgreSQL with TLS only,
//! SCRAM passwords and no `livermore` database, started by `scripts/sandbox-emulator.sh up`.
//!
//! Each test works in a database of its own, runs the real binary as an operator would, and checks its
//! exit status, its output (never the password) and the database afterwards.
use std::collections::HashMap;
use std::process::{Command, Output, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::support::{key_values, run_script_with};

mod migrate;
mod secrets;

/// Holds every character an operator's password may: `@ : / # % ? & $ ' "` and spaces.
const PASSWORD: &str = "p@ss: w/o#r%d?&$'\"x y";

/// The emulator's coordinates (`PG_SANDBOX_HOST`, `_PORT`, `_USER`, `_SSLROOTCERT`).
fn emulator() -> &'static HashMap<String, String> {
    static EMULATOR: OnceLock<HashMap<String, String>> = OnceLock::new();
    EMULATOR.get_or_init(|| {
        let stdout = run_script_with(
            "sandbox-emulator.sh",
            &["up"],
            &[("SANDBOX_EMULATOR_PASSWORD", PASSWORD)],
        );
        key_values(&stdout)
    })
}

fn var(name: &str) -> String {
    emulator()
        .get(name)
        .unwrap_or_else(|| panic!("sandbox-emulator.sh up printed no {name}"))
        .clone()
}

/// The binary, with a clean environment but for PATH and the given variables.
fn livermore_db(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_livermore-db"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(args);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().expect("run livermore-db")
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs a sandbox command against `database`, with extra variables overriding the emulator's.
fn sandbox(args: &[&str], database: &str, overrides: &[(&str, &str)]) -> Run {
    let mut vars: Vec<(&str, String)> = vec![
        ("PG_SANDBOX_HOST", var("PG_SANDBOX_HOST")),
        ("PG_SANDBOX_PORT", var("PG_SANDBOX_PORT")),
        ("PG_SANDBOX_USER", var("PG_SANDBOX_USER")),
        ("PG_SANDBOX_PASSWORD", PASSWORD.to_owned()),
        ("PG_SANDBOX_DATABASE", database.to_owned()),
        // The emulator's CA: the default mode, verify-full, authenticates it with that.
        ("PG_SANDBOX_SSLROOTCERT", var("PG_SANDBOX_SSLROOTCERT")),
    ];
    for (k, v) in overrides {
        vars.retain(|(name, _)| name != k);
        if !v.is_empty() {
            vars.push((k, v.to_string()));
        }
    }
    let mut full = vec!["--env", "sandbox"];
    full.extend_from_slice(args);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = livermore_db(&full, &vars);
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_no_secret(&run);
    run
}

/// Neither the password nor a stack trace in anything the command printed.
fn assert_no_secret(run: &Run) {
    for (name, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
        assert!(
            !text.contains(PASSWORD),
            "the password appears in {name}:\n{text}"
        );
        assert!(
            !text.contains("w/o#r%d"),
            "part of the password appears in {name}:\n{text}"
        );
        assert!(
            !text.contains("panicked") && !text.contains("backtrace"),
            "{name}:\n{text}"
        );
    }
}

/// The error line of a failed run: exactly one line on stderr.
fn one_line_error(run: &Run) -> &str {
    assert_ne!(
        run.code, 0,
        "expected a failure:\n{}{}",
        run.stdout, run.stderr
    );
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stderr, got:\n{}",
        run.stderr
    );
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    lines[0]
}

fn options(database: &str) -> PgConnectOptions {
    PgConnectOptions::new_without_pgpass()
        .host(&var("PG_SANDBOX_HOST"))
        .port(var("PG_SANDBOX_PORT").parse().expect("port"))
        .username(&var("PG_SANDBOX_USER"))
        .password(PASSWORD)
        .database(database)
        .ssl_mode(PgSslMode::Require)
}

async fn connect(database: &str) -> PgConnection {
    options(database)
        .connect()
        .await
        .expect("connect to the emulated sandbox")
}

/// Drops `database` so that the test starts where an operator would: without it.
async fn fresh(database: &str) {
    let mut admin = connect("postgres").await;
    // Not WITH (FORCE): that would have to signal the superuser's autovacuum workers, which the
    // sandbox's unprivileged role may not; PostgreSQL cancels those itself. A session of ours that is
    // still closing makes the drop fail with 55006 for a moment: wait for it.
    let sql = format!("DROP DATABASE IF EXISTS \"{database}\"");
    for attempt in 1.. {
        match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&mut admin)
            .await
        {
            Ok(_) => return,
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("55006") && attempt < 50 =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("drop database {database}: {e}"),
        }
    }
}

async fn create(database: &str) {
    fresh(database).await;
    let mut admin = connect("postgres").await;
    let sql = format!("CREATE DATABASE \"{database}\"");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut admin)
        .await
        .expect("create database");
}

async fn database_exists(database: &str) -> bool {
    let mut admin = connect("postgres").await;
    sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(database)
        .fetch_one(&mut admin)
        .await
        .unwrap()
}

/// `_sqlx_migrations` as text, one row a line.
async fn migration_rows(conn: &mut PgConnection) -> String {
    sqlx::query_scalar::<_, String>(
        "SELECT string_agg(concat_ws('|', version, description, success, encode(checksum, 'hex'), installed_on),
                           E'\\n' ORDER BY version)
         FROM _sqlx_migrations",
    )
    .fetch_one(conn)
    .await
    .unwrap()
}

async fn applied_versions(conn: &mut PgConnection) -> Vec<i64> {
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(conn)
        .await
        .unwrap()
}

fn all_versions() -> Vec<i64> {
    livermore_db::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .collect()
}
