//! Migration 0009's backfill, run by [`migrate_on`](super::migrate_on) in batches that are each a
//! statement of their own: each bounded by a real `statement_timeout` (inside 0009's DO block the
//! timer starts once, when the block arrives, so a per-batch bound there is a no-op), and paused
//! while a replica has not replayed what the backfill wrote for longer than a bound, so that it does
//! not build replica lag on a busy cluster. 0009's SQL stays as it is for other runners (sqlx-cli):
//! once this has done its work, the migration is recorded as applied without running.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use super::{LockRetry, holders_of_users, lock_timed_out, pause_after};
use crate::Error;

/// How [`migrate_on`](super::migrate_on) brings the rows that existed before 0005 up to date
/// (migration 0009): in batches by id, each committed on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Backfill {
    /// Users (a range of ids) per batch. Default 10 000, as 0009's SQL.
    pub batch_ids: i64,
    /// The longest one batch may run (its statements' `statement_timeout`). A batch cancelled at
    /// the bound is tried again over half the ids, down to 100; past that, migrating fails with
    /// [`Error::MigrationBlocked`] and the batches before it stay committed. Default 5 s.
    pub batch_timeout: Duration,
    /// Before each batch, wait while a streaming replica has not replayed a batch committed longer
    /// ago than this, so that the backfill adds at most about this much to any replica's lag.
    /// `None` does not look at replicas. Default 500 ms: half of [`DEFAULT_MAX_LAG`], so that a
    /// [`Db`](crate::Db) keeps reading from its replicas meanwhile.
    ///
    /// Replicas are the primary's `pg_stat_replication` rows in state `streaming` (logical
    /// replication's senders are not waited for). Their positions are visible to superusers and
    /// members of `pg_read_all_stats` only; to any other role every replica counts as behind, so
    /// migrating fails after [`replica_wait`](Self::replica_wait) saying so.
    ///
    /// [`DEFAULT_MAX_LAG`]: crate::DEFAULT_MAX_LAG
    pub max_replica_lag: Option<Duration>,
    /// The longest one such wait lasts before migrating fails with [`Error::MigrationBlocked`]
    /// naming the replicas (by `application_name`) and how far behind they are. Default 60 s.
    pub replica_wait: Duration,
}

impl Default for Backfill {
    fn default() -> Self {
        Backfill {
            batch_ids: 10_000,
            batch_timeout: Duration::from_secs(5),
            max_replica_lag: Some(Duration::from_millis(500)),
            replica_wait: Duration::from_secs(60),
        }
    }
}

impl Backfill {
    /// The default, with batches of `batch_ids` users, each bounded by `batch_timeout`.
    pub fn new(batch_ids: i64, batch_timeout: Duration) -> Backfill {
        Backfill {
            batch_ids,
            batch_timeout,
            ..Backfill::default()
        }
    }

    /// The same, waiting for replicas as [`max_replica_lag`](Self::max_replica_lag) and
    /// [`replica_wait`](Self::replica_wait) say.
    pub fn replicas(self, max_replica_lag: Option<Duration>, replica_wait: Duration) -> Backfill {
        Backfill {
            max_replica_lag,
            replica_wait,
            ..self
        }
    }
}

/// The smallest batch a batch that ran past its bound is cut down to.
const SMALLEST_BATCH: i64 = 100;

