//! How each call of [`Db`] is dispatched: within its deadline, to a fresh replica or the primary
//! (and why), and, for a write, with the primary's position recorded after it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::node::{self, Node};
use super::routing::{self, Replica, Written};
use super::{Db, Shared, breaks_connection};
use crate::error::Error;

impl Db {
    /// Runs a call within the handle's deadline.
    pub(super) async fn within<T>(
        &self,
        call: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let deadline = self.shared.call_timeout;
        match tokio::time::timeout(deadline, call).await {
            // The server's statement timeout (set to the deadline on held connections) may fire
            // first: the same deadline.
            Ok(Err(Error::Database(sqlx::Error::Database(e))))
                if e.code().as_deref() == Some("57014")
                    && e.message().contains("statement timeout") =>
            {
                Err(Error::Timeout(deadline))
            }
            Ok(result) => result,
            Err(_) => Err(Error::Timeout(deadline)),
        }
    }

    /// After a write on `lease`'s connection: reads the primary's position there (or, if that
    /// connection broke, on another) and records it; when it cannot, `unsettled` stays armed and
    /// records the write as unknown when dropped.
    pub(super) async fn settle(&self, mut lease: node::Lease<'_>, unsettled: &mut Unsettled<'_>) {
        let shared = &self.shared;
        let read = if lease.usable() {
            let read = routing::write_position(lease.conn()).await;
            lease.finish(read).ok()
        } else {
            None
        };
        let position = match read {
            Some(position) => Some(position),
            None => {
                drop(lease);
                match shared.primary.lease().await {
                    Ok(mut other) => {
                        let read = routing::write_position(other.conn()).await;
                        other.finish(read).ok()
                    }
                    Err(_) => None,
                }
            }
        };
        if let Some(position) = position {
            self.written.record(position);
            unsettled.armed = false;
        }
    }

    /// Runs a look-up on a fresh replica, or on the primary. A replica's failure is retried on the
    /// primary (and the replica is out until its next good check); a replica that is only slow
    /// keeps serving the others. How long a replica may take ([`Shared::replica_patience`]) grows
    /// with the primary's own round trip: on a saturated host a replica as slow as the primary is
    /// no worse than it.
    pub(super) async fn route<'s, T, F>(&'s self, f: impl Fn(&'s Node) -> F) -> Result<T, Error>
    where
        F: Future<Output = Result<T, Error>>,
    {
        let shared = &self.shared;
        match self.choose().await {
            Ok(replica) => {
                match tokio::time::timeout(shared.replica_patience(), f(&replica.node)).await {
                    Ok(Ok(found)) => {
                        replica.served.fetch_add(1, Ordering::Relaxed);
                        self.written.on_replicas.fetch_add(1, Ordering::Relaxed);
                        return Ok(found);
                    }
                    Ok(Err(e)) => {
                        if breaks_connection(&e) {
                            replica.healthy.store(false, Ordering::Release);
                        }
                        shared.fallback_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        shared.fallback_timeouts.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err(reason) => {
                shared.reasons[reason as usize].fetch_add(1, Ordering::Relaxed);
            }
        }
        shared.served_by_primary.fetch_add(1, Ordering::Relaxed);
        self.written.on_primary.fetch_add(1, Ordering::Relaxed);
        f(&shared.primary).await
    }

    /// A fresh replica that has replayed this handle's writes, round-robin; else one that is fresh
    /// but not yet known to hold them; else the primary, and why.
    fn pick(&self) -> Pick<'_> {
        let shared = &self.shared;
        let count = shared.replicas.len();
        if count == 0 || self.primary_only {
            return Pick::Primary(Reason::PrimaryOnly);
        }
        self.start_checker();
        let Some(required) = self.written.required(&shared.samples) else {
            return Pick::Primary(Reason::Unknown);
        };
        let first = shared.next.fetch_add(1, Ordering::Relaxed);
        let mut behind = None;
        let mut healthy = false;
        for i in 0..count {
            let index = (first + i) % count;
            let replica = &shared.replicas[index];
            if shared.is_fresh(replica, required) {
                return Pick::Replica(replica);
            }
            if shared.is_fresh(replica, 0) {
                behind.get_or_insert(index);
            } else if replica.healthy.load(Ordering::Acquire) {
                healthy = true;
                routing::probe_stale(shared, index);
            }
        }
        match behind {
            Some(index) => Pick::Behind(index, required),
            None if healthy => Pick::Primary(Reason::Stale),
            None => Pick::Primary(Reason::Unhealthy),
        }
    }

    /// The replica to ask, or why none: for one that is fresh but not yet known to hold this
    /// handle's writes, its replay position is read now (again while the wait lasts, by one probe
    /// task per replica), and the look-up waits for it up to [`catch_up`]: about one round
    /// trip of the primary's, what asking the primary instead would cost.
    async fn choose(&self) -> Result<&Replica, Reason> {
        match self.pick() {
            Pick::Replica(replica) => Ok(replica),
            Pick::Primary(reason) => Err(reason),
            Pick::Behind(index, required) => {
                let shared = &self.shared;
                let replica = &shared.replicas[index];
                let probed = replica.probed.notified();
                tokio::pin!(probed);
                probed.as_mut().enable();
                routing::probe(shared, index, required);
                let wait = catch_up(shared.primary_latency.typical(), shared.replica_patience());
                let _ = tokio::time::timeout(wait, probed).await;
                if shared.is_fresh(replica, required) {
                    Ok(replica)
                } else {
                    Err(Reason::Behind)
                }
            }
        }
    }

    /// Starts the check task on the current Tokio runtime, once (outside a runtime: not yet).
    pub(super) fn start_checker(&self) {
        if self.shared.replicas.is_empty() || self.shared.checker.get().is_some() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.shared.checker.get_or_init(|| {
                runtime.spawn(routing::check_replicas(Arc::downgrade(&self.shared)));
            });
        }
    }
}

/// How long a look-up waits, at least, for a replica to be seen holding the handle's last write
/// (read right then) before the primary answers it: a streaming standby on a healthy network
/// replays within a millisecond or so. While the primary's round trip is longer, the wait is that.
const CATCH_UP: Duration = Duration::from_millis(2);

/// A replica may take this many of the primary's round trips (their recent high; when that is more
/// than the configured replica timeout) before the primary answers instead.
const PATIENCE_ROUND_TRIPS: u32 = 4;

/// How long a look-up waits for a replica before the primary answers it: `replica_timeout`, or
/// [`PATIENCE_ROUND_TRIPS`] of the primary's recent high round trip when that is longer.
fn patience(replica_timeout: Duration, high: Duration) -> Duration {
    replica_timeout.max(high * PATIENCE_ROUND_TRIPS)
}

/// How long a look-up waits for a replica to replay the handle's last write: about one of the
/// primary's `typical` round trips, at least [`CATCH_UP`], at most the `patience`.
pub(crate) fn catch_up(typical: Duration, patience: Duration) -> Duration {
    typical.clamp(CATCH_UP, patience.max(CATCH_UP))
}

/// Where a look-up goes.
enum Pick<'a> {
    Replica(&'a Replica),
    /// Fresh, but not yet known to have replayed the handle's writes (the position required).
    Behind(usize, u64),
    Primary(Reason),
}

/// Why a look-up went to the primary without trying a replica ([`PrimaryReasons`]).
#[derive(Clone, Copy)]
pub(super) enum Reason {
    PrimaryOnly,
    Unhealthy,
    Stale,
    Behind,
    Unknown,
}

impl Reason {
    pub(super) const COUNT: usize = 5;
}

/// A write in progress: unless settled with its position, it is recorded as unknown when dropped.
pub(super) struct Unsettled<'a> {
    pub(super) written: &'a Written,
    pub(super) shared: &'a Shared,
    /// The write has a connection: it may commit from now on.
    pub(super) armed: bool,
    /// Its statements have returned: whatever it committed is committed.
    pub(super) returned: bool,
}

/// How long after its statement's `statement_timeout` a commit may still land (the commit's own
/// flush, on a busy disk).
const COMMIT_MARGIN: Duration = Duration::from_secs(1);

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let now = self.shared.now();
        if self.returned {
            // Settling failed or was cut short: the write is committed by now.
            self.written.record_unknown(now);
            return;
        }
        // Dropped mid-statement (the caller went away): the server runs the statement in flight
        // to its end and may commit it, until `statement_timeout` at the latest; it aborts anything
        // after that, finding the connection gone. Only a primary sample taken after then covers it.
        let timeout = self
            .shared
            .primary
            .statement_timeout
            .unwrap_or(self.shared.call_timeout);
        let window = u64::try_from((timeout + COMMIT_MARGIN).as_nanos()).unwrap_or(u64::MAX / 2);
        self.written.record_unknown(now.saturating_add(window));
    }
}

