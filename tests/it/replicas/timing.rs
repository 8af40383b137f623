//! Claims about time and load, run alone by `make test` (`--ignored --test-threads=1`): replicas
//! under writes, a busy primary, an idle one at a WAL boundary, a slow look-up.
use super::*;

/// One handle shared by every task, as a web service shares its state: a sign-in every 20 ms through
/// it, each read back at once, while 8 tasks look users up for 3 s. The standby serves at least 90 %
/// of the look-ups, and every read-back sees its own write.
#[sqlx::test]
#[ignore = "timing: make test runs it alone (cargo test -- --ignored --test-threads=1)"]
async fn replicas_stay_useful_under_writes(primary: PgPool) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let (_turn, options) = take_standby(&primary).await;
    let db = routed(&primary, &options).await;
    let identities = Arc::new(users(&db, 50, "busy").await);
    until_replica_serves(&db, Duration::from_secs(10)).await;
    // A checkpoint now, so that none is due during the 3 s: its writes and fsyncs compete with the
    // commits on a slow disk, and the writes guard below is about the handle starving writes, not
    // about the disk. (The local cluster's superuser.)
    sqlx::query("CHECKPOINT").execute(&primary).await.unwrap();
    let before = db.stats();
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = tokio::task::JoinSet::new();
    for t in 0..8 {
        let (db, identities, stop) = (db.clone(), identities.clone(), stop.clone());
        readers.spawn(async move {
            let mut k = t;
            while !stop.load(Ordering::Relaxed) {
                answers(&db, &identities[k % identities.len()]).await;
                k += 1;
            }
        });
    }
    // A sign-in every 20 ms: started on a 20 ms schedule (one that runs late pushes the next ones
    // back, none is made up for), at most 150 in 3 s.
    let mut every = tokio::time::interval(Duration::from_millis(20));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut writes = 0;
    let (mut signing_in, mut reading_back) = (Duration::ZERO, Duration::ZERO);
    while started.elapsed() < Duration::from_secs(3) {
        every.tick().await;
        let name = format!("Busy {writes}");
        let profile = Profile::parse(
            "clerk",
            "user_busy_0",
            "busy0@example.com",
            Some(&name),
            None,
        )
        .unwrap();
        let at = Instant::now();
        db.sign_in(&profile).await.unwrap();
        signing_in += at.elapsed();
        let at = Instant::now();
        let seen = db.find_by_identity(&identities[0]).await.unwrap().unwrap();
        reading_back += at.elapsed();
        assert_eq!(
            seen.display_name.as_deref(),
            Some(name.as_str()),
            "write {writes}"
        );
        writes += 1;
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = readers.join_next().await {
        done.unwrap();
    }
    let after = db.stats();
    let on_standby = after.replicas[0] - before.replicas[0];
    let on_primary = after.primary - before.primary;
    let share = on_standby as f64 / (on_standby + on_primary) as f64;
    println!(
        "under writes: {writes} sign-ins, {on_standby} look-ups on the standby, {on_primary} on the primary ({:.1} %); \
         the writer spent {signing_in:?} signing in and {reading_back:?} reading back; {after:?}",
        share * 100.0
    );
    // The guard that writes did run beside the look-ups: handles that starved them managed 14-31
    // (single look-ups up to 8 in flight); at 50, a write still lands every 60 ms, several per
    // `check_interval`, so a freshness decided from a sample would still send most look-ups to the
    // primary. (100 held on a faster day; on a slow one a write and its read-back take 20-45 ms on
    // the 2 cores the 8 readers saturate: 42-125 in 3 s over 11 runs, 2026-12-03; the run at 42
    // also fell to 80 % on the standby, so it failed on that bound as well.)
    assert!(writes >= 50, "{writes} writes in 3 s");
    assert!(
        share >= 0.9,
        "the standby served {:.1} % of the look-ups ({on_standby} of {})",
        share * 100.0,
        on_standby + on_primary
    );
}

