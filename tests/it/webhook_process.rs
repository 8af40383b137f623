//! The webhook service as operators run it: the `livermore-clerk-webhooks` program started as a
//! process, talked to over real HTTP (and raw TCP where a client would hide the timing), its log
//! lines read from its stderr.
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use livermore_db::clerk::WebhookVerifier;
use livermore_db::{Identity, Role, find_by_identity, set_role};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

use crate::support::clerk::{T0, clerk_user, created_body, event_body};
use crate::support::webhook::{SECRET, now};

const BIN: &str = env!("CARGO_BIN_EXE_livermore-clerk-webhooks");

/// The URL of the test's own database (the `#[sqlx::test]` one), from `DATABASE_URL`.
fn url_of(pool: &PgPool) -> reqwest::Url {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL: `make test` sets it");
    let mut url = reqwest::Url::parse(&base).expect("DATABASE_URL is a URL");
    let database = pool.connect_options().get_database().unwrap().to_owned();
    url.set_path(&database);
    url
}

/// The program, running, with every line it wrote to stderr.
struct Program {
    child: Child,
    http: Http,
    logs: Arc<Mutex<Vec<String>>>,
}

/// Where the program answers, and a client: cheap to clone into tasks.
#[derive(Clone)]
struct Http {
    base: String,
    client: reqwest::Client,
}

impl std::ops::Deref for Program {
    type Target = Http;
    fn deref(&self) -> &Http {
        &self.http
    }
}

impl Program {
    /// Starts it on 127.0.0.1:0 with `database_url` and `args`; waits for its "listening on" line.
    async fn start(database_url: &str, args: &[&str]) -> Program {
        let mut child = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_clear()
            .env("CLERK_WEBHOOK_SECRET", SECRET)
            .env("DATABASE_URL", database_url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the program starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let stderr = child.stderr.take().unwrap();
        tokio::spawn({
            let logs = logs.clone();
            async move {
                let mut lines = BufReader::new(stderr).lines();
                let mut addr_tx = Some(addr_tx);
                while let Ok(Some(line)) = lines.next_line().await {
                    if let (Some(addr), Some(tx)) =
                        (line.split("listening on ").nth(1), addr_tx.take())
                    {
                        let _ = tx.send(addr.trim().to_owned());
                    }
                    logs.lock().unwrap().push(line);
                }
            }
        });
        let addr = tokio::time::timeout(Duration::from_secs(20), addr_rx)
            .await
            .expect("the program says where it listens within 20 s")
            .expect("the program says where it listens");
        Program {
            child,
            http: Http {
                base: format!("http://{addr}"),
                client: reqwest::Client::new(),
            },
            logs,
        }
    }

    fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    async fn exit_code(mut self, within: Duration) -> Option<i32> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .expect("the program exits in time")
            .unwrap()
            .code()
    }
}

impl Http {
    fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("a response");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// Delivers `body` signed now, as Svix does: (status, Retry-After, body).
    async fn deliver(&self, id: &str, body: &str) -> (u16, Option<String>, Value) {
        let t = now();
        let signature = WebhookVerifier::from_list(SECRET)
            .unwrap()
            .sign(id, t, body.as_bytes());
        let response = self
            .client
            .post(format!("{}/webhooks/clerk", self.base))
            .header("content-type", "application/json")
            .header("svix-id", id)
            .header("svix-timestamp", t.to_string())
            .header("svix-signature", signature)
            .body(body.to_owned())
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("a response");
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, retry_after, body)
    }
}

