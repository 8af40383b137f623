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
    /// The largest position a look-up waiting on a probe needs.
    wanted: AtomicU64,
    /// Woken when a probe is done (the replica has replayed what was wanted, or the wait is over).
    pub(crate) probed: tokio::sync::Notify,
    /// When a look-up last started a probe because the replica was stale (nanoseconds since
    /// `Shared::epoch`).
    stale_probed_at: AtomicU64,
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
            wanted: AtomicU64::new(0),
            probed: tokio::sync::Notify::new(),
            stale_probed_at: AtomicU64::new(0),
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

/// The primary's round trip, as the check task measures it on its own connection (a statement's
/// round trip, the open not included): a recent high, which each sample raises at once and which
/// decays by an eighth at each check, and a typical value (a moving average, an eighth per
/// sample). On a host whose cores are saturated every round trip is slow, a replica's as much as
/// the primary's: the replica timeout scales with the high (no timeout on a replica merely as slow
/// as the primary), the catch-up wait with the typical value (a look-up waits for a replica about
/// what asking the primary would cost).
#[derive(Default)]
pub(crate) struct Latency {
    high: AtomicU64,
    typical: AtomicU64,
}

impl Latency {
    pub(crate) fn record(&self, round_trip: Duration) {
        let sample = u64::try_from(round_trip.as_nanos()).unwrap_or(u64::MAX);
        let high = self.high.load(Ordering::Relaxed);
        self.high
            .store(sample.max(high - high / 8), Ordering::Relaxed);
        let typical = self.typical.load(Ordering::Relaxed);
        let typical = if typical == 0 {
            sample
        } else {
            typical - typical / 8 + sample / 8
        };
        self.typical.store(typical, Ordering::Relaxed);
    }

    /// The recent high.
    pub(crate) fn high(&self) -> Duration {
        Duration::from_nanos(self.high.load(Ordering::Relaxed))
    }

    /// The typical round trip.
    pub(crate) fn typical(&self) -> Duration {
        Duration::from_nanos(self.typical.load(Ordering::Relaxed))
    }
}

/// Whether a replica may serve a look-up now (all times in nanoseconds since the handle's epoch):
/// it was well at its last check, it is known to hold everything the primary committed before
/// `covered` (0: nothing known) and that is at most `max_lag` ago, and it has replayed the
/// position the look-up requires (the handle's own writes).
pub(crate) fn fresh(
    healthy: bool,
    covered: u64,
    now: u64,
    max_lag: u64,
    replayed: u64,
    required: u64,
) -> bool {
    healthy && covered != 0 && now.saturating_sub(covered) <= max_lag && replayed >= required
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

/// Reads a replica's replay position until it has replayed `required` (or whatever larger
/// position look-ups waiting meanwhile need), one probe task per replica, reading again as soon as
/// each read returns, for at most the catch-up wait; then wakes the look-ups waiting for it, once:
/// after a write, look-ups come back to the replica as soon as it has replayed the write, and the
/// waiting look-ups are not woken at every read.
pub(crate) fn probe(shared: &Arc<Shared>, index: usize, required: u64) {
    let replica = &shared.replicas[index];
    replica.wanted.fetch_max(required, Ordering::AcqRel);
    if replica.probing.swap(true, Ordering::AcqRel) {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let replica = &shared.replicas[index];
        let wait = super::catch_up(shared.primary_latency.typical(), shared.replica_patience());
        let window = ProbeWindow::from(tokio::time::Instant::now(), wait);
        let deadline = window.deadline;
        loop {
            let read = async {
                let mut lease = replica.node.lease().await?;
                let replayed = replayed_now(lease.conn()).await;
                lease.finish(replayed)
            };
            let Ok(Ok(Some(replayed))) = tokio::time::timeout_at(deadline, read).await else {
                break; // failed, paused, promoted, or out of time: the look-ups go to the primary
            };
            let replayed = replica
                .replayed
                .fetch_max(u64::try_from(replayed).unwrap_or(0), Ordering::AcqRel)
                .max(u64::try_from(replayed).unwrap_or(0));
            // What it has replayed covers the primary's samples up to it, as at a check.
            replica
                .covered_until
                .fetch_max(shared.samples.covered_by(replayed), Ordering::AcqRel);
            let wanted = replica.wanted.load(Ordering::Acquire);
            if window.done(replayed, wanted, tokio::time::Instant::now()) {
                break;
            }
        }
        replica.probing.store(false, Ordering::Release);
        replica.probed.notify_waiters();
    });
}

