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