async fn user_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Holds the per-identity lock every writer of `sub` takes, until the transaction ends.
async fn hold_identity(pool: &PgPool, sub: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(1281456210, hashtext('clerk:' || $1))")
        .bind(sub)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

/// Sessions of the test's database waiting for an advisory lock (deliveries inside their apply).
async fn waiting_for_locks(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Waits until `waiting_for_locks` satisfies `done`, for at most `within`; else fails with `what`.
async fn until_locks(pool: &PgPool, within: Duration, what: &str, done: impl Fn(i64) -> bool) {
    let started = Instant::now();
    loop {
        let waiting = waiting_for_locks(pool).await;
        if done(waiting) {
            return;
        }
        assert!(started.elapsed() < within, "{what} ({waiting} waiting)");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `n` deliveries wait for the lock.
async fn until_waiting(pool: &PgPool, n: i64) {
    let what = format!("{n} deliveries do not all wait for the lock after 10 s");
    until_locks(pool, Duration::from_secs(10), &what, |w| w >= n).await;
}

#[sqlx::test]
async fn sigterm_lets_a_request_in_flight_finish_and_exits_0(pool: PgPool) {
    let program = Program::start(url_of(&pool).as_str(), &[]).await;
    let holder = hold_identity(&pool, "user_term").await;
    let in_flight = tokio::spawn({
        let http = program.http.clone();
        async move { http.deliver("msg_term", &created_body("user_term")).await }
    });
    until_waiting(&pool, 1).await;
    program.signal("TERM");
    // Stops accepting: a new connection is refused while the request in flight goes on.
    let started = Instant::now();
    loop {
        if TcpStream::connect(program.addr()).await.is_err() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still accepting 5 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!in_flight.is_finished());
    holder.rollback().await.unwrap();
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!(
        (status, &body["outcome"]),
        (200, &json!("created")),
        "{body}"
    );
    let logs = program.logs.clone();
    assert_eq!(program.exit_code(Duration::from_secs(10)).await, Some(0));
    let logs = logs.lock().unwrap().join("\n");
    assert!(logs.contains("SIGTERM"), "{logs}");
    assert_eq!(user_count(&pool).await, 1);
}

#[sqlx::test]
async fn past_the_deadline_503_with_retry_after_and_nothing_written(pool: PgPool) {
    let program = Program::start(url_of(&pool).as_str(), &["--request-deadline", "2"]).await;
    let holder = hold_identity(&pool, "user_late").await;
    let started = Instant::now();
    let (status, retry_after, body) = program
        .deliver("msg_late", &created_body("user_late"))
        .await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(retry_after.is_some(), "503 says when to retry");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(3),
        "answered after {took:?}, the deadline is 2 s"
    );
    // The server gave up too: no delivery still waits, and once the lock is free nothing appears.
    until_no_waiting(&pool).await;
    holder.rollback().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(user_count(&pool).await, 0);
    // The same delivery, retried with the identity free, applies.
    let (status, _, body) = program
        .deliver("msg_late", &created_body("user_late"))
        .await;
    assert_eq!(
        (status, &body["outcome"]),
        (200, &json!("created")),
        "{body}"
    );
}

async fn until_no_waiting(pool: &PgPool) {
    let what = "a delivery still waits on the server 2 s after its deadline";
    until_locks(pool, Duration::from_secs(2), what, |w| w == 0).await;
}

#[sqlx::test]
async fn more_requests_than_the_bound_are_answered_503_at_once(pool: PgPool) {
    let program = Program::start(url_of(&pool).as_str(), &["--max-in-flight", "2"]).await;
    let holder = hold_identity(&pool, "user_busy").await;
    let mut waiting = Vec::new();
    for k in 0..2 {
        let http = program.http.clone();
        waiting.push(tokio::spawn(async move {
            http.deliver(&format!("msg_busy{k}"), &created_body("user_busy"))
                .await
        }));
    }
    until_waiting(&pool, 2).await;
    let started = Instant::now();
    let (status, retry_after, body) = program
        .deliver("msg_free", &created_body("user_free"))
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(retry_after.is_some());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    holder.rollback().await.unwrap();
    let mut outcomes = Vec::new();
    for task in waiting {
        let (status, _, body) = task.await.unwrap();
        assert_eq!(status, 200, "{body}");
        outcomes.push(body["outcome"].as_str().unwrap().to_owned());
    }
    outcomes.sort();
    assert_eq!(outcomes, ["created", "stale"]);
    let (status, _, body) = program
        .deliver("msg_free", &created_body("user_free"))
        .await;
    assert_eq!(
        (status, &body["outcome"]),
        (200, &json!("created")),
        "{body}"
    );
}

/// Sends a request's head declaring a 1 MiB body, then the body 1 KiB every 20 ms (20 s in all), and
/// returns the first line of the answer and how long after the head it came.
async fn answer_to_a_slow_body(program: &Program, headers: &str) -> (String, Duration) {
    let stream = TcpStream::connect(program.addr()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /webhooks/clerk HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         content-length: 1048576\r\n{headers}\r\n"
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let sending = tokio::spawn(async move {
        for _ in 0..1024 {
            if writer.write_all(&[b' '; 1024]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), reader.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        answer.extend_from_slice(&buf[..n]);
    }
    let took = started.elapsed();
    sending.abort();
    let text = String::from_utf8_lossy(&answer);
    (text.lines().next().unwrap_or_default().to_owned(), took)
}

#[sqlx::test]
async fn a_request_without_signature_headers_is_refused_before_its_body(pool: PgPool) {
    let program = Program::start(url_of(&pool).as_str(), &[]).await;
    let t = now();
    for headers in [
        String::new(),
        format!("svix-id: msg_1\r\nsvix-timestamp: {t}\r\n"),
        "svix-id: msg_1\r\nsvix-timestamp: yesterday\r\nsvix-signature: v1,AAAA\r\n".to_owned(),
        format!(
            "svix-id: msg_1\r\nsvix-timestamp: {}\r\nsvix-signature: v1,AAAA\r\n",
            t - 3600
        ),
    ] {
        let (status_line, took) = answer_to_a_slow_body(&program, &headers).await;
        assert!(
            status_line.starts_with("HTTP/1.1 401"),
            "{headers:?}: {status_line}"
        );
        assert!(
            took < Duration::from_secs(2),
            "{headers:?}: answered after {took:?}, the body takes 20 s"
        );
    }
    assert_eq!(user_count(&pool).await, 0);
}

/// A TCP proxy in front of the test's PostgreSQL: stopping it is the database going away for the
/// program (connections cut, new ones refused), starting it again brings it back on the same port.
struct Proxy {
    port: u16,
    target: String,
    tasks: tokio::task::JoinSet<()>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let mut proxy = Proxy {
            port: 0,
            target,
            tasks: tokio::task::JoinSet::new(),
        };
        proxy.listen().await;
        proxy
    }

    async fn listen(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.port = listener.local_addr().unwrap().port();
        let target = self.target.clone();
        let connections = Arc::new(Mutex::new(tokio::task::JoinSet::new()));
        self.tasks.spawn(async move {
            // Owned here: aborting this task drops them all, cutting every connection.
            let _connections = connections.clone();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let target = target.clone();
                connections.lock().unwrap().spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
    }

    fn stop(&mut self) {
        self.tasks.abort_all();
    }
}

#[sqlx::test]
async fn readyz_follows_the_database_and_deliveries_answer_503_while_it_is_down(pool: PgPool) {
    let mut url = url_of(&pool);
    let target = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let mut proxy = Proxy::start(target).await;
    url.set_port(Some(proxy.port)).unwrap();
    let program = Program::start(url.as_str(), &["--request-deadline", "3"]).await;

    let ready = |expect_ok: bool| {
        let program = &program;
        async move {
            let started = Instant::now();
            loop {
                let asked = Instant::now();
                let (status, _) = program.get("/readyz").await;
                assert!(
                    asked.elapsed() < Duration::from_millis(1900),
                    "/readyz took {:?}",
                    asked.elapsed()
                );
                if (status == 200) == expect_ok {
                    return status;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "/readyz still {status} after 10 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(ready(true).await, 200);
    proxy.stop();
    assert!(ready(false).await >= 500);
    assert_eq!(program.get("/healthz").await.0, 200, "the process is up");
    let (status, retry_after, body) = program
        .deliver("msg_down", &created_body("user_down"))
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(retry_after.is_some());
    proxy.listen().await;
    assert_eq!(ready(true).await, 200);
    let (status, _, body) = program
        .deliver("msg_down", &created_body("user_down"))
        .await;
    assert_eq!(
        (status, &body["outcome"]),
        (200, &json!("created")),
        "{body}"
    );
}

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
