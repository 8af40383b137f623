//! What routing to replicas knows and how it learns it: the primary's WAL position after writes and
//! at each check, each replica's replay position (at each check, and read again when a look-up
//! needs it), and the check task.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sqlx::PgConnection;

use super::Shared;
use super::node::Node;
use crate::error::Error;

/// One replica: its connections and what the handle knows of it.
pub(crate) struct Replica {
    pub(crate) node: Node,
    /// Whether the last check found it well (in recovery, not paused, answering).
    pub(crate) healthy: AtomicBool,
    /// Its replay position, as last read (by a check or a probe): every snapshot it takes from then
    /// on holds everything up to it.
    pub(crate) replayed: AtomicU64,
    /// It holds everything the primary committed before this moment (nanoseconds since
    /// `Shared::epoch`; 0: nothing known).
    pub(crate) covered_until: AtomicU64,
    pub(crate) served: AtomicU64,
    /// Whether the last check found it in another cluster than the primary's (another
    /// `system_identifier`): refused, whatever its position, until a check finds it in the
    /// primary's cluster.
    pub(crate) foreign: AtomicBool,
    probing: AtomicBool,
    /// Woken when a probe has read the replay position.
    pub(crate) probed: tokio::sync::Notify,
}

impl Replica {
    pub(crate) fn new(node: Node) -> Replica {
        Replica {
            node,
            healthy: AtomicBool::new(false),
            replayed: AtomicU64::new(0),
            covered_until: AtomicU64::new(0),
            served: AtomicU64::new(0),
            foreign: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            probed: tokio::sync::Notify::new(),
        }
    }
}

/// Primary positions sampled lately by the check task, oldest first: (when, position).
#[derive(Default)]
pub(crate) struct Samples(Mutex<VecDeque<(u64, u64)>>);

impl Samples {
    fn push(&self, at: u64, position: u64, keep: u64) {
        let mut samples = self.0.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back((at, position));
        while samples.len() > 1
            && samples
                .front()
                .is_some_and(|(t, _)| at.saturating_sub(*t) > keep)
        {
            samples.pop_front();
        }
    }

    /// The newest sample at or below `replayed`: its time.
    fn covered_by(&self, replayed: u64) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .rev()
            .find(|(_, lsn)| *lsn <= replayed)
            .map_or(0, |(t, _)| *t)
    }

    /// The position of the first sample taken at or after `since`.
    fn first_since(&self, since: u64) -> Option<u64> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(t, _)| *t >= since)
            .map(|(_, lsn)| *lsn)
    }
}

/// The largest position a handle may be asked to wait for.
pub(crate) const MAX_POSITION: u64 = i64::MAX as u64;

/// What a session (a handle and its clones) wrote: the newest position known, and, when the
/// position of a write could not be read (the read failed, or the caller went away mid-call), the
/// moment from which the check task's next primary sample stands for it. Also where the session's
/// look-ups went.
#[derive(Default)]
pub(crate) struct Written {
    position: AtomicU64,
    unknown_since: AtomicU64,
    pub(crate) on_primary: AtomicU64,
    pub(crate) on_replicas: AtomicU64,
}

impl Written {
    pub(crate) fn at(position: u64) -> Written {
        Written {
            position: AtomicU64::new(position.min(MAX_POSITION)),
            ..Written::default()
        }
    }

    pub(crate) fn record(&self, position: u64) {
        self.position.fetch_max(position, Ordering::AcqRel);
    }

    /// A write whose position is not known: what the primary held at a later moment covers it.
    pub(crate) fn record_unknown(&self, now: u64) {
        self.unknown_since.fetch_max(now, Ordering::AcqRel);
    }

