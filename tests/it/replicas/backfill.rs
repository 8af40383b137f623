//! Migration 0009's backfill, run by `migrate_on`, beside a replica that replays late or not at all:
//! it pauses between batches instead of building the replica's lag.
use livermore_db::{Backfill, LockRetry, MigrateOptions, migrate_on};

use super::*;
use crate::common::{applied_versions, at_8_with_rows_to_backfill, backfilled};

const ROWS: i32 = 20_000;
const BATCH: i64 = 1_000;

fn options(max_lag: Duration, wait: Duration) -> MigrateOptions {
    MigrateOptions::new(
        LockRetry::default(),
        Backfill::new(BATCH, Duration::from_secs(5)).replicas(Some(max_lag), wait),
    )
}

/// With the replica's replay paused, the backfill stops after the batches written within
/// `max_replica_lag` of the first it has not replayed, waits `replica_wait`, and fails naming the
/// replica, the batches before committed; resumed, migrating again finishes. (Without the pause
/// all 20 batches would be written at once.)
#[sqlx::test(migrations = false)]
async fn the_backfill_stops_while_a_replica_does_not_replay(primary: PgPool) {
    let (_turn, standby) = take_standby(&primary).await;
    at_8_with_rows_to_backfill(&primary, ROWS).await;
    let mut admin = connect_eventually(&standby).await;
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&mut admin)
        .await
        .unwrap();

    let mut conn = primary.acquire().await.unwrap();
    let started = Instant::now();
    let blocked = migrate_on(
        &mut conn,
        None,
        options(Duration::from_millis(20), Duration::from_secs(2)),
    )
    .await;
    let waited = started.elapsed();
    let reason = match blocked {
        Err(livermore_db::Error::MigrationBlocked { reason }) => reason,
        other => panic!("{other:?}"),
    };
    let done = backfilled(&primary).await;
    println!("paused replica: {done} rows backfilled, failed after {waited:?}: {reason}");
    assert!(
        reason.contains("waited")
            && reason.contains("replicas to replay")
            && reason.contains(&format!("{done} row(s)")),
        "{reason}"
    );
    assert!(!reason.contains("127.0.0.1"), "an address: {reason}");
    assert!(
        done > 0 && done <= i64::from(ROWS) / 2,
        "{done} of {ROWS} rows backfilled past a replica that replays nothing"
    );
    assert_eq!(
        applied_versions(&primary).await,
        (1..=8).collect::<Vec<_>>()
    );

    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&mut admin)
        .await
        .unwrap();
    migrate_on(
        &mut conn,
        None,
        options(Duration::from_millis(100), Duration::from_secs(30)),
    )
    .await
    .expect("goes on where it stopped");
    assert_eq!(backfilled(&primary).await, i64::from(ROWS));
    assert_eq!(
        applied_versions(&primary).await,
        crate::common::all_versions()
    );
}

/// Behind a replica that applies 300 ms late and a bound of zero (every batch replayed before the
/// next), the rows the replica has not yet seen never exceed two batches (one committed, one read
/// between the two counts), sampled every 20 ms; the backfill finishes in seconds.
#[sqlx::test(migrations = false)]
async fn the_backfill_keeps_a_late_replica_within_a_batch(primary: PgPool) {
    let (_turn, standby) = take_standby(&primary).await;
    at_8_with_rows_to_backfill(&primary, ROWS / 2).await;
    let mut replica = connect_eventually(&standby).await;
    // The replica has replayed migrations 1 to 8 before it is slowed down.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&mut replica)
        .await
        .ok()
        != Some(8)
    {
        assert!(
            Instant::now() < deadline,
            "the replica did not replay migrations 1-8"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    set_apply_delay(&standby, "300ms").await;

    let started = Instant::now();
    let migrating = {
        let primary = primary.clone();
        tokio::spawn(async move {
            let mut conn = primary.acquire().await.unwrap();
            migrate_on(
                &mut conn,
                None,
                options(Duration::ZERO, Duration::from_secs(30)),
            )
            .await
        })
    };
    let mut most_unseen = 0;
    let mut samples = 0;
    while !migrating.is_finished() {
        // The replica first: the primary's count, read after, is never lower.
        let seen = backfilled(&mut replica).await;
        let written = backfilled(&primary).await;
        most_unseen = most_unseen.max(written - seen);
        samples += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    migrating.await.unwrap().expect("the backfill finishes");
    let took = started.elapsed();
    println!("late replica: at most {most_unseen} rows unseen over {samples} samples, {took:?}");
    // 10 batches, each waiting about 300 ms for the replica: a few seconds, not a status interval
    // (10 s) each.
    assert!(took < Duration::from_secs(25), "{took:?} for 10 batches");
    assert!(samples >= 10, "{samples} samples");
    assert!(
        most_unseen <= 2 * BATCH,
        "{most_unseen} rows written that the replica had not replayed (batches of {BATCH})"
    );
    assert_eq!(backfilled(&primary).await, i64::from(ROWS / 2));
}
