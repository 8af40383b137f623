//! A replica that is not what it was: paused, stopped and restarted, promoted, cut off from its
//! primary, of another cluster.
use super::*;

#[sqlx::test]
async fn paused_stopped_and_restarted_replicas(primary: PgPool) {
    let (_turn, options) = take_standby(&primary).await;
    let db = routed(&primary, &options).await;
    let identities = users(&db, 4, "fail").await;
    let reader = db.session();
    until_replica_serves(&reader, Duration::from_secs(10)).await;

    // Paused: out within one check interval (plus scheduling slack), with no write needed.
    let mut admin = connect_eventually(&options).await;
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&mut admin)
        .await
        .unwrap();
    let paused = Instant::now();
    // Within a check or two; the bound is loose for a loaded 2-core machine. Without the check of
    // the pause, a paused replica that holds every write would serve for ever (the primary is idle).
    eventually(
        Duration::from_secs(2),
        "a paused replica stopped serving",
        || reader.serving_replicas().is_empty(),
    )
    .await;
    println!("paused replica out after {:?}", paused.elapsed());
    let before = reader.stats().primary_because;
    for identity in &identities {
        answers(&reader, identity).await;
    }
    // Counted as a replica out (unhealthy), not as one well but behind (stale).
    let after = reader.stats().primary_because;
    assert_eq!(
        (
            after.unhealthy - before.unhealthy,
            after.stale - before.stale
        ),
        (identities.len() as u64, 0),
        "{after:?}"
    );
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&mut admin)
        .await
        .unwrap();
    drop(admin);
    until_replica_serves(&reader, Duration::from_secs(5)).await;

    // Stopped: no look-up fails; the primary answers.
    standby_script("stop");
    let stopped = Instant::now();
    let mut answered = 0;
    let mut slowest = Duration::ZERO;
    while stopped.elapsed() < Duration::from_secs(1) {
        for identity in &identities {
            let asked = Instant::now();
            answers(&reader, identity).await;
            slowest = slowest.max(asked.elapsed());
            answered += 1;
        }
    }
    // At worst a look-up waits for the replica's timeout (250 ms) before the primary answers: far
    // from the 5 s connect timeout it would wait without one. (The bound leaves a loaded 2-core
    // machine its slack.)
    assert!(
        slowest < Duration::from_secs(2),
        "a look-up took {slowest:?}"
    );
    assert!(reader.serving_replicas().is_empty());
    let during = reader.stats();
    println!("replica stopped: {answered} look-ups answered, slowest {slowest:?}, {during:?}");

    // Restarted: look-ups come back to it. (Not necessarily the very next ones: its connections
    // open anew, and on a host whose cores are saturated an open, with its SCRAM exchange, can
    // take longer than the replica may, so the first look-ups may fall back to the primary; a
    // mutants run saw 0 of 4 that way.)
    standby_script("up");
    until_replica_serves(&reader, Duration::from_secs(15)).await;
    let before = reader.stats();
    let back = Instant::now();
    while reader.stats().replicas[0] - before.replicas[0] < identities.len() as u64 {
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "the restarted replica served {} look-ups in 15 s: {:?}",
            reader.stats().replicas[0] - before.replicas[0],
            reader.stats()
        );
        for identity in &identities {
            answers(&reader, identity).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A standby promoted (a fail-over, or by mistake) is a copy of nothing any more: it is out at its
/// next check, and what is written on it after the promotion is never served.
#[sqlx::test]
async fn a_promoted_standby_is_refused(primary: PgPool) {
    let (_turn, options) = take_standby(&primary).await;
    // A bound far longer than the test: only the check of recovery can take the replica out.
    let db = routed_with_lag(&primary, &options, Duration::from_secs(60)).await;
    let identities = users(&db, 1, "promoted").await;
    let reader = db.session();
    until_replayed(&primary, &options).await;
    until_replica_serves(&reader, Duration::from_secs(10)).await;

    let mut promoted = connect_eventually(&options).await;
    sqlx::query("SELECT pg_promote(true, 30)")
        .execute(&mut promoted)
        .await
        .unwrap();
    // The promoted server takes writes of its own: a change the primary never saw.
    sqlx::query("UPDATE users SET display_name = 'Split brain'")
        .execute(&mut promoted)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(2),
        "the promoted standby stopped serving",
        || reader.serving_replicas().is_empty(),
    )
    .await;
    let before = reader.stats();
    for _ in 0..20 {
        let user = reader
            .find_by_identity(&identities[0])
            .await
            .unwrap()
            .unwrap();
        assert_ne!(user.display_name.as_deref(), Some("Split brain"));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(reader.stats().replicas[0], before.replicas[0]);
    db.close().await;
    drop(promoted);
    // A standby again, for the next test.
    standby_script("rebuild");
}

/// A standby cut off from its primary (the network, the primary's `pg_hba.conf`) keeps answering
/// from a copy that no longer moves. Once the primary writes, it is out within `max_lag` and a
/// check, and a change made elsewhere is seen within that bound. Reconnected, it serves again. (That
/// it serves while an idle primary has nothing new is `an_idle_primary_at_a_wal_boundary_keeps_its_replica`'s
/// to show: here other tests write to the cluster meanwhile.)
#[sqlx::test]
async fn a_standby_cut_off_from_its_primary(primary: PgPool) {
    let (_turn, options) = take_standby(&primary).await;
    let max_lag = Duration::from_millis(500);
    let db = routed_with_lag(&primary, &options, max_lag).await;
    let identities = users(&db, 1, "cut").await;
    let reader = db.session();
    until_replayed(&primary, &options).await;
    until_replica_serves(&reader, Duration::from_secs(10)).await;

    let mut standby = connect_eventually(&options).await;
    let conninfo: String = sqlx::query_scalar("SELECT current_setting('primary_conninfo')")
        .fetch_one(&mut standby)
        .await
        .unwrap();
    let set_conninfo = async |standby: &mut PgConnection, conninfo: &str| {
        // A value of the standby's own, quoted: ALTER SYSTEM takes no parameters.
        let quoted = conninfo.replace('\'', "''");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER SYSTEM SET primary_conninfo = '{quoted}'"
        )))
        .execute(&mut *standby)
        .await
        .unwrap();
        sqlx::query("SELECT pg_reload_conf()")
            .execute(&mut *standby)
            .await
            .unwrap();
    };
    set_conninfo(&mut standby, "").await;
    let receiving = async |standby: &mut PgConnection| -> bool {
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_stat_wal_receiver)")
            .fetch_one(&mut *standby)
            .await
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiving(&mut standby).await {
        assert!(
            Instant::now() < deadline,
            "the standby kept its WAL receiver"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A change made elsewhere: out within max_lag and a check (loose on 2 cores), and the change is
    // seen.
    sqlx::query("UPDATE users SET display_name = 'After the cut'")
        .execute(&primary)
        .await
        .unwrap();
    let changed = Instant::now();
    driving_lookups_until(
        &reader,
        max_lag + Duration::from_secs(2),
        "the cut-off standby stopped serving",
        |db| db.serving_replicas().is_empty(),
    )
    .await;
    println!(
        "cut-off standby out {:?} after the change",
        changed.elapsed()
    );
    let user = reader
        .find_by_identity(&identities[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.display_name.as_deref(), Some("After the cut"));

    // Reconnected: it catches up and serves again.
    set_conninfo(&mut standby, &conninfo).await;
    until_replica_serves(&reader, Duration::from_secs(15)).await;
    let user = reader
        .find_by_identity(&identities[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.display_name.as_deref(), Some("After the cut"));
}

fn foreign_script(command: &str) -> String {
    local_cluster_only("a standby of another cluster beside the primary");
    run_script("foreign-standby.sh", &[command])
}

/// A replica URL pointed at a standby of another cluster (its own `system_identifier`), whose
/// replay position is far past the primary's and whose `users` holds another row for the same
/// identity: the handle refuses it at its first check and answers from the primary.
#[sqlx::test]
async fn a_standby_of_another_cluster_is_refused(primary: PgPool) {
    let url = foreign_script("up");
    let options = PgConnectOptions::from_str(&url).unwrap();
    {
        let mut foreign = connect_eventually(&options).await;
        livermore_db::MIGRATOR.run(&mut foreign).await.unwrap();
        let theirs =
            Profile::parse("clerk", "user_twin", "theirs@example.com", None, None).unwrap();
        livermore_db::sign_in(&mut foreign, &theirs).await.unwrap();
    }
    let url = foreign_script("recover");
    let options = PgConnectOptions::from_str(&url).unwrap();
    connect_eventually(&options).await;

    let db = routed(&primary, &options).await;
    let ours = Profile::parse("clerk", "user_twin", "ours@example.com", None, None).unwrap();
    db.sign_in(&ours).await.unwrap();
    let twin = Identity::parse("clerk", "user_twin").unwrap();
    let reader = db.session();
    driving_lookups_until(&reader, Duration::from_secs(10), "the first check", |db| {
        !db.stats().foreign_replicas.is_empty()
    })
    .await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(1) {
        let user = reader.find_by_identity(&twin).await.unwrap().unwrap();
        assert_eq!(user.email, "ours@example.com", "another cluster's row");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = reader.stats();
    assert_eq!(
        (stats.replicas[0], stats.foreign_replicas.clone()),
        (0, vec![0]),
        "{stats:?}"
    );
    assert!(reader.serving_replicas().is_empty());
    db.close().await;
    foreign_script("down");
}

/// A TCP relay on 127.0.0.1 in front of `options`' server that holds every new connection for
/// `delay` before it passes anything on: a replica whose connects are slow (far away, TLS, a
/// saturated host), whose statements are not. Returns the options through the relay.
async fn behind_a_slow_connect(options: &PgConnectOptions, delay: Duration) -> PgConnectOptions {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = format!("{}:{}", options.get_host(), options.get_port());
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    options.clone().host("127.0.0.1").port(port)
}

/// A replica whose connects take longer than the replica timeout (400 ms against 250 ms) still
/// serves: a look-up that gives up on it does not cancel the connect it started, so a connection
/// comes to exist and the next look-ups use it. (They used to cancel it: on a slow host, where a
/// connect outlasted the replica timeout, every look-up started a connect and cut it short, no
/// connection to the replica ever came to exist, and the standby served 0 % of look-ups.)
#[sqlx::test]
async fn a_replica_slower_to_connect_than_the_replica_timeout_serves(primary: PgPool) {
    let (_turn, options) = take_standby(&primary).await;
    let slow = behind_a_slow_connect(&options, Duration::from_millis(400)).await;
    let db = Db::builder(primary_options(&primary))
        .replicas([slow])
        .check_interval(CHECK)
        .replica_timeout(Duration::from_millis(250))
        .build()
        .await
        .unwrap();
    let identities = users(&db, 4, "slowconnect").await;
    let reader = db.session();
    until_replica_serves(&reader, Duration::from_secs(10)).await;
    // Look-ups, one after another, until the replica has answered one (each connect it needs
    // finishes in the background); then nearly all go to it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while reader.session_stats().replicas == 0 {
        assert!(
            Instant::now() < deadline,
            "the replica never answered: {:?}",
            reader.stats()
        );
        answers(&reader, &identities[0]).await;
    }
    let before = reader.stats();
    for k in 0..200 {
        answers(&reader, &identities[k % identities.len()]).await;
    }
    let after = reader.stats();
    let on_replica = after.replicas[0] - before.replicas[0];
    assert!(
        on_replica >= 180,
        "{on_replica} of 200 on the replica: {after:?}"
    );
}
