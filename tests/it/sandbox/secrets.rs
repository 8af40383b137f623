//! The password and TLS: never printed, never sent to a server that is not authenticated, libpq's
//! variables ignored, one-line errors, a server that stops answering.
use super::*;

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
