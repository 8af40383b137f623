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

/// Holds every character an operator's password may: `@ : / # % ? & $ ' "` and spaces.
const PASSWORD: &str = "p@ss: w/o#r%d?&$'\"x y";

/// The emulator's coordinates (`PG_SANDBOX_HOST`, `_PORT`, `_USER`, `_SSLROOTCERT`).
fn emulator() -> &'static HashMap<String, String> {
    static EMULATOR: OnceLock<HashMap<String, String>> = OnceLock::new();
    EMULATOR.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/sandbox-emulator.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg("up")
            .env("SANDBOX_EMULATOR_PASSWORD", PASSWORD)
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/sandbox-emulator.sh up");
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
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("possible values: local, sandbox"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
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
        &[
            ("PG_SANDBOX_SSLMODE", "verify-full"),
            ("PG_SANDBOX_SSLROOTCERT", ""),
        ],
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

/// A server that speaks just enough of PostgreSQL's protocol to capture a password, as a machine in
/// the network path would: it accepts TLS with a self-signed certificate for `localhost` and
/// `127.0.0.1`, then asks for the password in cleartext. Returns its port and the passwords that
/// reached it.
async fn password_catcher() -> (u16, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(key_pair.serialize_der());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key.into())
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let captured = Arc::new(Mutex::new(Vec::new()));
    let sink = captured.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let (acceptor, sink) = (acceptor.clone(), sink.clone());
            tokio::spawn(async move {
                let mut ssl_request = [0u8; 8];
                if tcp.read_exact(&mut ssl_request).await.is_err()
                    || tcp.write_all(b"S").await.is_err()
                {
                    return;
                }
                // A client that verifies the certificate hangs up here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut len = [0u8; 4];
                if tls.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut startup = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
                if tls.read_exact(&mut startup).await.is_err() {
                    return;
                }
                // AuthenticationCleartextPassword.
                if tls
                    .write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3])
                    .await
                    .is_err()
                    || tls.flush().await.is_err()
                {
                    return;
                }
                let mut header = [0u8; 5];
                if tls.read_exact(&mut header).await.is_err() || header[0] != b'p' {
                    return;
                }
                let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
                let mut body = vec![0u8; len.saturating_sub(4)];
                if tls.read_exact(&mut body).await.is_ok() {
                    let password = String::from_utf8_lossy(&body)
                        .trim_end_matches('\0')
                        .to_owned();
                    sink.lock().unwrap().push(password);
                }
            });
        }
    });
    (port, captured)
}