/// How long a probe reads: from its start for the catch-up wait.
struct ProbeWindow {
    deadline: tokio::time::Instant,
}

impl ProbeWindow {
    fn from(start: tokio::time::Instant, catch_up: Duration) -> ProbeWindow {
        ProbeWindow {
            deadline: start + catch_up,
        }
    }

    /// Whether a probe that has just read `replayed` stops: the replica has replayed what the
    /// look-ups waiting need (they are woken at once), or the wait is over (they go to the primary).
    fn done(&self, replayed: u64, wanted: u64, now: tokio::time::Instant) -> bool {
        replayed >= wanted || now >= self.deadline
    }
}

/// How often, at most, look-ups that find a replica well but stale read its replay position (a
/// probe): a replica that falls behind `max_lag` for a while (a burst of WAL, a replay stalled by
/// a busy host), or that a check found behind the sample it had just taken, serves again once it
/// has caught up, not only at the next check.
const STALE_PROBE_SPACING: Duration = Duration::from_millis(10);

/// Starts a probe of a replica that a look-up found well but stale, unless one started less than
/// [`STALE_PROBE_SPACING`] ago. The look-up itself goes to the primary.
pub(crate) fn probe_stale(shared: &Arc<Shared>, index: usize) {
    let spacing = u64::try_from(STALE_PROBE_SPACING.as_nanos()).unwrap_or(u64::MAX);
    if claim_spaced(
        &shared.replicas[index].stale_probed_at,
        shared.now(),
        spacing,
    ) {
        probe(shared, index, 0);
    }
}

/// Whether a caller at `now` may start what `last` spaces (the time it last started, in
/// nanoseconds), at most once in `spacing`: true for one caller only, which records `now`.
fn claim_spaced(last: &AtomicU64, now: u64, spacing: u64) -> bool {
    let previous = last.load(Ordering::Acquire);
    now.saturating_sub(previous) >= spacing
        && last
            .compare_exchange(previous, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
}

/// The check task: every interval, the primary's position, then each replica's, each on a
/// connection of the task's own, until the last handle is dropped.
pub(crate) async fn check_replicas(shared: Weak<Shared>) {
    let mut primary = Own::Closed;
    let mut replicas: Vec<Own> = Vec::new();
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        replicas.resize_with(shared.replicas.len(), || Own::Closed);
        let interval = shared.check_interval;
        let started = Instant::now();
        check_once(&shared, &mut primary, &mut replicas).await;
        drop(shared);
        tokio::time::sleep(interval.saturating_sub(started.elapsed())).await;
    }
}

/// The check task's connection to one server.
enum Own {
    Closed,
    /// Opening in a task of its own: a check that stops waiting for it leaves it opening, and a
    /// later check takes it (on a slow host a connect may take longer than one check may wait).
    Opening(tokio::task::JoinHandle<Result<PgConnection, Error>>),
    Open(PgConnection),
}

/// Runs `read` on the connection in `slot` (opening it first), within `timeout`; a failure closes
/// the connection, and the next check opens a new one. Returns the value and how long the read
/// itself took (the open not included).
async fn on_own_connection<T>(
    node: &Node,
    slot: &mut Own,
    timeout: Duration,
    read: impl AsyncFnOnce(&mut PgConnection) -> Result<T, Error>,
) -> Option<(T, Duration)> {
    let deadline = tokio::time::Instant::now() + timeout;
    if let Own::Closed = slot {
        *slot = Own::Opening(node.spawn_open());
    }
    if let Own::Opening(handle) = slot {
        match tokio::time::timeout_at(deadline, handle).await {
            Err(_) => return None, // still opening: the next check waits for it again
            Ok(Ok(Ok(conn))) => *slot = Own::Open(conn),
            Ok(_) => {
                *slot = Own::Closed;
                return None;
            }
        }
    }
    let Own::Open(conn) = slot else {
        return None;
    };
    let started = Instant::now();
    match tokio::time::timeout_at(deadline, read(conn)).await {
        Ok(Ok(value)) => Some((value, started.elapsed())),
        _ => {
            *slot = Own::Closed;
            None
        }
    }
}

