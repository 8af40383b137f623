//! What the replica serves and when: a fresh replica, replicas in turn, primary-only handles, lag
//! over the bound, read-your-writes under concurrency, a write's position known at once, no
//! replicas, a write dropped mid-statement.
use super::*;

#[sqlx::test]
async fn a_fresh_replica_serves_the_lookups(primary: PgPool) {
    let (_turn, options) = take_standby(&primary).await;
    let db = routed(&primary, &options).await;
    let identities = users(&db, 20, "serve").await;
    until_replica_serves(&db.session(), Duration::from_secs(10)).await;

    let before = transactions_on(&options).await;
    let reader = db.session();
    let start = reader.stats();
    for _ in 0..10 {
        for (i, identity) in identities.iter().enumerate() {
            let user = reader
                .find_by_identity(identity)
                .await
                .unwrap()
                .expect("replicated");
            assert_eq!(user.email, format!("serve{i}@example.com"));
        }
        let found = reader.find_by_identities(&identities).await.unwrap();
        assert!(found.iter().all(Option::is_some));
    }
    let stats = reader.stats();
    let on_replica = stats.replicas[0] - start.replicas[0];
    assert!(on_replica >= 200, "{stats:?}");
    // The standby's own count agrees: its backends flush their statistics as they exit.
    db.close().await;
    let counted = async {
        loop {
            let after = transactions_on(&options).await;
            if after - before >= 200 {
                return after - before;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let counted = tokio::time::timeout(Duration::from_secs(20), counted).await;
    assert!(
        counted.is_ok(),
        "the standby did not count 200 transactions"
    );
}

/// A replica a check found behind the primary's sample it had just taken (here: the first check,
/// while the standby applies a commit 2 s late) serves once it has caught up, without waiting for
/// the next check: look-ups that find it well but stale read its replay position. The checks here
/// are an hour apart. (A check that came before the standby had replayed a long insert used to
/// keep a test's replica out for its whole 30 s check interval.)
#[sqlx::test]
async fn a_replica_found_behind_serves_once_caught_up_before_the_next_check(primary: PgPool) {
    let (_turn, options) = take_standby(&primary).await;
    let db = Db::builder(primary_options(&primary))
        .replicas([options.clone()])
        .check_interval(Duration::from_secs(3600))
        .max_lag(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    let identities = users(&db, 1, "behind").await;
    until_replayed(&primary, &options).await;
    set_apply_delay(&options, "2s").await;
    sqlx::query("UPDATE users SET updated_at = now() WHERE id = (SELECT min(id) FROM users)")
        .execute(&primary)
        .await
        .unwrap();
    // The first check (the reader's first look-up starts it) finds the standby well and behind.
    let reader = db.session();
    driving_lookups_until(
        &reader,
        Duration::from_secs(20),
        "a look-up finds the replica well but stale",
        |db| db.stats().primary_because.stale > 0,
    )
    .await;
    reset_standby(&options).await;
    until_replica_serves(&reader, Duration::from_secs(20)).await;
    let before = reader.session_stats().replicas;
    answers(&reader, &identities[0]).await;
    assert_eq!(
        reader.session_stats().replicas,
        before + 1,
        "{:?}",
        reader.stats()
    );
}

/// Look-ups spread over the replicas that can serve them, in turn: none is left idle while another
/// takes every look-up. (The standby is listed twice: two replicas of one server, each with its own
/// connections and counts.)
#[sqlx::test]
async fn lookups_take_the_fresh_replicas_in_turn(primary: PgPool) {
    let (_turn, options) = take_standby(&primary).await;
    let db = Db::builder(primary_options(&primary))
        .replicas([options.clone(), options.clone()])
        .check_interval(CHECK)
        .build()
        .await
        .unwrap();
    let identities = users(&db, 1, "turns").await;
    let reader = db.session();
    driving_lookups_until(
        &reader,
        Duration::from_secs(20),
        "both replicas serve",
        |db| db.serving_replicas().len() == 2,
    )
    .await;
    let start = reader.stats();
    for _ in 0..40 {
        answers(&reader, &identities[0]).await;
    }
    let stats = reader.stats();
    let served: Vec<u64> = (0..2)
        .map(|i| stats.replicas[i] - start.replicas[i])
        .collect();
    // In turn: 20 each when both stay fresh throughout; at least a quarter each, whatever a
    // check late on a busy host sends to the primary meanwhile.
    assert!(served.iter().all(|&n| n >= 10), "{served:?} {stats:?}");
}

/// A primary-only handle sends every look-up to the primary while the replica serves the others,
/// and its sessions stay primary-only.
#[sqlx::test]
async fn a_primary_only_handle_never_asks_the_replica(primary: PgPool) {
    let (_turn, options) = take_standby(&primary).await;
    let db = routed(&primary, &options).await;
    let identities = users(&db, 1, "primaryonly").await;
    let reader = db.session();
    until_replica_serves(&reader, Duration::from_secs(10)).await;
    let strict = reader.primary_only();
    for handle in [strict.clone(), strict.session()] {
        let start = handle.stats();
        for _ in 0..10 {
            answers(&handle, &identities[0]).await;
        }
        let stats = handle.stats();
        assert_eq!(stats.replicas[0], start.replicas[0], "{stats:?}");
        assert_eq!(
            stats.primary_because.primary_only - start.primary_because.primary_only,
            10,
            "{stats:?}"
        );
    }
    // The handle it came from still reads from the replica.
    until_replica_serves(&reader, Duration::from_secs(10)).await;
    let before = reader.stats().replicas[0];
    driving_lookups_until(
        &reader,
        Duration::from_secs(10),
        "the replica serves again",
        |db| db.stats().replicas[0] > before,
    )
    .await;
}

/// A write's position is read right after it, on its own connection: known at once, not at the
/// next check (an hour away here), so the session's next look-up is not sent to the primary for
/// want of it.
#[sqlx::test]
async fn a_writes_position_is_known_at_once(primary: PgPool) {
    let (_turn, options) = take_standby(&primary).await;
    let db = Db::builder(primary_options(&primary))
        .replicas([options.clone()])
        .check_interval(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    let reader = db.session();
    until_replica_serves(&reader, Duration::from_secs(20)).await;
    assert_eq!(reader.last_write(), None);
    let identities = users(&reader, 1, "settled").await;
    let written = reader
        .last_write()
        .expect("the write's position, known at once");
    assert!(written.0 > 0);
    answers(&reader, &identities[0]).await;
    let stats = reader.stats();
    assert_eq!(stats.primary_because.write_position_unknown, 0, "{stats:?}");
}

#[sqlx::test]
async fn lag_over_the_bound_sends_lookups_to_the_primary(primary: PgPool) {
    let (_turn, options) = take_standby(&primary).await;
    let db = routed_with_lag(&primary, &options, Duration::from_millis(500)).await;
    let identities = users(&db, 1, "lag").await;
    let reader = db.session();
    until_replica_serves(&reader, Duration::from_secs(10)).await;

    // The standby now applies each commit 1.5 s late, and the primary keeps committing.
    set_apply_delay(&options, "1500ms").await;
    let writer = {
        let primary = primary.clone();
        tokio::spawn(async move {
            loop {
                sqlx::query(
                    "UPDATE users SET updated_at = now() WHERE id = (SELECT min(id) FROM users)",
                )
                .execute(&primary)
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // Within the bound plus a check, the replica stops serving; every look-up still answers.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !reader.serving_replicas().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the lagging replica kept serving"
        );
        answers(&reader, &identities[0]).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = reader.stats();
    for _ in 0..50 {
        answers(&reader, &identities[0]).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = reader.stats();
    assert_eq!(
        after.replicas[0], before.replicas[0],
        "a replica 1.5 s behind served"
    );
    assert_eq!(after.primary - before.primary, 50);

    // Back within the bound: it serves again.
    reset_standby(&options).await;
    until_replica_serves(&reader, Duration::from_secs(10)).await;
    writer.abort();
}

/// The standby applies commits 300 ms late (within the 1 s bound, so it serves). Each session
/// reads its write back at once and then up to 600 ms later: every read sees the write, and some of
/// each session's own reads are served by the replica (those after it has replayed the write), so
/// the replica is tested, not bypassed. Without the handle's position (the control, reading right
/// after each write) stale answers do occur, which shows the test can see one.
#[sqlx::test]
async fn read_your_writes_under_concurrency(primary: PgPool) {
    let (_turn, options) = take_standby(&primary).await;
    let db = routed(&primary, &options).await;
    let identities = users(&db, 16, "ryw").await;
    until_replica_serves(&db.session(), Duration::from_secs(10)).await;
    set_apply_delay(&options, "300ms").await;

    let roles = [
        Role::Admin,
        Role::SubscriberBasic,
        Role::SubscriberPro,
        Role::User,
    ];
    // Milliseconds after the write of each read-back: before the replica can have it, and after.
    const READ_AT: [u64; 6] = [0, 30, 150, 350, 450, 600];
    let mut tasks = tokio::task::JoinSet::new();
    for (task, identity) in identities.into_iter().enumerate() {
        let session = db.session();
        let control = db.session();
        tasks.spawn(async move {
            let id = find_by_identity(session.pool(), &identity)
                .await
                .unwrap()
                .unwrap()
                .id;
            let mut stale_in_control = 0;
            for i in 0..12 {
                let role = roles[(task + i) % roles.len()];
                session.set_role(id, role).await.unwrap();
                let written = Instant::now();
                let other = control.find_by_identity(&identity).await.unwrap().unwrap();
                if other.role != role {
                    stale_in_control += 1;
                }
                for at in READ_AT {
                    let at = written + Duration::from_millis(at);
                    tokio::time::sleep_until(at.into()).await;
                    let seen = session.find_by_identity(&identity).await.unwrap().unwrap();
                    assert_eq!(
                        seen.role, role,
                        "task {task}, write {i}: read an older role"
                    );
                }
            }
            let own = session.session_stats();
            assert_eq!(own.primary + own.replicas, 12 * READ_AT.len() as u64);
            assert!(
                own.replicas > 0,
                "task {task}: none of the session's reads was served by the replica: {own:?}"
            );
            stale_in_control
        });
    }
    let mut stale_in_control = 0;
    while let Some(result) = tasks.join_next().await {
        stale_in_control += result.unwrap();
    }
    assert!(
        stale_in_control > 0,
        "the control never read a stale role: the replica was not behind"
    );

    // Deactivation, 1 000 times through one handle: never seen active afterwards.
    reset_standby(&options).await;
    set_apply_delay(&options, "100ms").await;
    let session = db.session();
    let identity = Identity::parse("clerk", "user_ryw_0").unwrap();
    let id = find_by_identity(&primary, &identity)
        .await
        .unwrap()
        .unwrap()
        .id;
    for i in 0..1000 {
        sqlx::query("UPDATE users SET is_active = true WHERE id = $1")
            .bind(id)
            .execute(&primary)
            .await
            .unwrap();
        if i % 2 == 0 {
            session.deactivate(id).await.unwrap();
        } else {
            session.set_role(id, Role::User).await.unwrap();
            session.deactivate(id).await.unwrap();
        }
        let seen = session.find_by_identity(&identity).await.unwrap().unwrap();
        assert!(
            !seen.is_active,
            "iteration {i}: a deactivated user looked active"
        );
    }
    reset_standby(&options).await;
}

#[sqlx::test]
async fn without_replicas_everything_is_the_primarys(primary: PgPool) {
    let db = Db::connect(primary_options(&primary)).await.unwrap();
    let identities = users(&db, 2, "alone").await;
    // Without replicas no position is read after a write: a sign-in is one statement.
    assert!(db.last_write().is_none());
    for identity in &identities {
        answers(&db, identity).await;
    }
    let stats = db.stats();
    assert_eq!(
        (stats.primary, stats.replicas.len(), stats.fallbacks),
        (2, 0, 0)
    );
    let position = livermore_db::WalPosition(0x16_B374_D848);
    assert_eq!(db.session_after(position).last_write(), Some(position));
    assert_eq!(position.to_string(), "16/B374D848");
}

/// A write whose caller goes away mid-statement (its future dropped) commits after the drop: every
/// read of the session after the commit sees it, though the standby applies 300 ms late; and the
/// unknown position does not pin the session to the primary: the replica serves it again. The
/// commit lands 1.5 s after the call, past `statement_timeout` (2 s) less a second: a session that
/// trusted the primary's samples from then on (and not only after the statement timeout and a
/// margin) would read the standby before it holds the write.
#[sqlx::test]
async fn a_write_dropped_mid_statement_is_read_back(primary: PgPool) {
    let (_turn, options) = take_standby(&primary).await;
    set_apply_delay(&options, "300ms").await;
    let db = Db::builder(primary_options(&primary))
        .replicas([options.clone()])
        .check_interval(CHECK)
        .statement_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let identity = users(&db, 1, "dropped").await.remove(0);
    let user = db.find_by_identity(&identity).await.unwrap().unwrap();
    sqlx::query(
        "CREATE FUNCTION slow_role() RETURNS trigger LANGUAGE plpgsql
         AS $$ BEGIN PERFORM pg_sleep(1.5); RETURN NEW; END $$",
    )
    .execute(&primary)
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER slow_role BEFORE UPDATE OF role ON users FOR EACH ROW
         WHEN (NEW.role = 'subscriber_pro') EXECUTE FUNCTION slow_role()",
    )
    .execute(&primary)
    .await
    .unwrap();
    let session = db.session();
    until_replica_serves(&session, Duration::from_secs(10)).await;

    let cut = tokio::time::timeout(
        Duration::from_millis(100),
        session.set_role(user.id, Role::SubscriberPro),
    )
    .await;
    assert!(cut.is_err(), "the write returned within 100 ms");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let role: String = sqlx::query_scalar("SELECT role FROM users WHERE id = $1")
            .bind(user.id.0)
            .fetch_one(&primary)
            .await
            .unwrap();
        if role == "subscriber_pro" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dropped write never committed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let committed = Instant::now();
    while committed.elapsed() < Duration::from_millis(1200) {
        let read = session.find_by_identity(&identity).await.unwrap().unwrap();
        assert_eq!(
            read.role,
            Role::SubscriberPro,
            "the session read its own write stale {:?} after the commit",
            committed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eventually(
        Duration::from_secs(5),
        "the replica serves the session again",
        || session.serving_replicas() == [0],
    )
    .await;
}
