//! The program under load and faults: SIGTERM with a request in flight, the deadline, more
//! requests than the bound, slow and unsigned bodies, the database going down.
use super::*;

#[sqlx::test]
async fn sigterm_lets_a_request_in_flight_finish_and_exits_0(pool: PgPool) {
    let program = Program::start(url_of(&pool).as_str(), &["--drain-delay", "0"]).await;
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
    assert_eq!(
        (status, &body["error"]),
        (503, &json!("deadline")),
        "{body}"
    );
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

/// Past the deadline the server stops too, even when an earlier statement used part of it: the
/// delivery waits 1.2 s of its 2 s for the identity's lock, then for the user's row. The 503 comes at
/// 2 s and 0.5 s later nothing of it still waits (its statement timeout, granted again to the second
/// statement, kept it waiting until 3.2 s).
#[sqlx::test]
async fn past_the_deadline_the_server_stops_too_after_a_second_wait(pool: PgPool) {
    let program = Program::start(url_of(&pool).as_str(), &["--request-deadline", "2"]).await;
    let (status, _, body) = program
        .deliver("msg_first", &created_body("user_two"))
        .await;
    assert_eq!(status, 200, "{body}");
    let mut row = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM users WHERE identity_sub = $1 FOR UPDATE")
        .bind("user_two")
        .execute(&mut *row)
        .await
        .unwrap();
    let identity = hold_identity(&pool, "user_two").await;
    let updated = event_body(
        "user.updated",
        clerk_user(
            "user_two",
            "user_two@example.com",
            T0 + 1000,
            json!({"first_name": "Grace"}),
        ),
    );
    let started = Instant::now();
    let delivery = tokio::spawn({
        let http = program.http.clone();
        async move { http.deliver("msg_second", &updated).await }
    });
    until_waiting(&pool, 1).await;
    tokio::time::sleep_until((started + Duration::from_millis(1200)).into()).await;
    identity.rollback().await.unwrap();
    let (status, _, body) = delivery.await.unwrap();
    let answered = started.elapsed();
    assert_eq!(
        (status, &body["error"]),
        (503, &json!("deadline")),
        "{body}"
    );
    assert!(answered < Duration::from_millis(2900), "{answered:?}");
    let mut waiting = i64::MAX;
    while started.elapsed() < answered + Duration::from_millis(500) {
        // A row lock's waiter waits on the holder's transaction id: a lock without a database.
        waiting = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
             WHERE NOT l.granted AND a.datname = current_database()",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        waiting,
        0,
        "a statement of the delivery still waits {:?} after its 503",
        started.elapsed() - answered
    );
    row.rollback().await.unwrap();
    let name: Option<String> =
        sqlx::query_scalar("SELECT display_name FROM users WHERE identity_sub = 'user_two'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(name.as_deref(), Some("Ada Lovelace"), "nothing written");
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
    until_readyz(&program, 503, "database not answering").await;
    assert_eq!(program.get("/healthz").await.0, 200, "the process is up");
    let (status, retry_after, body) = program
        .deliver("msg_down", &created_body("user_down"))
        .await;
    // Counted as the outage it is, not as a deadline (which alerts read as lock waits): the first
    // delivery on the cut connection, the next one while connects are refused until its deadline.
    assert_eq!(
        (status, &body["error"]),
        (503, &json!("database")),
        "{body}"
    );
    assert!(retry_after.is_some());
    let (status, _, body) = program
        .deliver("msg_down", &created_body("user_down"))
        .await;
    assert_eq!(
        (status, &body["error"]),
        (503, &json!("database")),
        "{body}"
    );
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

/// Opens a connection and sends `bytes`, then nothing more; the connection stays open until dropped.
async fn sending_only(program: &Program, bytes: &str) -> TcpStream {
    let mut stream = TcpStream::connect(program.addr()).await.unwrap();
    stream.write_all(bytes.as_bytes()).await.unwrap();
    stream
}

/// Reads until the server closes the connection, or `within` passes: the bytes it sent, or `None`
/// if it kept the connection open.
async fn until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&answer).into_owned())
}

/// A request head that looks signed (a current timestamp, any `v1` entry: checking it needs the
/// body), declaring a body of `length` bytes.
fn signed_looking_head(length: usize) -> String {
    format!(
        "POST /webhooks/clerk HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         content-length: {length}\r\nsvix-id: msg_x\r\nsvix-timestamp: {}\r\n\
         svix-signature: v1,AAAA\r\n\r\n",
        now()
    )
}