async fn check_once(shared: &Arc<Shared>, primary: &mut Own, replicas: &mut [Own]) {
    let timeout = shared.check_interval.max(Duration::from_millis(500));
    let sampled_at = shared.now();
    let position = on_own_connection(&shared.primary, primary, timeout, async |c| {
        sample_position(c).await
    })
    .await;
    // Without the primary's position nothing new is known; the replicas' coverage ages, and they
    // stop serving once it passes the bound.
    let Some(((position, system), round_trip)) = position else {
        return;
    };
    shared.primary_latency.record(round_trip);
    let keep =
        u64::try_from((shared.max_lag + 2 * shared.check_interval).as_nanos()).unwrap_or(u64::MAX);
    shared.samples.push(sampled_at, position, keep);
    for (replica, slot) in shared.replicas.iter().zip(replicas.iter_mut()) {
        let status = on_own_connection(&replica.node, slot, timeout, async |c| {
            replica_status(c).await
        })
        .await;
        let status = status.map(|(status, _)| status);
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
                // Look-ups that come to it find a connection open.
                replica.node.prewarm();
            }
            // Paused, promoted (no longer in recovery), unreachable, failing or too slow.
            _ => replica.healthy.store(false, Ordering::Release),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// A probe stops as soon as the replica has replayed what is wanted (the look-ups waiting are
    /// woken then, not at the end of the wait); while the replica is behind it reads on for the
    /// whole catch-up wait, and stops at its end.
    #[test]
    fn a_probe_reads_until_caught_up_or_the_catch_up_wait_is_over() {
        let start = tokio::time::Instant::now();
        let catch_up = Duration::from_millis(5);
        let window = ProbeWindow::from(start, catch_up);
        let at = |ms| start + Duration::from_millis(ms);
        for now in [at(0), at(1), at(4)] {
            assert!(window.done(100, 100, now), "caught up: stops");
            assert!(window.done(101, 100, now), "past it: stops");
            assert!(
                !window.done(99, 100, now),
                "behind within the wait: reads on"
            );
        }
        for now in [at(5), at(6), at(1000)] {
            assert!(window.done(99, 100, now), "behind, the wait over: stops");
            assert!(window.done(100, 100, now));
        }
        assert!(!window.done(99, 100, start + catch_up - Duration::from_nanos(1)));
    }

    /// Stale look-ups start a probe at most once per spacing: the first caller once it has
    /// passed (exactly the spacing counts as passed), nobody before it, one caller of several
    /// at the same moment.
    #[test]
    fn stale_probes_are_spaced() {
        let spacing = 10 * MS;
        let last = AtomicU64::new(0);
        assert!(
            !claim_spaced(&last, 5 * MS, spacing),
            "within the first spacing"
        );
        assert!(claim_spaced(&last, 50 * MS, spacing));
        assert_eq!(last.load(Ordering::Relaxed), 50 * MS, "the start recorded");
        assert!(
            !claim_spaced(&last, 50 * MS, spacing),
            "the same moment: one caller"
        );
        assert!(!claim_spaced(&last, 55 * MS, spacing));
        assert!(!claim_spaced(&last, 60 * MS - 1, spacing));
        assert!(claim_spaced(&last, 60 * MS, spacing), "exactly the spacing");
        assert!(!claim_spaced(&last, 61 * MS, spacing));
        assert!(claim_spaced(&last, 200 * MS, spacing));
        assert_eq!(last.load(Ordering::Relaxed), 200 * MS);
        // Callers racing at one moment: one of them starts it.
        let last = Arc::new(AtomicU64::new(0));
        let claimed: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let last = last.clone();
                    scope.spawn(move || usize::from(claim_spaced(&last, 100 * MS, spacing)))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(claimed, 1);
    }

    /// A replica that stops replaying while it stays well (a long apply delay, a replay stuck
    /// behind a lock): its coverage ages with every check, and it stops serving once the
    /// primary's sample it holds is older than `max_lag`, within one check. The samples are kept
    /// far longer than `max_lag` here, so that only the bound, not their eviction, can take the
    /// replica out.
    #[test]
    fn a_replica_whose_coverage_ages_stops_serving_within_max_lag_and_one_check() {
        let check = 50 * MS;
        let max_lag = 500 * MS;
        for keep in [100 * max_lag, max_lag + 2 * check] {
            let samples = Samples::default();
            // The primary writes on: its position grows 1000 a check; the replica replays up to
            // the sample of t = 1 s, then nothing more.
            let stuck_at = 1_000 * MS;
            let mut replayed = 0;
            let mut last_serving = None;
            let mut first_refused = None;
            for k in 1..=200u64 {
                let now = k * check;
                samples.push(now, k * 1_000, keep);
                if now <= stuck_at {
                    replayed = k * 1_000;
                }
                let covered = samples.covered_by(replayed);
                // Between checks, at the check and just before the next one.
                for at in [now, now + check - 1] {
                    if fresh(true, covered, at, max_lag, replayed, 0) {
                        last_serving = Some(at);
                        assert!(
                            first_refused.is_none(),
                            "served again at {at} (keep {keep})"
                        );
                    } else if now > stuck_at {
                        first_refused.get_or_insert(at);
                    }
                }
            }
            let last = last_serving.expect("it served while it replayed");
            assert!(
                last <= stuck_at + max_lag,
                "served {} ms after its coverage stopped (max_lag {} ms, keep {keep})",
                (last - stuck_at) / MS,
                max_lag / MS
            );
            let refused = first_refused.expect("it stopped serving");
            assert!(
                refused <= stuck_at + max_lag + check,
                "still served {} ms after its coverage stopped",
                (refused - stuck_at) / MS
            );
        }
    }

    /// The check task keeps the primary's samples of the last `keep` (and always the newest):
    /// enough to date any replica within the bound, and no more (a sample per check, forever,
    /// would grow without end).
    #[test]
    fn samples_are_kept_for_their_window_and_no_longer() {
        let samples = Samples::default();
        let kept = || samples.0.lock().unwrap().len();
        samples.push(0, 5, 0);
        samples.push(1, 6, 0);
        assert_eq!(kept(), 1, "the newest is kept, however short the window");
        let samples = Samples::default();
        let kept = || samples.0.lock().unwrap().len();
        for k in 0..100u64 {
            samples.push(k * 10, k * 100, 50);
        }
        // Newest at 990: the samples of 940 to 990 are within 50 of it.
        assert_eq!(kept(), 6);
        assert_eq!(samples.covered_by(9_450), 940);
        assert_eq!(samples.covered_by(9_899), 980);
        assert_eq!(samples.covered_by(9_399), 0, "older samples are gone");
        assert_eq!(samples.first_since(941), Some(9_500));
        assert_eq!(samples.first_since(0), Some(9_400));
        assert_eq!(samples.first_since(991), None);
    }

    #[test]
    fn each_condition_of_freshness_is_needed() {
        let (now, max_lag) = (10_000 * MS, 1_000 * MS);
        let covered = now - max_lag;
        assert!(fresh(true, covered, now, max_lag, 7, 7));
        assert!(!fresh(false, covered, now, max_lag, 7, 7), "not well");
        assert!(!fresh(true, 0, now, max_lag, 7, 7), "nothing known");
        assert!(
            !fresh(true, covered - 1, now, max_lag, 7, 7),
            "a nanosecond staler than the bound"
        );
        assert!(
            !fresh(true, covered, now, max_lag, 6, 7),
            "behind the handle's writes"
        );
    }

    #[test]
    fn the_primary_latency_high_rises_at_once_and_the_typical_one_averages() {
        let latency = Latency::default();
        latency.record(Duration::from_millis(80));
        assert_eq!(
            (latency.high(), latency.typical()),
            (Duration::from_millis(80), Duration::from_millis(80))
        );
        latency.record(Duration::from_millis(8));
        assert_eq!(latency.high(), Duration::from_millis(70));
        assert_eq!(latency.typical(), Duration::from_millis(71));
        latency.record(Duration::from_millis(200));
        assert_eq!(latency.high(), Duration::from_millis(200));
        assert_eq!(latency.typical(), Duration::from_micros(87_125));
    }
}