/// The checks run on connections of their own: with every connection the handle holds to the
/// primary busy (four writes waiting on a row lock), the replica serves on, past `max_lag`. (They
/// used to sample the primary through the application's pool: saturated, no sample was taken, and
/// every replica aged out after `max_lag` and stayed out.) It used to be asked to serve at every
/// 50 ms poll for 3 s; on a busy host a replay that fell more than `max_lag` behind took it out,
/// rightly (1 run in 20 under load), so the claim is now what the pool decides: once the saturation
/// has lasted longer than `max_lag`, the replica serves.
#[sqlx::test]
#[ignore = "timing: make test runs it alone (cargo test -- --ignored --test-threads=1)"]
async fn a_busy_primary_does_not_starve_the_checks(primary: PgPool) {
    let (_turn, options) = take_standby(&primary).await;
    let db = Db::builder(primary_options(&primary))
        .replicas([options.clone()])
        .connections(4)
        .check_interval(CHECK)
        .max_lag(Duration::from_millis(500))
        // The writes wait on the lock for as long as the test needs.
        .call_timeout(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    let identities = users(&db, 1, "starve").await;
    let reader = db.session();
    until_replica_serves(&reader, Duration::from_secs(10)).await;
    let id = find_by_identity(&primary, &identities[0])
        .await
        .unwrap()
        .unwrap()
        .id;
    let mut blocker = primary.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *blocker)
        .await
        .unwrap();
    let mut writes = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let db = db.session();
        writes.spawn(async move { db.set_role(id, Role::Admin).await.map(|_| ()) });
    }
    // Every held primary connection is now waiting on the lock.
    let waiting = async {
        loop {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&primary)
            .await
            .unwrap();
            if n >= 4 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("four writes wait on the row lock");
    // Past `max_lag`, only samples taken during the saturation can make the replica fresh.
    tokio::time::sleep(Duration::from_secs(1)).await;
    eventually(
        Duration::from_secs(20),
        "the replica serves while every primary connection is busy",
        || reader.serving_replicas() == [0],
    )
    .await;
    let waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(&primary)
    .await
    .unwrap();
    assert_eq!(waiting, 4, "the saturation ended early");
    blocker.rollback().await.unwrap();
    while let Some(done) = writes.join_next().await {
        done.unwrap().unwrap();
    }
}

/// An idle primary whose last record ends at a WAL page or segment boundary: its insert position
/// points past the next page header, where a standby's replay position stops. Once the standby
/// has replayed everything, it serves, and keeps serving while the primary stays idle.
#[sqlx::test]
#[ignore = "timing: make test runs it alone (cargo test -- --ignored --test-threads=1)"]
async fn an_idle_primary_at_a_wal_boundary_keeps_its_replica(primary: PgPool) {
    let (_turn, options) = take_standby(&primary).await;
    let db = routed_with_lag(&primary, &options, Duration::from_millis(500)).await;
    users(&db, 1, "idle").await;
    sqlx::query("SELECT pg_switch_wal()")
        .execute(&primary)
        .await
        .unwrap();
    until_replayed(&primary, &options).await;
    until_replica_serves(&db, Duration::from_secs(5)).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            db.serving_replicas(),
            [0],
            "the replica stopped serving {:?} after the switch",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A look-up slower than `replica_timeout` (a long list, waiting on the standby for a lock the
/// primary holds) is answered by the primary, and the replica goes on serving the others: a slow
/// query is not a sick replica.
#[sqlx::test]
#[ignore = "timing: make test runs it alone (cargo test -- --ignored --test-threads=1)"]
async fn a_slow_lookup_goes_to_the_primary_and_the_replica_keeps_serving(primary: PgPool) {
    let (_turn, options) = take_standby(&primary).await;
    // Checks far apart and a generous bound: only the look-up's own outcome can take the replica out
    // within the test (the long list blocks this test's one-thread runtime for a while).
    let db = Db::builder(primary_options(&primary))
        .replicas([options.clone()])
        .check_interval(Duration::from_secs(30))
        .max_lag(Duration::from_secs(120))
        .replica_timeout(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO users (username, email) SELECT 'slow' || n, 'slow' || n || '@example.com'
         FROM generate_series(1, 100000) AS n",
    )
    .execute(&primary)
    .await
    .unwrap();
    let identities = users(&db, 1, "slow").await;
    until_replayed(&primary, &options).await;
    let reader = db.session();
    until_replica_serves(&reader, Duration::from_secs(20)).await;
    // What makes the list slow on the replica must be a wait: a long decode runs in one poll, which
    // no timer interrupts (on a fast machine 100 000 rows arrive within the 100 ms, and take 0.5 s
    // to decode). The primary locks `users` ACCESS EXCLUSIVE for 400 ms; the standby replays the
    // lock, and the list waits there for it.
    let locker = lock_users(&primary).await;
    flush_wal(&primary).await;
    until_standby_locks_users(&options, true).await;
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        locker.rollback().await.unwrap();
    });
    let before = reader.stats();
    let all = reader
        .list_by_role(Role::User, None, 100_001)
        .await
        .unwrap();
    assert_eq!(all.len(), 100_001);
    let after = reader.stats();
    release.await.unwrap();
    flush_wal(&primary).await;
    until_standby_locks_users(&options, false).await;
    assert_eq!(
        (
            after.fallbacks - before.fallbacks,
            after.primary - before.primary
        ),
        (1, 1),
        "the long list timed out on the replica and went to the primary: {after:?}"
    );
    assert_eq!(reader.serving_replicas(), [0], "the replica was taken out");
    answers(&reader, &identities[0]).await;
    assert_eq!(reader.stats().replicas[0], after.replicas[0] + 1);
}
