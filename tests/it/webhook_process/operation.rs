//! What an operator sees: no value from a body in a log line or a response, and start-up that
//! fails clearly without a usable configuration.
use super::*;

/// Every field of a delivery that can fail, or that is personal, holds a marker: it must appear in no
/// log line and no response. Then the role rule over HTTP, and the metrics.
#[sqlx::test]
async fn no_value_from_a_body_reaches_a_log_line_or_a_response(pool: PgPool) {
    const MARKER: &str = "zqmarker7731";
    let program = Program::start(url_of(&pool).as_str(), &[]).await;
    let m = MARKER;
    let long_name = m.repeat(10);
    let long_id = m.repeat(30);
    let cases: Vec<(String, u16)> = vec![
        (event_body("user.created", clerk_user("user_m1", "m1@example.com", T0, json!({"updated_at": m}))), 400),
        (event_body("user.created", clerk_user("user_m2", "m2@example.com", T0, json!({"last_sign_in_at": m}))), 400),
        (event_body("user.created", clerk_user("user_m3", "m3@example.com", T0, json!({"public_metadata": {"role": m}}))), 200),
        (event_body("user.created", clerk_user("user_m4", "m4@example.com", T0, json!({"public_metadata": {"role": [m]}}))), 200),
        (event_body("user.created", clerk_user("user_m5", "m5@example.com", T0, json!({"first_name": long_name}))), 200),
        (event_body("user.created", clerk_user("user_m6", m, T0, json!({})))  , 400),
        (event_body("user.created", clerk_user("user_m7", "m7@example.com", T0, json!({"image_url": m}))), 400),
        (event_body("user.created", clerk_user(&long_id, "m8@example.com", T0, json!({}))), 400),
        (json!({"type": "user.created", "data": clerk_user("user_m9", "m9@example.com", T0, json!({})), "timestamp": m}).to_string(), 400),
        (json!({"type": m, "data": {}}).to_string(), 200),
        (json!({"type": "user.created", "data": m}).to_string(), 400),
        (event_body("user.created", clerk_user("user_m10", &format!("{m}@example.com"), T0, json!({"first_name": m, "last_name": m}))), 200),
        (event_body("user.created", clerk_user("user_m11", &format!("{m}@example.com"), T0, json!({}))), 409),
        (event_body("user.deleted", json!({"id": m, "deleted": true})), 200),
        (format!("{{\"type\": \"{m}"), 400),
    ];
    for (n, (body, expected)) in cases.iter().enumerate() {
        let (status, _, response) = program.deliver(&format!("msg_m{n}"), body).await;
        assert_eq!(status, *expected, "case {n}: {response}");
        assert!(
            !response.to_string().contains(MARKER),
            "case {n}: {response}"
        );
    }
    // One log line per delivery, each with what an operator needs.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = program.logs();
    let deliveries: Vec<&String> = logs
        .iter()
        .filter(|l| l.contains("clerk webhook"))
        .collect();
    assert_eq!(deliveries.len(), cases.len(), "{logs:#?}");
    for line in &deliveries {
        for field in [
            "message_id=",
            "outcome=",
            "status=",
            "latency_ms=",
            "event_type=",
        ] {
            assert!(line.contains(field), "{field} missing: {line}");
        }
    }
    for line in &logs {
        assert!(!line.contains(MARKER), "a body value in a log line: {line}");
        assert!(!line.contains("whsec_"), "a secret in a log line: {line}");
    }

    // The role rule, over HTTP: created with admin, demoted by hand, re-sent with the same role and
    // another name: still `user`; Clerk's role changes: Clerk's role.
    let now_ms = chrono::Utc::now().timestamp_millis();
    let with_role = |at: i64, role: &str, name: &str| {
        event_body(
            "user.updated",
            clerk_user(
                "user_role",
                "role@example.com",
                at,
                json!({"public_metadata": {"role": role}, "first_name": name}),
            ),
        )
    };
    let role = || async {
        let identity = Identity::parse("clerk", "user_role").unwrap();
        find_by_identity(&pool, &identity)
            .await
            .unwrap()
            .unwrap()
            .role
    };
    assert_eq!(
        program
            .deliver("msg_r1", &with_role(now_ms - 3_600_000, "admin", "Ada"))
            .await
            .0,
        200
    );
    assert_eq!(role().await, Role::Admin);
    let identity = Identity::parse("clerk", "user_role").unwrap();
    let id = find_by_identity(&pool, &identity)
        .await
        .unwrap()
        .unwrap()
        .id;
    set_role(&pool, id, Role::User).await.unwrap();
    let (status, _, body) = program
        .deliver("msg_r2", &with_role(now_ms + 3_600_000, "admin", "Augusta"))
        .await;
    assert_eq!(
        (status, &body["outcome"]),
        (200, &json!("updated")),
        "{body}"
    );
    assert_eq!(role().await, Role::User, "the demotion by hand holds");
    assert_eq!(
        program
            .deliver(
                "msg_r3",
                &with_role(now_ms + 3_600_001, "subscriber_pro", "Augusta")
            )
            .await
            .0,
        200
    );
    assert_eq!(role().await, Role::SubscriberPro);

    let (status, metrics) = program.get("/metrics").await;
    assert_eq!(status, 200);
    for expected in [
        r#"clerk_webhook_deliveries_total{outcome="created",status="200"}"#,
        r#"clerk_webhook_deliveries_total{outcome="conflict",status="409"}"#,
        r#"clerk_webhook_deliveries_total{outcome="invalid",status="400"}"#,
        "clerk_webhook_apply_seconds_bucket",
    ] {
        assert!(metrics.contains(expected), "{expected} missing:\n{metrics}");
    }
    assert!(!metrics.contains(MARKER));
}

