//! `Db`, the routing handle, against a real streaming standby of the test cluster
//! (`scripts/standby.sh`): look-ups served by the replica, lag over the bound, read-your-writes under
//! concurrency, a replica paused, stopped and restarted, promoted, cut off from its primary, of
//! another cluster, a busy or idle primary, slow look-ups, writes dropped mid-statement.
//!
//! The tests share one standby and change it (pause it, delay its replay, stop it), so they take
//! `STANDBY` in turn, and each starts by putting the standby back to normal.
use std::str::FromStr;
use std::time::{Duration, Instant};

use livermore_db::{Db, Identity, Profile, Role, find_by_identity};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Mutex;

use crate::support::{local_cluster_only, run_script};

static STANDBY: Mutex<()> = Mutex::const_new(());

const CHECK: Duration = Duration::from_millis(50);

fn standby_script(command: &str) -> String {
    run_script("standby.sh", &[command])
}

/// The standby's connect options for the test's own database (created on the primary by
/// `#[sqlx::test]`, replicated from there), once the standby has it.
async fn standby_options(primary: &PgPool) -> PgConnectOptions {
    local_cluster_only("the streaming standby");
    let url = standby_script("up");
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(primary)
        .await
        .unwrap();
    let options = PgConnectOptions::from_str(&url)
        .unwrap()
        .database(&database);
    let same: bool = {
        let mut standby = connect_eventually(&options).await;
        let theirs: i64 = sqlx::query_scalar("SELECT system_identifier FROM pg_control_system()")
            .fetch_one(&mut standby)
            .await
            .unwrap();
        let ours: i64 = sqlx::query_scalar("SELECT system_identifier FROM pg_control_system()")
            .fetch_one(primary)
            .await
            .unwrap();
        theirs == ours
    };
    assert!(
        same,
        "the standby does not replicate DATABASE_URL's cluster (these tests need the project-local cluster)"
    );
    options
}

