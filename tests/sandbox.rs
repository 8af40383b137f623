//! `livermore-db --env sandbox` against an emulated sandbox: a second local PostgreSQL with TLS only,
//! SCRAM passwords and no `livermore` database, started by `scripts/local-db.sh sandbox-up`.
//!
//! Each test works in a database of its own, runs the real binary as an operator would, and checks its
//! exit status, its output (never the password) and the database afterwards.
use std::collections::HashMap;
use std::process::{Command, Output, Stdio};
use std::str::FromStr;
use std::sync::OnceLock;

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection, PgConnection};

/// Holds every character an operator's password may: `@ : / # % ? & $ ' "` and spaces.
const PASSWORD: &str = "p@ss: w/o#r%d?&$'\"x y";

/// The emulator's coordinates (`PG_SANDBOX_HOST`, `_PORT`, `_USER`, `_SSLROOTCERT`).
fn emulator() -> &'static HashMap<String, String> {
    static EMULATOR: OnceLock<HashMap<String, String>> = OnceLock::new();
    EMULATOR.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/local-db.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg("sandbox-up")
            .env("SANDBOX_EMULATOR_PASSWORD", PASSWORD)
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/local-db.sh sandbox-up");
        assert!(out.status.success(), "the sandbox emulator did not start");
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    })
}

fn var(name: &str) -> String {
    emulator()
        .get(name)
        .unwrap_or_else(|| panic!("sandbox-up printed no {name}"))
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

#[tokio::test]
async fn creates_the_missing_livermore_database_then_changes_nothing() {
    fresh("livermore").await;

    // No PG_SANDBOX_DATABASE: the default, `livermore`.
    let first = sandbox(&["migrate"], "", &[("PG_SANDBOX_DATABASE", "")]);
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    assert!(
        first
            .stdout
            .contains("target: sandbox_admin:***@127.0.0.1:"),
        "{}",
        first.stdout
    );
    assert!(
        first.stdout.contains("created database \"livermore\""),
        "{}",
        first.stdout
    );
    for m in livermore_db::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
    {
        let line = format!("applied {:04} {}", m.version, m.description);
        assert!(
            first.stdout.contains(&line),
            "no {line:?} in\n{}",
            first.stdout
        );
    }

    let mut conn = connect("livermore").await;
    assert_eq!(applied_versions(&mut conn).await, all_versions());
    let recorded = migration_rows(&mut conn).await;

    let second = sandbox(&["migrate"], "livermore", &[]);
    assert_eq!(second.code, 0, "{}{}", second.stdout, second.stderr);
    assert!(
        second.stdout.contains("nothing to apply"),
        "{}",
        second.stdout
    );
    assert!(!second.stdout.contains("applied 0"), "{}", second.stdout);
    assert!(
        !second.stdout.contains("created database"),
        "{}",
        second.stdout
    );
    assert_eq!(
        migration_rows(&mut conn).await,
        recorded,
        "the second run changed nothing"
    );

    let status = sandbox(&["status"], "livermore", &[]);
    assert_eq!(status.code, 0);
    assert!(status.stdout.contains(&format!(
        "{} applied, 0 pending, 0 mismatched",
        all_versions().len()
    )));
}

#[tokio::test]
async fn dry_run_changes_nothing() {
    fresh("livermore_dry_run").await;
    let run = sandbox(&["migrate", "--dry-run"], "livermore_dry_run", &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("would create database \"livermore_dry_run\"")
    );
    assert!(run.stdout.contains("would apply 0001"));
    assert!(
        !database_exists("livermore_dry_run").await,
        "a dry run created the database"
    );

    create("livermore_dry_run").await;
    let run = sandbox(&["migrate", "--dry-run"], "livermore_dry_run", &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("would apply 0003"));
    let mut conn = connect("livermore_dry_run").await;
    let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(table, None, "a dry run wrote to the database");

    let status = sandbox(&["status"], "livermore_dry_run", &[]);
    assert!(
        status
            .stdout
            .contains(&format!("0 applied, {} pending", all_versions().len())),
        "{}",
        status.stdout
    );
}

#[tokio::test]
async fn missing_variables_are_named_before_any_connection() {
    for (unset, expected) in [
        (
            vec!["PG_SANDBOX_HOST", "PG_SANDBOX_USER", "PG_SANDBOX_PASSWORD"],
            "error: missing required environment variables: PG_SANDBOX_HOST, PG_SANDBOX_USER, PG_SANDBOX_PASSWORD",
        ),
        (
            vec!["PG_SANDBOX_PASSWORD"],
            "error: missing required environment variable: PG_SANDBOX_PASSWORD",
        ),
    ] {
        let overrides: Vec<(&str, &str)> = unset.iter().map(|k| (*k, "")).collect();
        let run = sandbox(&["migrate"], "livermore_unused", &overrides);
        assert_eq!(run.code, 1);
        assert_eq!(one_line_error(&run), expected);
        assert_eq!(run.stdout, "", "nothing was tried");
    }
    let run = livermore_db(&["--env", "prod", "migrate"], &[]);
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("valid: local, sandbox"));
}