#[tokio::test]
async fn start_up_fails_clearly_without_a_usable_configuration() {
    let run = |vars: &[(&str, &str)], args: &[&str]| {
        let output = std::process::Command::new(BIN)
            .args(args)
            .env_clear()
            .envs(vars.iter().copied())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code(), text)
    };
    let url = ("DATABASE_URL", "postgres://x:hunter2@db/livermore");
    let (code, text) = run(&[url], &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("CLERK_WEBHOOK_SECRET is not set"), "{text}");
    let (code, text) = run(
        &[url, ("CLERK_WEBHOOK_SECRET", "sk_live_abcdefghijklmnop")],
        &[],
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("does not start with whsec_") && !text.contains("sk_live"),
        "{text}"
    );
    let (code, text) = run(&[("CLERK_WEBHOOK_SECRET", SECRET)], &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("DATABASE_URL is not set"), "{text}");
    let (code, text) = run(
        &[
            ("CLERK_WEBHOOK_SECRET", SECRET),
            ("DATABASE_URL", "mysql://x:hunter2@db:nope/x"),
        ],
        &[],
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(
        !text.contains("hunter2") && !text.contains("whsec_"),
        "{text}"
    );
    // A URL that cannot work is refused at start, naming the variable, never its value.
    for (bad, why) in [
        ("mysql://x:hunter2@db/livermore", "not a postgres"),
        ("postgres://x:hunter2@db", "no database"),
        ("postgresql://x:hunter2@/livermore", "no host"),
    ] {
        let (code, text) = run(
            &[("CLERK_WEBHOOK_SECRET", SECRET), ("DATABASE_URL", bad)],
            &[],
        );
        assert_eq!(code, Some(2), "{bad}: {text}");
        assert!(
            text.contains("DATABASE_URL") && text.contains(why) && !text.contains("hunter2"),
            "{bad}: {text}"
        );
    }
    // Secrets from files (NAME_FILE), as orchestrators mount them: read (the refusals below come
    // from their contents), a missing file or both ways at once refused, naming the variable.
    let dir =
        std::env::temp_dir().join(format!("livermore-webhook-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (secret_file, url_file) = (dir.join("secret"), dir.join("url"));
    std::fs::write(&secret_file, "sk_live_abcdefghijklmnop\n").unwrap();
    std::fs::write(&url_file, "mysql://x:hunter2@db/livermore\n").unwrap();
    let secret_path = secret_file.to_str().unwrap();
    let url_path = url_file.to_str().unwrap();
    let (code, text) = run(&[url, ("CLERK_WEBHOOK_SECRET_FILE", secret_path)], &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("does not start with whsec_") && !text.contains("sk_live"),
        "{text}"
    );
    let (code, text) = run(
        &[
            ("CLERK_WEBHOOK_SECRET", SECRET),
            ("DATABASE_URL_FILE", url_path),
        ],
        &[],
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("not a postgres") && !text.contains("hunter2"),
        "{text}"
    );
    let (code, text) = run(
        &[
            url,
            ("CLERK_WEBHOOK_SECRET", SECRET),
            ("CLERK_WEBHOOK_SECRET_FILE", secret_path),
        ],
        &[],
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("not both"), "{text}");
    let (code, text) = run(
        &[
            url,
            ("CLERK_WEBHOOK_SECRET_FILE", "/nonexistent/livermore-secret"),
        ],
        &[],
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("CLERK_WEBHOOK_SECRET_FILE: cannot read"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    // A deadline past Svix's 15 s is refused.
    let (code, text) = run(
        &[url, ("CLERK_WEBHOOK_SECRET", SECRET)],
        &["--request-deadline", "16"],
    );
    assert_eq!(code, Some(2), "{text}");
    let (code, text) = run(
        &[url, ("CLERK_WEBHOOK_SECRET", SECRET)],
        &["--listen", "nowhere"],
    );
    assert_eq!(code, Some(2), "{text}");
    let (code, text) = run(
        &[url, ("CLERK_WEBHOOK_SECRET", SECRET)],
        &["--request-deadline", "0"],
    );
    assert_eq!(code, Some(2), "{text}");
    // --help names every setting and shows no value from the environment.
    let (code, text) = run(
        &[
            url,
            ("CLERK_WEBHOOK_SECRET", SECRET),
            ("LISTEN_ADDR", "127.0.0.1:9999"),
        ],
        &["--help"],
    );
    assert_eq!(code, Some(0), "{text}");
    for setting in [
        "LISTEN_ADDR",
        "REQUEST_DEADLINE_SECS",
        "SHUTDOWN_GRACE_SECS",
        "MAX_IN_FLIGHT",
        "MAX_READING",
        "BODY_TIMEOUT_SECS",
        "HEADER_TIMEOUT_SECS",
        "MAX_CONNECTIONS_OPEN",
        "DRAIN_DELAY_SECS",
        "CLERK_WEBHOOK_SECRET",
        "DATABASE_URL",
    ] {
        assert!(
            text.contains(setting),
            "{setting} missing from --help:\n{text}"
        );
    }
    assert!(
        !text.contains("hunter2") && !text.contains(SECRET),
        "{text}"
    );
}

/// `/metrics` before any delivery: HELP lines, every outcome's series at 0, the gauge at 0 and the
/// histogram's buckets. Then a client that sends signed headers and half its body and hangs up: the
/// gauge rises while the body is read and falls back to 0.
#[sqlx::test]
async fn metrics_are_there_from_the_start_and_the_gauge_falls_after_a_hang_up(pool: PgPool) {
    let program = Program::start(url_of(&pool).as_str(), &[]).await;
    let (status, metrics) = program.get("/metrics").await;
    assert_eq!(status, 200);
    for expected in [
        "# HELP clerk_webhook_deliveries_total ",
        "# HELP clerk_webhook_requests_in_flight ",
        "# HELP clerk_webhook_apply_seconds ",
        r#"clerk_webhook_deliveries_total{outcome="created",status="200"} 0"#,
        r#"clerk_webhook_deliveries_total{outcome="deadline",status="503"} 0"#,
        r#"clerk_webhook_deliveries_total{outcome="database",status="503"} 0"#,
        r#"clerk_webhook_deliveries_total{outcome="unauthenticated",status="401"} 0"#,
        "clerk_webhook_requests_in_flight 0",
        r#"clerk_webhook_apply_seconds_bucket{le="+Inf"} 0"#,
    ] {
        assert!(metrics.contains(expected), "{expected} missing:\n{metrics}");
    }

    let body = created_body("user_hang_up");
    let mut head = format!(
        "POST /webhooks/clerk HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n",
        body.len()
    );
    for (name, value) in signed(SECRET, "msg_hang_up", now(), &body) {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut client = TcpStream::connect(program.addr()).await.unwrap();
    client.write_all(head.as_bytes()).await.unwrap();
    client
        .write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .unwrap();
    let gauge = |metrics: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("clerk_webhook_requests_in_flight "))
            .map(|v| v.trim().to_owned())
    };
    let until_gauge = |want: &'static str| {
        let program = &program;
        async move {
            let started = Instant::now();
            loop {
                let (_, metrics) = program.get("/metrics").await;
                if gauge(&metrics).as_deref() == Some(want) {
                    return;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(3),
                    "the gauge is not {want} after 3 s:\n{metrics}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    until_gauge("1").await;
    drop(client);
    until_gauge("0").await;
    assert_eq!(user_count(&pool).await, 0);
}

/// HMAC-SHA256 written out from RFC 2104 over `sha2` (not the `hmac` crate the library uses), and
/// the Standard Webhooks message format: the tests' own signer, independent of the crate's.
fn independent_signature(secret: &str, id: &str, timestamp: i64, body: &str) -> String {
    use base64::Engine as _;
    use sha2::{Digest, Sha256};
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut key = b64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    if key.len() > 64 {
        key = Sha256::digest(&key).to_vec();
    }
    key.resize(64, 0);
    let pad = |byte: u8| key.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(format!("{id}.{timestamp}.{body}"))
        .finalize();
    let outer = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    format!("v1,{}", b64.encode(outer))
}

/// Deliveries signed by the independent signer, checked first against Svix's published example
/// (svix-webhooks' README and test suite), are applied, under both header spellings.
#[sqlx::test]
async fn deliveries_signed_by_an_independent_signer_are_applied(pool: PgPool) {
    assert_eq!(
        independent_signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#
        ),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        "the tests' signer reproduces Svix's example"
    );
    let program = Program::start(url_of(&pool).as_str(), &[]).await;
    let client = reqwest::Client::new();
    for (prefix, sub) in [("svix", "user_svix_signed"), ("webhook", "user_std_signed")] {
        let body = created_body(sub);
        let (id, t) = (format!("msg_{sub}"), now());
        let response = client
            .post(format!("{}/webhooks/clerk", program.base))
            .header("content-type", "application/json")
            .header(format!("{prefix}-id"), &id)
            .header(format!("{prefix}-timestamp"), t.to_string())
            .header(
                format!("{prefix}-signature"),
                independent_signature(SECRET, &id, t, &body),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let answer: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(
            (status, &answer["outcome"]),
            (200, &json!("created")),
            "{prefix}: {answer}"
        );
    }
    assert_eq!(user_count(&pool).await, 2);
}