    /// The position a replica must have replayed for this handle's look-ups; `None` while a write's
    /// position waits for the next sample (the primary answers meanwhile).
    pub(crate) fn required(&self, samples: &Samples) -> Option<u64> {
        let since = self.unknown_since.load(Ordering::Acquire);
        if since != 0 {
            let sampled = samples.first_since(since)?;
            self.position.fetch_max(sampled, Ordering::AcqRel);
            let _ =
                self.unknown_since
                    .compare_exchange(since, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
        Some(self.position.load(Ordering::Acquire))
    }
}

/// The primary's flushed position (the check task's samples) and its cluster's `system_identifier`.
/// Every synchronous commit that has returned ends at or before that position. Not the insert
/// position: records not flushed yet (a row lock of an open transaction, a page pruned by a reader)
/// can stay unflushed on an idle primary for as long as the transaction lasts (the WAL writer flushes
/// complete pages only), and no standby can replay them; nor does the insert position stop at a
/// page boundary where replay does. A commit with `synchronous_commit = off` is flushed by the WAL
/// writer within three `wal_writer_delay`s (600 ms by default), so for such writes the bound is
/// `max_lag` plus that.
pub(crate) async fn sample_position(conn: &mut PgConnection) -> Result<(u64, i64), Error> {
    let row = sqlx::query!(
        r#"SELECT (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::int8 AS "lsn!",
                  (SELECT system_identifier FROM pg_control_system()) AS "system!""#
    )
    .fetch_one(conn)
    .await?;
    Ok((u64::try_from(row.lsn).unwrap_or(0), row.system))
}

/// The position a write just committed on `conn` ends at or before, read on the same connection
/// right after it: the flush position when the session commits synchronously (the commit returned
/// only once flushed), else the insert position. Not the insert position always: other sessions
/// insert records that are not flushed at once (a reader pruning a page, say), and a standby
/// cannot replay what has not been flushed, so a token past them would keep look-ups on the
/// primary for up to `wal_writer_delay` after every write.
pub(crate) async fn write_position(conn: &mut PgConnection) -> Result<u64, Error> {
    let lsn = sqlx::query_scalar!(
        r#"SELECT (CASE WHEN current_setting('synchronous_commit') = 'off'
                        THEN pg_current_wal_insert_lsn()
                        ELSE pg_current_wal_flush_lsn() END - '0/0'::pg_lsn)::int8 AS "lsn!""#
    )
    .fetch_one(conn)
    .await?;
    Ok(u64::try_from(lsn).unwrap_or(0))
}

/// What a check reads from a replica.
struct ReplicaStatus {
    in_recovery: bool,
    replayed: Option<i64>,
    paused: bool,
    /// The cluster's `system_identifier`: a standby's is its primary's (copied by the base backup).
    system: i64,
}

async fn replica_status(conn: &mut PgConnection) -> Result<ReplicaStatus, Error> {
    let row = sqlx::query!(
        r#"SELECT pg_is_in_recovery() AS "in_recovery!",
                  (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8 AS replayed,
                  CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END
                    AS "paused!",
                  (SELECT system_identifier FROM pg_control_system()) AS "system!""#
    )
    .fetch_one(conn)
    .await?;
    Ok(ReplicaStatus {
        in_recovery: row.in_recovery,
        replayed: row.replayed,
        paused: row.paused,
        system: row.system,
    })
}

/// A replica's replay position, while it is replaying (in recovery, not paused); what a probe reads
/// after a write, on the look-ups' path. Its cluster is the periodic check's to read.
async fn replayed_now(conn: &mut PgConnection) -> Result<Option<i64>, Error> {
    let replayed = sqlx::query_scalar!(
        r#"SELECT CASE WHEN pg_is_in_recovery() AND NOT pg_is_wal_replay_paused()
                       THEN (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8 END AS "replayed""#
    )
    .fetch_one(conn)
    .await?;
    Ok(replayed)
}

/// Reads a replica's replay position now, one read in flight per replica, and wakes the look-ups
/// waiting for it: after a write, look-ups come back to the replica as soon as it has replayed the
/// write.
pub(crate) fn probe(shared: &Arc<Shared>, index: usize) {
    let replica = &shared.replicas[index];
    if replica.probing.swap(true, Ordering::AcqRel) {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let replica = &shared.replicas[index];
        let read = async {
            let mut lease = replica.node.lease().await?;
            let replayed = replayed_now(lease.conn()).await;
            lease.finish(replayed)
        };
        if let Ok(Ok(Some(replayed))) = tokio::time::timeout(shared.replica_timeout, read).await {
            replica
                .replayed
                .fetch_max(u64::try_from(replayed).unwrap_or(0), Ordering::AcqRel);
        }
        replica.probing.store(false, Ordering::Release);
        replica.probed.notify_waiters();
    });
}

/// The check task: every interval, the primary's position, then each replica's, each on a
/// connection of the task's own, until the last handle is dropped.
pub(crate) async fn check_replicas(shared: Weak<Shared>) {
    let mut primary: Option<PgConnection> = None;
    let mut replicas: Vec<Option<PgConnection>> = Vec::new();
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        replicas.resize_with(shared.replicas.len(), || None);
        let interval = shared.check_interval;
        let started = Instant::now();
        check_once(&shared, &mut primary, &mut replicas).await;
        drop(shared);
        tokio::time::sleep(interval.saturating_sub(started.elapsed())).await;
    }
}

/// Runs `read` on the connection in `slot` (opening it first), within `timeout`; a failure closes
/// the connection, and the next check opens a new one.
async fn on_own_connection<T>(
    node: &Node,
    slot: &mut Option<PgConnection>,
    timeout: Duration,
    read: impl AsyncFnOnce(&mut PgConnection) -> Result<T, Error>,
) -> Option<T> {
    let attempt = async {
        if slot.is_none() {
            *slot = Some(node.open().await?);
        }
        let Some(conn) = slot.as_mut() else {
            unreachable!("opened above")
        };
        read(conn).await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(value)) => Some(value),
        _ => {
            *slot = None;
            None
        }
    }
}