/// A request head sent in part and never finished, and a kept-alive connection left idle, are
/// closed after the header timeout (they used to stay open for good: `axum::serve` gave hyper no
/// timer).
#[sqlx::test]
async fn unfinished_heads_and_idle_connections_are_closed(pool: PgPool) {
    let program = Program::start(url_of(&pool).as_str(), &["--header-timeout", "1"]).await;
    let mut half = sending_only(&program, "POST /webhooks/clerk HTTP/1.1\r\nhost: te").await;
    assert!(
        until_closed(&mut half, Duration::from_secs(15))
            .await
            .is_some(),
        "a half-sent head kept its connection open"
    );
    let mut idle = sending_only(&program, "GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n").await;
    let answer = until_closed(&mut idle, Duration::from_secs(15))
        .await
        .expect("an idle kept-alive connection was kept open");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// A body that does not arrive within the body timeout is answered 408, and its slot is free again.
#[sqlx::test]
async fn a_body_slower_than_the_body_timeout_is_answered_408(pool: PgPool) {
    let program = Program::start(url_of(&pool).as_str(), &["--body-timeout", "1"]).await;
    let mut slow = sending_only(&program, &format!("{}{{", signed_looking_head(1000))).await;
    let answer = until_closed(&mut slow, Duration::from_secs(15))
        .await
        .expect("an answer and the connection closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let (status, _, body) = program
        .deliver("msg_after", &created_body("user_after"))
        .await;
    assert_eq!(
        (status, &body["outcome"]),
        (200, &json!("created")),
        "{body}"
    );
}

/// 160 hostile connections, none with the secret (80 request heads never finished, 80 bodies
/// trickled a byte a second under headers that look signed), cannot keep a signed delivery out:
/// it is applied, `/healthz` answers, and SIGTERM exits 0 within the grace. (Before: the trickled
/// bodies took every in-flight slot, the delivery got 503, and the drain waited on the unfinished
/// heads until the grace ran out: exit 1.)
#[sqlx::test]
async fn unauthenticated_clients_cannot_starve_signed_deliveries(pool: PgPool) {
    let program = Program::start(url_of(&pool).as_str(), &["--drain-delay", "0"]).await;
    let mut hostile = Vec::new();
    for _ in 0..80 {
        hostile.push(sending_only(&program, "POST /webhooks/clerk HTTP/1.1\r\nhost: te").await);
    }
    let mut trickling = tokio::task::JoinSet::new();
    for _ in 0..80 {
        let mut stream = sending_only(&program, &signed_looking_head(100_000)).await;
        trickling.spawn(async move {
            for _ in 0..60 {
                if stream.write_all(b" ").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    // Every hostile connection is open and waiting now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _, body) = program
        .deliver("msg_real", &created_body("user_real"))
        .await;
    assert_eq!(
        (status, &body["outcome"]),
        (200, &json!("created")),
        "{body}"
    );
    assert_eq!(program.get("/healthz").await.0, 200);
    assert_eq!(user_count(&pool).await, 1);
    program.signal("TERM");
    assert_eq!(program.exit_code(Duration::from_secs(30)).await, Some(0));
    trickling.abort_all();
    drop(hostile);
}

/// At SIGTERM `/readyz` turns 503 first while everything is still served, for the drain delay, so
/// that a load balancer's probes see it; then new connections are refused and the program exits 0.
/// A second SIGTERM stops at once, even with a delivery in flight (exit 1).
#[sqlx::test]
async fn sigterm_turns_readiness_off_before_closing_and_a_second_one_stops_at_once(pool: PgPool) {
    let program = Program::start(url_of(&pool).as_str(), &["--drain-delay", "2"]).await;
    until_readyz(&program, 200, "ready").await;
    program.signal("TERM");
    let signalled = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    while program.get("/readyz").await.0 != 503 {
        assert!(Instant::now() < deadline, "/readyz never said 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Seen while the listener is still open: everything else is still served.
    assert_eq!(program.get("/healthz").await.0, 200, "still serving");
    let (status, _, body) = program
        .deliver("msg_draining", &created_body("user_draining"))
        .await;
    assert_eq!(
        (status, &body["outcome"]),
        (200, &json!("created")),
        "{body}"
    );
    loop {
        if TcpStream::connect(program.addr()).await.is_err() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still accepting 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        signalled.elapsed() >= Duration::from_millis(1900),
        "closed before the drain delay"
    );
    assert_eq!(program.exit_code(Duration::from_secs(20)).await, Some(0));

    let program = Program::start(url_of(&pool).as_str(), &["--drain-delay", "30"]).await;
    let holder = hold_identity(&pool, "user_second").await;
    let in_flight = tokio::spawn({
        let http = program.http.clone();
        async move {
            let _ = http
                .deliver("msg_second", &created_body("user_second"))
                .await;
        }
    });
    until_waiting(&pool, 1).await;
    program.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    program.signal("TERM");
    assert_eq!(program.exit_code(Duration::from_secs(5)).await, Some(1));
    holder.rollback().await.unwrap();
    let _ = in_flight.await;
}

/// Asks `/readyz` until it answers `status` with `body`, for at most 10 s.
async fn until_readyz(program: &Program, status: u16, body: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (got, text) = program.get("/readyz").await;
        if (got, text.as_str()) == (status, body) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {got} ({text}) after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Readiness is the database's, not the pool's: with every pool connection held by deliveries
/// waiting on one user's lock, `/readyz` stays ready (it used to take a pool connection and say 503
/// after its timeout); and an unmigrated database is not ready (every delivery would fail there).
#[sqlx::test(migrations = false)]
async fn readiness_ignores_a_busy_pool_and_refuses_an_unmigrated_database(pool: PgPool) {
    let program = Program::start(
        url_of(&pool).as_str(),
        &["--max-connections", "2", "--request-deadline", "15"],
    )
    .await;
    until_readyz(&program, 503, "database not migrated").await;
    for _ in 0..10 {
        assert_eq!(
            program.get("/readyz").await.0,
            503,
            "ready while unmigrated"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    livermore_db::migrate(&pool).await.unwrap();
    until_readyz(&program, 200, "ready").await;

    let holder = hold_identity(&pool, "user_pool").await;
    let mut waiting = Vec::new();
    for k in 0..2 {
        let http = program.http.clone();
        waiting.push(tokio::spawn(async move {
            http.deliver(&format!("msg_pool{k}"), &created_body("user_pool"))
                .await
        }));
    }
    until_waiting(&pool, 2).await;
    for _ in 0..20 {
        assert_eq!(
            program.get("/readyz").await.0,
            200,
            "a busy pool made it not ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    holder.rollback().await.unwrap();
    for task in waiting {
        assert_eq!(task.await.unwrap().0, 200);
    }
}

/// SIGINT drains as SIGTERM does (exit 0), and a delivery still in flight when the shutdown grace
/// runs out makes the exit 1, saying so.
#[sqlx::test]
async fn sigint_drains_and_a_grace_run_out_exits_1(pool: PgPool) {
    let args = ["--drain-delay", "0", "--shutdown-grace", "1"];
    let program = Program::start(url_of(&pool).as_str(), &args).await;
    program.signal("INT");
    assert_eq!(program.exit_code(Duration::from_secs(10)).await, Some(0));

    let program = Program::start(url_of(&pool).as_str(), &args).await;
    let holder = hold_identity(&pool, "user_grace").await;
    let in_flight = tokio::spawn({
        let http = program.http.clone();
        async move {
            let _ = http.deliver("msg_grace", &created_body("user_grace")).await;
        }
    });
    until_waiting(&pool, 1).await;
    let signalled = Instant::now();
    program.signal("INT");
    let logs = program.logs.clone();
    assert_eq!(program.exit_code(Duration::from_secs(10)).await, Some(1));
    assert!(
        signalled.elapsed() >= Duration::from_millis(900),
        "exited before the grace: {:?}",
        signalled.elapsed()
    );
    let logs = logs.lock().unwrap().join("\n");
    assert!(logs.contains("SIGINT"), "{logs}");
    holder.rollback().await.unwrap();
    let _ = in_flight.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(user_count(&pool).await, 0, "the cut delivery wrote nothing");
}

/// A signal the moment the program says where it listens (an orchestrator stopping a pod that has
/// just started) drains and exits 0: the handlers are in place before that line, so the signal
/// never meets the default action (death by signal, no exit code).
#[sqlx::test]
async fn a_signal_right_after_listening_drains_and_exits_0(pool: PgPool) {
    let args = ["--drain-delay", "0"];
    for (round, name) in ["TERM", "INT"].iter().cycle().take(6).enumerate() {
        let program = Program::start(url_of(&pool).as_str(), &args).await;
        program.signal(name);
        assert_eq!(
            program.exit_code(Duration::from_secs(10)).await,
            Some(0),
            "round {round}: SIG{name} right after \"listening on\""
        );
    }
}
