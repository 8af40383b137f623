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

use crate::common::lock_users;
use crate::support::{local_cluster_only, run_script};

mod backfill;
mod faults;
mod serving;
mod timing;

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

/// A handle on the test's database with the standby as its replica, checked every `CHECK`.
async fn routed(primary: &PgPool, replica: &PgConnectOptions) -> Db {
    routed_with_lag(primary, replica, livermore_db::DEFAULT_MAX_LAG).await
}

/// The same with a `max_lag` of the test's own.
async fn routed_with_lag(primary: &PgPool, replica: &PgConnectOptions, max_lag: Duration) -> Db {
    Db::builder(primary_options(primary))
        .replicas([replica.clone()])
        .check_interval(CHECK)
        .max_lag(max_lag)
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