/// [`sandbox`] off the async runtime, so that a server in this test can answer meanwhile.
async fn sandbox_async(
    args: &'static [&'static str],
    overrides: Vec<(&'static str, String)>,
) -> Run {
    tokio::task::spawn_blocking(move || {
        let o: Vec<(&str, &str)> = overrides.iter().map(|(k, v)| (*k, v.as_str())).collect();
        sandbox(args, "livermore", &o)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_password_never_reaches_a_server_that_is_not_authenticated() {
    let (port, captured) = password_catcher().await;
    let port = port.to_string();
    let emulator_ca = var("PG_SANDBOX_SSLROOTCERT");
    for (mode, root) in [
        ("", ""),                   // the default: verify-full against the public web roots
        ("", emulator_ca.as_str()), // a private CA that did not sign this certificate
        ("verify-full", ""),
        ("verify-ca", emulator_ca.as_str()),
    ] {
        let run = sandbox_async(
            &["status"],
            vec![
                ("PG_SANDBOX_PORT", port.clone()),
                ("PG_SANDBOX_SSLMODE", mode.to_owned()),
                ("PG_SANDBOX_SSLROOTCERT", root.to_owned()),
            ],
        )
        .await;
        let line = one_line_error(&run).to_owned();
        assert!(
            line.contains("certificate"),
            "mode {mode:?} root {root:?}: {line}"
        );
        assert!(
            captured.lock().unwrap().is_empty(),
            "mode {mode:?} root {root:?} sent the password"
        );
    }

    // The control, which shows the catcher works: `require`, asked for by name, does not
    // authenticate the server, says so, and the password goes to it.
    let run = sandbox_async(
        &["status"],
        vec![
            ("PG_SANDBOX_PORT", port.clone()),
            ("PG_SANDBOX_SSLMODE", "require".to_owned()),
            ("PG_SANDBOX_SSLROOTCERT", String::new()),
        ],
    )
    .await;
    assert!(run.stderr.contains("NOT authenticated"), "{}", run.stderr);
    assert_eq!(*captured.lock().unwrap(), [PASSWORD]);
}

#[tokio::test]
async fn tls_modes_that_cannot_authenticate_are_usage_errors() {
    let no_ca = sandbox(
        &["status"],
        "livermore_unused",
        &[
            ("PG_SANDBOX_SSLMODE", "verify-ca"),
            ("PG_SANDBOX_SSLROOTCERT", ""),
        ],
    );
    assert_eq!(no_ca.code, 2, "{}", no_ca.stderr);
    assert!(
        no_ca.stderr.contains("needs PG_SANDBOX_SSLROOTCERT"),
        "{}",
        no_ca.stderr
    );
    let ignored_ca = sandbox(
        &["status"],
        "livermore_unused",
        &[("PG_SANDBOX_SSLMODE", "require")],
    );
    assert_eq!(ignored_ca.code, 2, "{}", ignored_ca.stderr);
    // The default against the emulator, without its CA: refused before any password is sent.
    let default = sandbox(
        &["status"],
        "livermore_unused",
        &[("PG_SANDBOX_SSLROOTCERT", "")],
    );
    assert!(
        one_line_error(&default).contains("certificate"),
        "{}",
        default.stderr
    );
}

#[tokio::test]
async fn the_shells_libpq_variables_never_reach_the_sandbox() {
    fresh("livermore_env").await;
    let hostile = [
        ("PGOPTIONS", "-c search_path=evil"),
        ("PGSSLROOTCERT", "/nonexistent/root.crt"),
        ("PGSSLCERT", "/nonexistent/client.crt"),
        ("PGSSLKEY", "/nonexistent/client.key"),
        ("PGSSLMODE", "disable"),
        ("PGHOST", "evil.invalid"),
        ("PGHOSTADDR", "192.0.2.1"),
        ("PGPORT", "1"),
        ("PGDATABASE", "evil"),
        ("PGUSER", "evil"),
        ("PGAPPNAME", "evil"),
    ];
    let run = sandbox(&["migrate"], "livermore_env", &hostile);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let mut conn = connect("livermore_env").await;
    let (users, evil): (Option<String>, bool) = sqlx::query_as(
        "SELECT to_regclass('public.users')::text, EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'evil')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(users.as_deref(), Some("users"), "the schema went to public");
    assert!(!evil);
}

/// Sends `signal` (`STOP`, `CONT`) to one server process.
fn signal(pid: i32, signal: &str) {
    let ok = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -s {signal} {pid}");
}

/// Resumes a stopped server process when dropped, so a failing test never leaves it stopped.
struct Resume(i32);
impl Drop for Resume {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

#[tokio::test]
async fn a_server_that_stops_answering_ends_the_command_in_bounded_time() {
    fresh("livermore_hang").await;
    {
        let mut admin = connect("postgres").await;
        sqlx::raw_sql("CREATE DATABASE livermore_hang")
            .execute(&mut admin)
            .await
            .unwrap();
    }
    let mut conn = connect("livermore_hang").await;
    livermore_db::MIGRATOR.run_to(4, &mut conn).await.unwrap();
    // A holder keeps `users` locked, so that 0005 waits for it while the server stops answering.
    let mut holder = connect("livermore_hang").await;
    sqlx::raw_sql("BEGIN; LOCK TABLE users IN ACCESS SHARE MODE")
        .execute(&mut holder)
        .await
        .unwrap();

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_livermore-db"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LIVERMORE_COMMAND_TIMEOUT", "6")
        .args(["--env", "sandbox", "migrate"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for k in [
        "PG_SANDBOX_HOST",
        "PG_SANDBOX_PORT",
        "PG_SANDBOX_USER",
        "PG_SANDBOX_SSLROOTCERT",
    ] {
        cmd.env(k, var(k));
    }
    cmd.env("PG_SANDBOX_PASSWORD", PASSWORD)
        .env("PG_SANDBOX_DATABASE", "livermore_hang");
    let started = std::time::Instant::now();
    let child = cmd.spawn().expect("start livermore-db");

    // The command's session, waiting on the lock: stop its server process (SIGSTOP), as a server that
    // hangs or a network that drops packets would look to the command.
    let backend = loop {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = 'livermore_hang' AND application_name = 'livermore-db'
               AND wait_event_type = 'Lock'",
        )
        .fetch_optional(&mut conn)
        .await
        .unwrap();
        if let Some(pid) = pid {
            break pid;
        }
        assert!(
            started.elapsed().as_secs() < 5,
            "the command never waited on the lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    signal(backend, "STOP");
    let resume = Resume(backend);

    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let elapsed = started.elapsed();
    drop(resume);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no result within 6 s"), "{stderr}");
    assert!(elapsed.as_secs() < 15, "{elapsed:?}");

    // Nothing half-applied: once the server answers again, 0005 is not recorded and its columns
    // are not there.
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
    let (versions, released): (Vec<i64>, bool) = sqlx::query_as(
        "SELECT (SELECT array_agg(version ORDER BY version) FROM _sqlx_migrations WHERE success),
                EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'users'::regclass
                        AND attname = 'released_email')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!((versions, released), (vec![1, 2, 3, 4], false));
}

#[tokio::test]
async fn adoption_refuses_a_shape_other_than_the_migrations_create() {
    let fixture = include_str!("fixtures/old_schema_with_iam.sql");
    // (database, edits to the fixture, what the command must say)
    type Variant = (
        &'static str,
        Vec<(&'static str, &'static str)>,
        &'static str,
    );
    let variants: [Variant; 6] = [
        (
            "livermore_shape_nullable_role",
            vec![(
                "role varchar(20) NOT NULL DEFAULT 'user'",
                "role varchar(20) DEFAULT 'user'",
            )],
            "column role is `character varying(20) DEFAULT 'user'::character varying`",
        ),
        (
            "livermore_shape_index",
            vec![(
                "CREATE UNIQUE INDEX users_identity",
                "CREATE INDEX users_identity",
            )],
            "index users_identity_provider_sub_idx is `CREATE INDEX",
        ),
        (
            "livermore_shape_role_length",
            vec![
                ("role varchar(20)", "role varchar(10)"),
                ("'subscriber_pro'", "'admin'"),
            ],
            "column role is `character varying(10)",
        ),
        (
            "livermore_shape_email_key",
            vec![(
                "CONSTRAINT users_email_unique UNIQUE",
                "CONSTRAINT users_email_key UNIQUE",
            )],
            "constraint users_email_unique is missing",
        ),
        (
            "livermore_shape_sub_text",
            vec![("identity_sub varchar(255)", "identity_sub text")],
            "column identity_sub is `text`",
        ),
        (
            "livermore_shape_elsewhere",
            vec![
                (
                    "CREATE TABLE users (",
                    "CREATE SCHEMA legacy; CREATE TABLE legacy.users (",
                ),
                (
                    "ON users (identity_provider",
                    "ON legacy.users (identity_provider",
                ),
                ("REFERENCES users (id)", "REFERENCES legacy.users (id)"),
                ("INSERT INTO users", "INSERT INTO legacy.users"),
            ],
            "",
        ),
    ];
    for (database, edits, expected) in variants {
        fresh(database).await;
        create(database).await;
        let mut sql = fixture.to_owned();
        for (from, to) in edits {
            assert!(
                sql.contains(from),
                "{database}: the fixture has no {from:?}"
            );
            sql = sql.replace(from, to);
        }
        let mut conn = connect(database).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap();
        if database.ends_with("elsewhere") {
            let set = format!("ALTER DATABASE {database} SET search_path = public, legacy");
            sqlx::raw_sql(sqlx::AssertSqlSafe(set))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        let before = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();

        let run = sandbox(&["migrate"], database, &[]);
        let line = one_line_error(&run).to_owned();
        if database.ends_with("elsewhere") {
            assert!(
                line.contains(r#"a table users exists in schema "legacy""#),
                "{database}: {line}"
            );
        } else {
            assert!(line.contains("refusing to adopt"), "{database}: {line}");
            assert!(run.stdout.contains(expected), "{database}:\n{}", run.stdout);
        }
        let mut conn = connect(database).await;
        let (after, recorded): (i64, bool) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace),
                    to_regclass('public._sqlx_migrations') IS NOT NULL",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(
            (after, recorded),
            (before, false),
            "{database}: nothing changed"
        );
    }
}

/// The dev cluster's folder, as `scripts/local-db.sh status` says.
fn dev_cluster_dir() -> std::path::PathBuf {
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/local-db.sh"))
        .arg("status")
        .env_remove("LIVERMORE_DATABASE_URL")
        .output()
        .expect("run local-db.sh status");
    let text = String::from_utf8_lossy(&out.stderr);
    let dir = text
        .split("files in ")
        .nth(1)
        .map(str::trim)
        .unwrap_or_else(|| panic!("no folder in {text}"));
    std::path::PathBuf::from(dir)
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[tokio::test]
async fn the_dev_cluster_is_its_owners_alone() {
    let url =
        std::env::var("DATABASE_URL").expect("DATABASE_URL: the dev cluster (make test sets it)");
    let with = PgConnectOptions::from_str(&url).expect("DATABASE_URL parses");
    // Without the password (any local user's view of it): refused.
    let without = PgConnectOptions::new_without_pgpass()
        .host(with.get_host())
        .port(with.get_port())
        .username(with.get_username())
        .database("postgres");
    let err = without
        .connect()
        .await
        .expect_err("a TCP connection without the password");
    assert!(err.to_string().contains("password"), "{err}");
    let wrong = without.clone().password("guess");
    let err = wrong.connect().await.expect_err("a wrong password");
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );
    with.connect().await.expect("with the cluster's password");

    let dir = dev_cluster_dir();
    assert_eq!(mode(&dir.join("socket")), 0o700, "{}", dir.display());
    assert_eq!(mode(&dir.join("password")), 0o600);
    assert_eq!(mode(&dir), 0o700);
}

#[tokio::test]
async fn a_fallback_folder_planted_by_someone_else_is_refused() {
    // As root (CI) the test plants a folder owned by `nobody`; as anyone else it points the script
    // at a folder root owns: either way, a folder that is not the server user's.
    let root_user = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    let up = |base: &std::path::Path| {
        Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/local-db.sh"))
            .arg("up")
            .env_remove("LIVERMORE_DATABASE_URL")
            .env("LOCAL_PG_BASE", base)
            .env("LOCAL_PG_PORT", "54398")
            .output()
            .expect("run local-db.sh up")
    };
    let root = std::env::temp_dir().join(format!("livermore-plant-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let target = root.join("elsewhere");
    std::fs::create_dir_all(&target).unwrap();

    // A link to a folder of the attacker's choosing.
    let link = root.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = up(&link);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("symbolic link"));

    // A folder someone else made first (as root: owned by nobody, open to all; else root's).
    let (planted, owner) = if root_user {
        let planted = root.join("planted");
        std::fs::create_dir_all(&planted).unwrap();
        assert!(
            Command::new("chown")
                .args(["nobody"])
                .arg(&planted)
                .status()
                .unwrap()
                .success()
        );
        (planted, "nobody")
    } else {
        (std::path::PathBuf::from("/var/tmp"), "root")
    };
    let out = up(&planted);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains(&format!("belongs to {owner}")), "{said}");
    assert!(!planted.join("dev").exists(), "a cluster made in it");

    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        0,
        "nothing written through the link"
    );
    if root_user {
        assert_eq!(
            std::fs::read_dir(&planted).unwrap().count(),
            0,
            "nothing written into it"
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[tokio::test]
async fn no_command_prints_the_password_when_its_connection_fails() {
    let file = std::env::temp_dir().join(format!("livermore-secret-{}.json", std::process::id()));
    std::fs::write(&file, "[]").unwrap();
    let file = file.display().to_string();
    let commands: [&[&str]; 5] = [
        &["migrate"],
        &["migrate", "--dry-run"],
        &["status"],
        &["drift"],
        &["import-clerk", &file],
    ];
    let wrong = "Wr0ng p@ss:w/o#rd";
    for args in commands {
        // `sandbox` checks that the real password appears nowhere; here also the wrong one.
        for overrides in [
            vec![("PG_SANDBOX_PORT", "1")],
            vec![("PG_SANDBOX_PASSWORD", wrong)],
        ] {
            let run = sandbox(args, "livermore_secret", &overrides);
            one_line_error(&run);
            assert!(
                !run.stdout.contains(wrong) && !run.stderr.contains(wrong),
                "{args:?}: {}{}",
                run.stdout,
                run.stderr
            );
        }
        // --env local, with the password in the URL.
        let mut full = vec!["--env", "local"];
        full.extend_from_slice(args);
        let out = livermore_db(
            &full,
            &[(
                "LIVERMORE_DATABASE_URL",
                "postgres://u:S3cret-pw%40x@127.0.0.1:1/db",
            )],
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{args:?}: {text}");
        assert!(!text.contains("S3cret"), "{args:?}: {text}");
    }
    std::fs::remove_file(&file).ok();
}