#[tokio::test]
async fn connection_failures_are_one_line_without_secrets() {
    let wrong = sandbox(
        &["migrate"],
        "livermore_unused",
        &[("PG_SANDBOX_PASSWORD", "not the p@ssword")],
    );
    let line = one_line_error(&wrong);
    assert!(line.contains("password authentication failed"), "{line}");
    assert!(!line.contains("not the p@ssword"), "{line}");

    let refused = sandbox(&["status"], "livermore_unused", &[("PG_SANDBOX_PORT", "1")]);
    assert!(
        one_line_error(&refused).contains("Connection refused"),
        "{}",
        refused.stderr
    );

    let unknown = sandbox(
        &["status"],
        "livermore_unused",
        &[("PG_SANDBOX_HOST", "no-such-host.invalid")],
    );
    assert!(
        one_line_error(&unknown).contains("no-such-host.invalid"),
        "{}",
        unknown.stderr
    );

    let untrusted = sandbox(
        &["status"],
        "livermore_tls",
        &[("PG_SANDBOX_SSLMODE", "verify-full")],
    );
    assert!(
        one_line_error(&untrusted).contains("certificate"),
        "{}",
        untrusted.stderr
    );
    let trusted = sandbox(
        &["status"],
        "livermore_tls",
        &[
            ("PG_SANDBOX_SSLMODE", "verify-full"),
            ("PG_SANDBOX_SSLROOTCERT", &var("PG_SANDBOX_SSLROOTCERT")),
        ],
    );
    assert_eq!(
        trusted.code, 0,
        "verify-full with the emulator's CA: {}",
        trusted.stderr
    );
}

#[tokio::test]
async fn a_server_without_tls_is_refused() {
    // The dev cluster speaks plaintext only.
    let url =
        std::env::var("DATABASE_URL").expect("DATABASE_URL: the dev cluster (make test sets it)");
    let plain = PgConnectOptions::from_str(&url).expect("DATABASE_URL parses");
    let port = plain.get_port().to_string();
    let run = sandbox(
        &["migrate"],
        "livermore_unused",
        &[("PG_SANDBOX_PORT", &port)],
    );
    let line = one_line_error(&run);
    assert!(line.contains("does not offer TLS"), "{line}");
}

#[tokio::test]
async fn drift_is_reported_after_a_hand_made_change_and_not_before() {
    fresh("livermore_drift").await;
    assert_eq!(sandbox(&["migrate"], "livermore_drift", &[]).code, 0);

    let clean = sandbox(&["drift"], "livermore_drift", &[]);
    assert_eq!(clean.code, 0, "{}{}", clean.stdout, clean.stderr);
    assert!(clean.stdout.contains("no drift"), "{}", clean.stdout);

    let mut conn = connect("livermore_drift").await;
    sqlx::query("ALTER TABLE users ALTER COLUMN display_name TYPE varchar(200)")
        .execute(&mut conn)
        .await
        .unwrap();
    let drifted = sandbox(&["drift"], "livermore_drift", &[]);
    assert_eq!(drifted.code, 1, "{}{}", drifted.stdout, drifted.stderr);
    assert!(
        drifted.stdout.contains("column display_name differs"),
        "{}",
        drifted.stdout
    );
    assert!(
        drifted.stdout.contains("character varying(200)"),
        "{}",
        drifted.stdout
    );
    assert!(
        drifted.stdout.contains("character varying(100)"),
        "{}",
        drifted.stdout
    );

    // The check left nothing behind.
    let scratch: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'livermore_db_drift%'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(scratch, 0);
}