impl Shared {
    pub(super) fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// How long a look-up waits for a replica before the primary answers it: the configured
    /// replica timeout, or a few of the primary's recent round trips when that is longer.
    pub(crate) fn replica_patience(&self) -> Duration {
        patience(self.replica_timeout, self.primary_latency.high())
    }

    pub(super) fn is_fresh(&self, replica: &Replica, required: u64) -> bool {
        routing::fresh(
            replica.healthy.load(Ordering::Acquire),
            replica.covered_until.load(Ordering::Acquire),
            self.now(),
            u64::try_from(self.max_lag.as_nanos()).unwrap_or(u64::MAX),
            replica.replayed.load(Ordering::Acquire),
            required,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A replica may take the configured timeout, or 4 of the primary's recent high round trips
    /// when that is longer (a saturated host, where a replica as slow as the primary is no worse).
    #[test]
    fn the_patience_grows_with_the_primarys_round_trips() {
        assert_eq!(patience(250 * MS, Duration::ZERO), 250 * MS);
        assert_eq!(patience(250 * MS, 62 * MS), 250 * MS);
        assert_eq!(patience(250 * MS, 100 * MS), 400 * MS);
        assert_eq!(patience(10 * MS, 3 * MS), 12 * MS);
    }

    /// The catch-up wait is about one of the primary's typical round trips, at least
    /// [`CATCH_UP`] and at most the patience (but never below [`CATCH_UP`]).
    #[test]
    fn the_catch_up_wait_is_one_round_trip_within_bounds() {
        assert_eq!(catch_up(Duration::ZERO, 250 * MS), CATCH_UP);
        assert_eq!(catch_up(5 * MS, 250 * MS), 5 * MS);
        assert_eq!(catch_up(Duration::from_secs(2), 250 * MS), 250 * MS);
        assert_eq!(catch_up(5 * MS, Duration::ZERO), CATCH_UP);
    }
}