/// Runs 0009's work in batches; 0005 must be recorded (0009's own check).
pub(super) async fn run(
    conn: &mut PgConnection,
    backfill: Backfill,
    lock: LockRetry,
    started: Instant,
) -> Result<(), Error> {
    if backfill.batch_ids < 1 {
        return Err(Error::InvalidInput {
            field: "batch_ids",
            reason: "must be at least 1".into(),
        });
    }
    let range = sqlx::query!(
        r#"SELECT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = 5) AS "since_0005!",
                  min(id)::int8 AS "lo", max(id)::int8 AS "last"
           FROM users"#
    )
    .fetch_one(&mut *conn)
    .await?;
    if !range.since_0005 {
        return Err(Error::MigrationBlocked {
            reason: "migration 0005 is not recorded in _sqlx_migrations: apply the migrations in \
                     order"
                .to_owned(),
        });
    }
    let (Some(mut lo), Some(last)) = (range.lo, range.last) else {
        return Ok(()); // no users
    };
    let mut commits = VecDeque::new();
    let mut size = backfill.batch_ids;
    let mut locked_out = 0;
    let mut changed = 0u64;
    while lo <= last {
        if let Some(max_lag) = backfill.max_replica_lag {
            wait_for_replicas(conn, &mut commits, max_lag, backfill.replica_wait, changed).await?;
        }
        let hi = lo.saturating_add(size);
        match batch(conn, lo, hi, lock.attempt, backfill.batch_timeout).await {
            Ok((rows, lsn)) => {
                changed += rows;
                if let Some(lsn) = lsn {
                    commits.push_back((lsn, Instant::now()));
                }
                lo = hi;
                locked_out = 0;
            }
            Err(e) if lock_timed_out(&e) => {
                let pause = pause_after(locked_out);
                locked_out += 1;
                if started.elapsed() + pause + lock.attempt > lock.budget {
                    let holders = holders_of_users(conn).await?;
                    return Err(Error::MigrationBlocked {
                        reason: format!(
                            "migration 0009's backfill could not lock rows of users (ids from \
                             {lo}) in {locked_out} attempts over {:.1} s; sessions holding users: \
                             {holders}. {changed} row(s) changed before are committed; migrate \
                             again to go on",
                            started.elapsed().as_secs_f64()
                        ),
                    });
                }
                tokio::time::sleep(pause).await;
            }
            Err(e) if timed_out(&e) => {
                if size <= SMALLEST_BATCH {
                    return Err(Error::MigrationBlocked {
                        reason: format!(
                            "a batch of migration 0009's backfill (ids {lo} to {}) ran past its \
                             bound of {} ms even at {size} ids: something makes updating those \
                             rows slow (a trigger, I/O). {changed} row(s) changed before are \
                             committed; migrate again to go on, or with a larger \
                             Backfill::batch_timeout",
                            hi - 1,
                            backfill.batch_timeout.as_millis()
                        ),
                    });
                }
                size = (size / 2).max(SMALLEST_BATCH);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// One batch, `lo <= id < hi`, in a transaction of its own whose statements wait at most `attempt`
/// for a lock and run at most `timeout` each: the rows changed, and the WAL position after its
/// commit (`None` when it changed nothing, so wrote nothing for a replica to replay).
async fn batch(
    conn: &mut PgConnection,
    lo: i64,
    hi: i64,
    attempt: Duration,
    timeout: Duration,
) -> Result<(u64, Option<i64>), sqlx::Error> {
    let mut tx = conn.begin().await?;
    let lock_timeout = format!("{}ms", attempt.as_millis().max(1));
    let statement_timeout = format!("{}ms", timeout.as_millis().max(1));
    sqlx::query_scalar!(
        r#"SELECT set_config('lock_timeout', $1, true) || set_config('statement_timeout', $2, true)
             AS "set!""#,
        lock_timeout,
        statement_timeout
    )
    .fetch_one(&mut *tx)
    .await?;
    // The same changes as 0009's SQL, over one range of ids.
    let released = sqlx::query!(
        r#"UPDATE users u
           SET released_email = u.email,
               email = 'deleted+' || md5(u.identity_provider || ':' || u.identity_sub) || '@deleted.invalid'
           FROM identity_tombstones t
           WHERE u.id >= $1::int8 AND u.id < $2::int8
             AND t.identity_provider = u.identity_provider AND t.identity_sub = u.identity_sub
             AND NOT u.is_active AND u.released_email IS NULL"#,
        lo,
        hi
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let sourced = sqlx::query!(
        r#"UPDATE users SET role_source = 'clerk'
           WHERE id >= $1::int8 AND id < $2::int8
             AND identity_role_updated_at
                 < (SELECT installed_on AT TIME ZONE 'UTC' FROM _sqlx_migrations WHERE version = 5)
             AND role_source = 'manual'"#,
        lo,
        hi
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    let rows = released + sourced;
    if rows == 0 {
        return Ok((0, None));
    }
    let lsn =
        sqlx::query_scalar!(r#"SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8 AS "lsn!""#)
            .fetch_one(&mut *conn)
            .await?;
    Ok((rows, Some(lsn)))
}

/// Whether a statement was cancelled by `statement_timeout` (SQLSTATE 57014).
fn timed_out(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("57014"))
}

/// A streaming replica's name and how far it has replayed (`None`: not visible to this role).
struct Replica {
    name: String,
    replayed: Option<i64>,
}

async fn replicas(conn: &mut PgConnection) -> Result<Vec<Replica>, sqlx::Error> {
    // A role without pg_read_all_stats sees every column but pid NULL: such rows are kept (state
    // unknown) and count as behind, rather than being skipped as not streaming.
    let rows = sqlx::query!(
        r#"SELECT coalesce(r.application_name, '') AS "name!",
                  (r.replay_lsn - '0/0'::pg_lsn)::int8 AS "replayed"
           FROM pg_stat_replication r
           WHERE (r.state IS NULL OR r.state = 'streaming')
             AND NOT EXISTS (SELECT 1 FROM pg_replication_slots s
                             WHERE s.active_pid = r.pid AND s.slot_type = 'logical')
           ORDER BY r.pid"#
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Replica {
            name: r.name,
            replayed: r.replayed,
        })
        .collect())
}

/// Waits while some replica has not replayed a batch committed more than `max_lag` ago; forgets
/// the batches every replica has replayed. Fails after `wait`.
async fn wait_for_replicas(
    conn: &mut PgConnection,
    commits: &mut VecDeque<(i64, Instant)>,
    max_lag: Duration,
    wait: Duration,
    changed: u64,
) -> Result<(), Error> {
    let waiting = Instant::now();
    let poll = (max_lag / 2).clamp(Duration::from_millis(10), Duration::from_millis(100));
    loop {
        if commits.is_empty() {
            return Ok(());
        }
        let replicas = replicas(conn).await?;
        // Behind: (name, the age of the oldest batch it has not replayed).
        let behind: Vec<(String, Duration)> = replicas
            .iter()
            .filter_map(|r| {
                let oldest = commits
                    .iter()
                    .find(|(lsn, _)| r.replayed.is_none_or(|replayed| replayed < *lsn))?;
                Some((r.name.clone(), oldest.1.elapsed()))
            })
            .collect();
        let everyone = replicas
            .iter()
            .filter_map(|r| r.replayed)
            .min()
            .filter(|_| replicas.iter().all(|r| r.replayed.is_some()));
        match everyone {
            Some(replayed) => commits.retain(|(lsn, _)| *lsn > replayed),
            None if replicas.is_empty() => commits.clear(),
            None => {}
        }
        let over: Vec<&(String, Duration)> =
            behind.iter().filter(|(_, lag)| *lag > max_lag).collect();
        if over.is_empty() {
            return Ok(());
        }
        if waiting.elapsed() >= wait {
            let unseen = replicas.iter().any(|r| r.replayed.is_none());
            let names = over
                .iter()
                .map(|(name, lag)| format!("{name:?} ({:.1} s behind)", lag.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ");
            let why = if unseen {
                " (this role cannot see replicas' positions: grant it pg_read_all_stats, or \
                 migrate with Backfill::max_replica_lag None)"
            } else {
                ""
            };
            return Err(Error::MigrationBlocked {
                reason: format!(
                    "migration 0009's backfill waited {:.1} s for replicas to replay its batches \
                     to within {} ms, and they did not: {names}{why}. {changed} row(s) changed \
                     so far are committed; migrate again once they have caught up",
                    waiting.elapsed().as_secs_f64(),
                    max_lag.as_millis()
                ),
            });
        }
        tokio::time::sleep(poll).await;
    }
}