async fn check_once(
    shared: &Arc<Shared>,
    primary: &mut Option<PgConnection>,
    replicas: &mut [Option<PgConnection>],
) {
    let timeout = shared.check_interval.max(Duration::from_millis(500));
    let sampled_at = shared.now();
    let position = on_own_connection(&shared.primary, primary, timeout, async |c| {
        sample_position(c).await
    })
    .await;
    // Without the primary's position nothing new is known; the replicas' coverage ages, and they
    // stop serving once it passes the bound.
    let Some((position, system)) = position else {
        return;
    };
    let keep =
        u64::try_from((shared.max_lag + 2 * shared.check_interval).as_nanos()).unwrap_or(u64::MAX);
    shared.samples.push(sampled_at, position, keep);
    for (replica, slot) in shared.replicas.iter().zip(replicas.iter_mut()) {
        let status = on_own_connection(&replica.node, slot, timeout, async |c| {
            replica_status(c).await
        })
        .await;
        let foreign = status.as_ref().is_some_and(|s| s.system != system);
        replica.foreign.store(foreign, Ordering::Release);
        match status {
            // Another cluster's server: its positions mean nothing here, and its rows are not ours.
            _ if foreign => replica.healthy.store(false, Ordering::Release),
            Some(ReplicaStatus {
                in_recovery: true,
                replayed: Some(replayed),
                paused: false,
                ..
            }) => {
                let replayed = u64::try_from(replayed).unwrap_or(0);
                // Stored, not maximised: a restarted replica may be behind what it had replayed.
                replica
                    .covered_until
                    .store(shared.samples.covered_by(replayed), Ordering::Release);
                replica.replayed.store(replayed, Ordering::Release);
                replica.healthy.store(true, Ordering::Release);
            }
            // Paused, promoted (no longer in recovery), unreachable, failing or too slow.
            _ => replica.healthy.store(false, Ordering::Release),
        }
    }
}