async fn adopt(database: &str, fixture: &'static str) {
    create(database).await;
    let mut conn = connect(database).await;
    sqlx::raw_sql(fixture)
        .execute(&mut conn)
        .await
        .expect("load the old schema");
    let snapshot = "SELECT string_agg(concat_ws('|', id, username, email, is_active, created_at, updated_at),
                                      E'\\n' ORDER BY id) || E'\\n--\\n' ||
                           (SELECT string_agg(to_jsonb(w)::text, E'\\n' ORDER BY id) FROM watchlists w)
                    FROM users";
    let before: String = sqlx::query_scalar(snapshot)
        .fetch_one(&mut conn)
        .await
        .unwrap();

    let run = sandbox(&["migrate"], database, &[]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(!run.stdout.contains("created database"));

    let after: String = sqlx::query_scalar(snapshot)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(after, before, "adoption changed rows");
    assert_eq!(applied_versions(&mut conn).await, all_versions());
    let drift = sandbox(&["drift"], database, &[]);
    assert_eq!(
        drift.code, 0,
        "an adopted schema matches the migrations:\n{}",
        drift.stdout
    );
}

#[tokio::test]
async fn adopts_a_pre_iam_database() {
    adopt(
        "livermore_adopt_pre_iam",
        include_str!("fixtures/old_schema_pre_iam.sql"),
    )
    .await;
}

#[tokio::test]
async fn adopts_a_database_with_the_iam_columns() {
    adopt(
        "livermore_adopt_iam",
        include_str!("fixtures/old_schema_with_iam.sql"),
    )
    .await;
}

#[tokio::test]
async fn an_edited_migration_stops_the_run() {
    fresh("livermore_checksum").await;
    assert_eq!(sandbox(&["migrate"], "livermore_checksum", &[]).code, 0);
    let mut conn = connect("livermore_checksum").await;
    // What an edited file looks like from the database: its checksum no longer matches.
    sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x00' WHERE version = 2")
        .execute(&mut conn)
        .await
        .unwrap();

    let run = sandbox(&["migrate"], "livermore_checksum", &[]);
    let line = one_line_error(&run);
    assert!(
        line.contains("0002 users iam") && line.contains("edited after it was applied"),
        "{line}"
    );

    let status = sandbox(&["status"], "livermore_checksum", &[]);
    assert_eq!(status.code, 1);
    assert!(status.stdout.contains("MISMATCH"), "{}", status.stdout);
}

#[tokio::test]
async fn a_locked_table_fails_fast_and_leaves_the_database_as_it_was() {
    fresh("livermore_locked").await;
    create("livermore_locked").await;
    let mut conn = connect("livermore_locked").await;
    livermore_db::MIGRATOR
        .run_to(2, &mut conn)
        .await
        .expect("migrate to 0002");

    // Live traffic holding a lock on users.
    let mut traffic = connect("livermore_locked").await;
    let mut tx = traffic.begin().await.unwrap();
    sqlx::query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();

    let run = tokio::task::spawn_blocking(|| sandbox(&["migrate"], "livermore_locked", &[]))
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    // It gave up on its own (the migration's lock_timeout) instead of queueing behind the lock.
    let line = one_line_error(&run);
    assert!(
        line.contains("0003") && line.contains("lock timeout"),
        "{line}"
    );
    assert_eq!(
        applied_versions(&mut conn).await,
        [1, 2],
        "no half-applied migration"
    );
    let default: String = sqlx::query_scalar(
        "SELECT column_default FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'created_at'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(default, "now()", "0003 was rolled back");

    // Without the lock it goes through.
    assert_eq!(sandbox(&["migrate"], "livermore_locked", &[]).code, 0);
    assert_eq!(applied_versions(&mut conn).await, all_versions());
}