async fn connect_eventually(options: &PgConnectOptions) -> PgConnection {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match PgConnection::connect_with(options).await {
            Ok(conn) => return conn,
            Err(e) if Instant::now() > deadline => panic!("cannot reach the standby: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Puts the standby back to normal: running, replaying, no apply delay.
async fn reset_standby(options: &PgConnectOptions) {
    let mut conn = connect_eventually(options).await;
    sqlx::query("ALTER SYSTEM RESET recovery_min_apply_delay")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("SELECT pg_wal_replay_resume() WHERE pg_is_wal_replay_paused()")
        .execute(&mut conn)
        .await
        .unwrap();
}

async fn set_apply_delay(options: &PgConnectOptions, delay: &str) {
    let mut conn = connect_eventually(options).await;
    // A constant of the tests', not input: ALTER SYSTEM takes no parameters.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER SYSTEM SET recovery_min_apply_delay = '{delay}'"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&mut conn)
        .await
        .unwrap();
}

/// The standby for this test alone (its turn), back to normal: its options for the test's database.
/// A standby an earlier test left promoted or cut off from the primary (a test that failed half-way)
/// is rebuilt first.
async fn take_standby(
    primary: &PgPool,
) -> (tokio::sync::MutexGuard<'static, ()>, PgConnectOptions) {
    let turn = STANDBY.lock().await;
    local_cluster_only("the streaming standby");
    let server = PgConnectOptions::from_str(&standby_script("up"))
        .unwrap()
        .database("postgres");
    let (in_recovery, conninfo): (bool, String) = {
        let mut conn = connect_eventually(&server).await;
        sqlx::query_as("SELECT pg_is_in_recovery(), current_setting('primary_conninfo')")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    if !in_recovery || conninfo.is_empty() {
        standby_script("rebuild");
    }
    let options = standby_options(primary).await;
    reset_standby(&options).await;
    (turn, options)
}

fn primary_options(primary: &PgPool) -> PgConnectOptions {
    primary.connect_options().as_ref().clone()
}

async fn routed(primary: &PgPool, replica: &PgConnectOptions) -> Db {
    Db::builder(primary_options(primary))
        .replicas([replica.clone()])
        .check_interval(CHECK)
        .build()
        .await
        .unwrap()
}

/// Waits until `condition` holds, checking every 10 ms, for at most `within`.
async fn eventually(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `condition` holds of the handle, driving look-ups meanwhile (the checks start with
/// the first), for at most `within`.
async fn driving_lookups_until(
    db: &Db,
    within: Duration,
    what: &str,
    condition: impl Fn(&Db) -> bool,
) {
    let deadline = Instant::now() + within;
    let nobody = Identity::parse("clerk", "user_nobody").unwrap();
    while !condition(db) {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        db.find_by_identity(&nobody).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the handle has a serving replica, driving look-ups.
async fn until_replica_serves(db: &Db, within: Duration) {
    driving_lookups_until(db, within, "the replica serves", |db| {
        !db.serving_replicas().is_empty()
    })
    .await;
}

async fn users(db: &Db, n: usize, prefix: &str) -> Vec<Identity> {
    let mut identities = Vec::new();
    for i in 0..n {
        let sub = format!("user_{prefix}_{i}");
        let profile = Profile::parse(
            "clerk",
            &sub,
            &format!("{prefix}{i}@example.com"),
            None,
            None,
        )
        .unwrap();
        db.sign_in(&profile).await.unwrap();
        identities.push(Identity::parse("clerk", &sub).unwrap());
    }
    identities
}

/// Waits until the standby has replayed everything the primary has flushed now.
async fn until_replayed(primary: &PgPool, options: &PgConnectOptions) {
    let flushed: i64 =
        sqlx::query_scalar("SELECT (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::int8")
            .fetch_one(primary)
            .await
            .unwrap();
    let mut standby = connect_eventually(options).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let replayed: i64 =
            sqlx::query_scalar("SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8")
                .fetch_one(&mut standby)
                .await
                .unwrap();
        if replayed >= flushed {
            return;
        }
        assert!(Instant::now() < deadline, "the standby did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A look-up through the handle finds the user.
async fn answers(db: &Db, identity: &Identity) {
    let found = db.find_by_identity(identity).await.unwrap();
    assert!(found.is_some(), "{identity:?} not found");
}

async fn transactions_on(options: &PgConnectOptions) -> i64 {
    let mut conn = connect_eventually(options).await;
    sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

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

#[sqlx::test]
async fn lag_over_the_bound_sends_lookups_to_the_primary(primary: PgPool) {
    let (_turn, options) = take_standby(&primary).await;
    let db = Db::builder(primary_options(&primary))
        .replicas([options.clone()])
        .check_interval(CHECK)
        .max_lag(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
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
    for identity in &identities {
        answers(&reader, identity).await;
    }
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

    // Restarted: look-ups come back to it.
    standby_script("up");
    until_replica_serves(&reader, Duration::from_secs(15)).await;
    let before = reader.stats();
    for identity in &identities {
        answers(&reader, identity).await;
    }
    assert_eq!(
        reader.stats().replicas[0] - before.replicas[0],
        identities.len() as u64
    );
}

/// A standby promoted (a fail-over, or by mistake) is a copy of nothing any more: it is out at its
/// next check, and what is written on it after the promotion is never served.
#[sqlx::test]
async fn a_promoted_standby_is_refused(primary: PgPool) {
    let (_turn, options) = take_standby(&primary).await;
    // A bound far longer than the test: only the check of recovery can take the replica out.
    let db = Db::builder(primary_options(&primary))
        .replicas([options.clone()])
        .check_interval(CHECK)
        .max_lag(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
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
    let db = Db::builder(primary_options(&primary))
        .replicas([options.clone()])
        .check_interval(CHECK)
        .max_lag(max_lag)
        .build()
        .await
        .unwrap();
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
    let started = Instant::now();
    let mut writes = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let name = format!("Busy {writes}");
        let profile = Profile::parse(
            "clerk",
            "user_busy_0",
            "busy0@example.com",
            Some(&name),
            None,
        )
        .unwrap();
        db.sign_in(&profile).await.unwrap();
        let seen = db.find_by_identity(&identities[0]).await.unwrap().unwrap();
        assert_eq!(
            seen.display_name.as_deref(),
            Some(name.as_str()),
            "write {writes}"
        );
        writes += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
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
        "under writes: {writes} sign-ins, {on_standby} look-ups on the standby, {on_primary} on the primary ({:.1} %); {after:?}",
        share * 100.0
    );
    assert!(writes >= 100, "{writes} writes in 3 s");
    assert!(
        share >= 0.9,
        "the standby served {:.1} % of the look-ups ({on_standby} of {})",
        share * 100.0,
        on_standby + on_primary
    );
}

/// The checks run on connections of their own: with every connection the handle holds to the
/// primary busy (four writes waiting on a row lock for 3 s), the replica keeps serving. (They used
/// to sample the primary through the application's pool: saturated, no sample was taken, and every
/// replica aged out after `max_lag`.)
#[sqlx::test]
#[ignore = "timing: make test runs it alone (cargo test -- --ignored --test-threads=1)"]
async fn a_busy_primary_does_not_starve_the_checks(primary: PgPool) {
    let (_turn, options) = take_standby(&primary).await;
    let db = Db::builder(primary_options(&primary))
        .replicas([options.clone()])
        .connections(4)
        .check_interval(CHECK)
        .max_lag(Duration::from_millis(500))
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
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            reader.serving_replicas(),
            [0],
            "the replica stopped serving {:?} into the saturation",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let db = Db::builder(primary_options(&primary))
        .replicas([options.clone()])
        .check_interval(CHECK)
        .max_lag(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
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
    let mut locker = primary.begin().await.unwrap();
    sqlx::query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
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

/// Commits a transaction with an id on the primary: its synchronous commit flushes every WAL record
/// before it (a lock's, an abort's), so the standby receives them.
async fn flush_wal(primary: &PgPool) {
    let mut tx = primary.begin().await.unwrap();
    sqlx::query("SELECT txid_current()")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// Waits until the standby's replay holds (or no longer holds) an ACCESS EXCLUSIVE lock on `users`.
async fn until_standby_locks_users(options: &PgConnectOptions, locked: bool) {
    let mut standby = connect_eventually(options).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let holds: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT FROM pg_locks WHERE mode = 'AccessExclusiveLock'
                            AND relation = 'users'::regclass AND granted)",
        )
        .fetch_one(&mut standby)
        .await
        .unwrap();
        if holds == locked {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the standby's lock on users is not {locked}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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

/// A write whose caller goes away mid-statement (its future dropped) commits after the drop: every
/// read of the session after the commit sees it, though the standby applies 300 ms late; and the
/// unknown position does not pin the session to the primary: the replica serves it again.
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
         AS $$ BEGIN PERFORM pg_sleep(0.5); RETURN NEW; END $$",
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
