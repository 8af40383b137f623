//! [`Db`]: look-ups served by streaming replicas when they are fresh enough, writes on the primary.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool};

use crate::clerk::{Applied, ClerkEvent};
use crate::error::Error;
use crate::input::{Email, Identity, Profile};
use crate::lookup::IdentityLookup;
use crate::role::Role;
use crate::users::{self, SignIn, User, UserId};

/// How stale a replica may be, by default, and still serve look-ups: 1 second.
pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(1);
/// How often each replica's replay position is checked, by default.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// How long a look-up waits for a replica, by default, before the primary answers it: 250 ms (a
/// healthy replica answers in about a millisecond; a stopped one can keep a pool retrying its connect).
pub const DEFAULT_REPLICA_TIMEOUT: Duration = Duration::from_millis(250);

/// A position in the primary's write-ahead log: what a write made visible ends before it. Returned by
/// [`Db::last_write`]; hand it to [`Db::session_after`] (in another process, say) to read that write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct WalPosition(pub u64);

impl std::fmt::Display for WalPosition {
    /// PostgreSQL's spelling, `16/B374D848`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Where look-ups went, so far: for a service's metrics and the benchmark.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoutingStats {
    /// Look-ups served by the primary (no replica fresh enough, or none configured).
    pub primary: u64,
    /// Look-ups served by each replica, in the order given.
    pub replicas: Vec<u64>,
    /// Look-ups that failed on a replica and were then served by the primary (counted in `primary`
    /// too).
    pub fallbacks: u64,
}

/// A database handle that routes: writes, and every multi-statement operation, on the primary;
/// look-ups ([`find_by_identity`](Db::find_by_identity), [`find_by_identities`](Db::find_by_identities),
/// [`find_by_id`](Db::find_by_id), [`find_by_email`](Db::find_by_email),
/// [`list_by_role`](Db::list_by_role)) on a streaming replica when it is fresh enough, else on the
/// primary. It is built on the crate's plain functions, which stay as they are.
///
/// # The staleness contract
///
/// A replica serves a look-up only while it has replayed **every transaction the primary committed
/// more than `max_lag` ago** (default [`DEFAULT_MAX_LAG`]), measured, not assumed: every
/// `check_interval` (default [`DEFAULT_CHECK_INTERVAL`]) a task of the handle reads the primary's WAL
/// position (`pg_current_wal_insert_lsn()`), then each replica's `pg_last_wal_replay_lsn()`; a replica
/// that has replayed past a position sampled at time *t* holds everything committed before *t*. The
/// bound is enforced at each look-up against that time, so a replica whose checks stop answering
/// stops serving within `max_lag`. A replica that is paused (`pg_wal_replay_pause()`), not in recovery
/// (promoted: out of scope, refused), unreachable, or whose check fails, serves nothing until a
/// later check finds it well.
///
/// # Read-your-writes
///
/// Every write through the handle records the primary's WAL position after its commit. A look-up
/// through the same handle (or a clone: they share it) is served by a replica only once that replica
/// has replayed past the newest such position, else by the primary: a role change or a deactivation
/// made through the handle is seen by its next look-up, always. [`Db::session`] gives a handle of its
/// own position (say, per request or per user), so that one client's writes do not send every other
/// client's look-ups to the primary; [`Db::last_write`] and [`Db::session_after`] carry a position
/// across processes. Writes made elsewhere (another service, `psql`) are seen within `max_lag`.
///
/// # Failure
///
/// A look-up that fails on a replica (refused, reset, timed out after `replica_timeout`, an error of
/// the server) is served by the primary, and the replica is taken out until its next good check: no
/// look-up fails because a replica did. Look-ups come back to it when it recovers.
///
/// Build replica pools with a short `acquire_timeout` (say 1 s): a replica that is down should cost
/// one check, not a look-up's whole wait. Give the handle a Tokio runtime: its check task is spawned
/// on the first look-up and ends when the last clone is dropped.
///
/// # Examples
///
/// ```no_run
/// # async fn f() -> Result<(), livermore_db::Error> {
/// use std::time::Duration;
/// use livermore_db::{Db, Identity, Role, pool_options};
///
/// let primary = pool_options().max_connections(16).connect("postgres://livermore@primary/livermore").await?;
/// let replica = pool_options()
///     .max_connections(16)
///     .acquire_timeout(Duration::from_secs(1))
///     .connect("postgres://livermore@replica-1/livermore")
///     .await?;
/// let db = Db::builder(primary).replicas([replica]).max_lag(Duration::from_millis(500)).build().await?;
///
/// let identity = Identity::parse("clerk", "user_2NNEqL2nrIRdJ194ndJqAHwEfxC")?;
/// if let Some(user) = db.find_by_identity(&identity).await? {
///     // Written on the primary; the next look-up through `db` sees it, wherever it is served.
///     db.set_role(user.id, Role::SubscriberPro).await?;
///     assert_eq!(db.find_by_identity(&identity).await?.map(|u| u.role), Some(Role::SubscriberPro));
/// }
/// println!("{:?}", db.stats());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Db {
    shared: Arc<Shared>,
    /// The newest WAL position this handle (and its clones) wrote, as a u64.
    written: Arc<AtomicU64>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("replicas", &self.shared.replicas.len())
            .field("max_lag", &self.shared.max_lag)
            .field("written", &self.last_write())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Db`]: [`Db::builder`].
#[derive(Debug)]
#[must_use]
pub struct DbBuilder {
    primary: PgPool,
    replicas: Vec<PgPool>,
    max_lag: Duration,
    check_interval: Duration,
    replica_timeout: Duration,
    coalesce: Option<usize>,
}

struct Target {
    pool: PgPool,
    lookup: Option<IdentityLookup>,
}

struct Replica {
    target: Target,
    /// Whether the last check found it well (in recovery, not paused, answering).
    healthy: AtomicBool,
    /// Its replay position at the last good check.
    replayed: AtomicU64,
    /// It holds everything the primary committed before this moment (nanoseconds since
    /// `Shared::epoch`; 0: nothing known).
    covered_until: AtomicU64,
    served: AtomicU64,
}

struct Shared {
    primary: Target,
    replicas: Vec<Replica>,
    max_lag: Duration,
    check_interval: Duration,
    replica_timeout: Duration,
    epoch: Instant,
    checker: OnceLock<()>,
    next: AtomicUsize,
    served_by_primary: AtomicU64,
    fallbacks: AtomicU64,
}

impl DbBuilder {
    /// The streaming replicas of the primary to serve look-ups from (pools built by you, with a short
    /// `acquire_timeout`).
    pub fn replicas(mut self, replicas: impl IntoIterator<Item = PgPool>) -> Self {
        self.replicas.extend(replicas);
        self
    }

    /// How stale a replica may be and still serve (default [`DEFAULT_MAX_LAG`]).
    pub fn max_lag(mut self, max_lag: Duration) -> Self {
        self.max_lag = max_lag;
        self
    }

    /// How often replicas are checked (default [`DEFAULT_CHECK_INTERVAL`]; at least 10 ms).
    pub fn check_interval(mut self, interval: Duration) -> Self {
        self.check_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// How long a look-up waits for a replica before it goes to the primary (default
    /// [`DEFAULT_REPLICA_TIMEOUT`]).
    pub fn replica_timeout(mut self, timeout: Duration) -> Self {
        self.replica_timeout = timeout;
        self
    }

    /// Serve [`Db::find_by_identity`] through an [`IdentityLookup`] of `connections` connections per
    /// server (the primary and each replica), which coalesces concurrent look-ups, instead of the
    /// pools.
    pub fn coalesce_identity_lookups(mut self, connections: usize) -> Self {
        self.coalesce = Some(connections.max(1));
        self
    }

    /// Builds the handle; opens the look-up connections if asked to coalesce.
    pub async fn build(self) -> Result<Db, Error> {
        let target = async |pool: PgPool| -> Result<Target, Error> {
            let lookup = match self.coalesce {
                Some(n) => {
                    Some(IdentityLookup::connect(pool.connect_options().as_ref().clone(), n).await?)
                }
                None => None,
            };
            Ok(Target { pool, lookup })
        };
        let primary = target(self.primary.clone()).await?;
        let mut replicas = Vec::with_capacity(self.replicas.len());
        for pool in self.replicas.iter().cloned() {
            replicas.push(Replica {
                target: target(pool).await?,
                healthy: AtomicBool::new(false),
                replayed: AtomicU64::new(0),
                covered_until: AtomicU64::new(0),
                served: AtomicU64::new(0),
            });
        }
        Ok(self.assemble(primary, replicas))
    }

    /// The handle of these options over these servers.
    fn assemble(&self, primary: Target, replicas: Vec<Replica>) -> Db {
        Db {
            shared: Arc::new(Shared {
                primary,
                replicas,
                max_lag: self.max_lag,
                check_interval: self.check_interval,
                replica_timeout: self.replica_timeout,
                epoch: Instant::now(),
                checker: OnceLock::new(),
                next: AtomicUsize::new(0),
                served_by_primary: AtomicU64::new(0),
                fallbacks: AtomicU64::new(0),
            }),
            written: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Db {
    /// A handle on the primary alone (add replicas with [`Db::builder`]).
    pub fn new(primary: PgPool) -> Db {
        let builder = Db::builder(primary);
        let primary = Target {
            pool: builder.primary.clone(),
            lookup: None,
        };
        builder.assemble(primary, Vec::new())
    }

    /// A builder: the primary, then replicas and options.
    pub fn builder(primary: PgPool) -> DbBuilder {
        DbBuilder {
            primary,
            replicas: Vec::new(),
            max_lag: DEFAULT_MAX_LAG,
            check_interval: DEFAULT_CHECK_INTERVAL,
            replica_timeout: DEFAULT_REPLICA_TIMEOUT,
            coalesce: None,
        }
    }

    /// The primary's pool, for what the handle does not wrap (transactions of your own, backfills).
    /// Writes made through it are not recorded for read-your-writes.
    pub fn primary(&self) -> &PgPool {
        &self.shared.primary.pool
    }

    /// A handle sharing the pools and checks but with a read-your-writes position of its own,
    /// starting with none.
    pub fn session(&self) -> Db {
        self.session_after(WalPosition(0))
    }

    /// A session whose look-ups see at least everything up to `position` (from [`Db::last_write`],
    /// perhaps in another process).
    pub fn session_after(&self, position: WalPosition) -> Db {
        Db {
            shared: self.shared.clone(),
            written: Arc::new(AtomicU64::new(position.0)),
        }
    }

    /// The newest position this handle (and its clones) wrote; `None` before any write.
    pub fn last_write(&self) -> Option<WalPosition> {
        match self.written.load(Ordering::Acquire) {
            0 => None,
            lsn => Some(WalPosition(lsn)),
        }
    }

    /// Where look-ups went so far.
    pub fn stats(&self) -> RoutingStats {
        RoutingStats {
            primary: self.shared.served_by_primary.load(Ordering::Relaxed),
            replicas: self
                .shared
                .replicas
                .iter()
                .map(|r| r.served.load(Ordering::Relaxed))
                .collect(),
            fallbacks: self.shared.fallbacks.load(Ordering::Relaxed),
        }
    }

    /// Which replicas would serve a look-up of this handle now (indices in the order given).
    pub fn serving_replicas(&self) -> Vec<usize> {
        let required = self.written.load(Ordering::Acquire);
        (0..self.shared.replicas.len())
            .filter(|&i| self.shared.is_fresh(&self.shared.replicas[i], required))
            .collect()
    }

    // ---- look-ups: a fresh replica, else the primary ----

    /// [`find_by_identity`](crate::find_by_identity), routed (through the coalescing look-up
    /// handles when the builder asked for them).
    pub async fn find_by_identity(&self, identity: &Identity) -> Result<Option<User>, Error> {
        self.route(|target| async move {
            match &target.lookup {
                Some(lookup) => lookup.lookup(identity).await,
                None => users::find_by_identity(&target.pool, identity).await,
            }
        })
        .await
    }

    /// [`find_by_identities`](crate::find_by_identities), routed.
    pub async fn find_by_identities(
        &self,
        identities: &[Identity],
    ) -> Result<Vec<Option<User>>, Error> {
        self.route(|target| users::find_by_identities(&target.pool, identities))
            .await
    }

    /// [`find_by_id`](crate::find_by_id), routed.
    pub async fn find_by_id(&self, id: UserId) -> Result<Option<User>, Error> {
        self.route(|target| users::find_by_id(&target.pool, id))
            .await
    }

    /// [`find_by_email`](crate::find_by_email), routed.
    pub async fn find_by_email(&self, email: &Email) -> Result<Option<User>, Error> {
        self.route(|target| users::find_by_email(&target.pool, email))
            .await
    }

    /// [`list_by_role`](crate::list_by_role), routed.
    pub async fn list_by_role(
        &self,
        role: Role,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<User>, Error> {
        self.route(|target| users::list_by_role(&target.pool, role, after, limit))
            .await
    }

    // ---- writes: the primary, and the position recorded ----

    /// [`sign_in`](crate::sign_in) on the primary.
    pub async fn sign_in(&self, profile: &Profile) -> Result<SignIn, Error> {
        let mut conn = self.shared.primary.pool.acquire().await?;
        let result = users::sign_in(&mut *conn, profile).await;
        self.record_write(&mut conn).await;
        result
    }

    /// [`link_identity`](crate::link_identity) on the primary.
    pub async fn link_identity(&self, id: UserId, identity: &Identity) -> Result<User, Error> {
        let mut conn = self.shared.primary.pool.acquire().await?;
        let result = users::link_identity(&mut *conn, id, identity).await;
        self.record_write(&mut conn).await;
        result
    }

    /// [`record_login`](crate::record_login) on the primary.
    pub async fn record_login(&self, id: UserId) -> Result<User, Error> {
        let mut conn = self.shared.primary.pool.acquire().await?;
        let result = users::record_login(&mut *conn, id).await;
        self.record_write(&mut conn).await;
        result
    }

    /// [`set_role`](crate::set_role) on the primary.
    pub async fn set_role(&self, id: UserId, role: Role) -> Result<User, Error> {
        let mut conn = self.shared.primary.pool.acquire().await?;
        let result = users::set_role(&mut *conn, id, role).await;
        self.record_write(&mut conn).await;
        result
    }

    /// [`deactivate`](crate::deactivate) on the primary.
    pub async fn deactivate(&self, id: UserId) -> Result<User, Error> {
        let mut conn = self.shared.primary.pool.acquire().await?;
        let result = users::deactivate(&mut *conn, id).await;
        self.record_write(&mut conn).await;
        result
    }

    /// [`clerk::apply_event`](crate::clerk::apply_event) on the primary.
    pub async fn apply_clerk_event(&self, event: &ClerkEvent) -> Result<Applied, Error> {
        let mut conn = self.shared.primary.pool.acquire().await?;
        let result = crate::clerk::apply_event(&mut *conn, event).await;
        self.record_write(&mut conn).await;
        result
    }

    /// Records the primary's WAL position after a write made on `conn`. Should reading it fail (the
    /// write stands), the handle reads from the primary from then on: it no longer knows what a
    /// replica must have replayed. Even a failed call may have committed part of its work (a
    /// sign-in's retries), so it is recorded either way.
    async fn record_write(&self, conn: &mut PgConnection) {
        let position = wal_insert_position(conn).await.unwrap_or(u64::MAX);
        self.written.fetch_max(position, Ordering::AcqRel);
    }

    /// Runs a look-up on a fresh replica, or on the primary; a replica's failure is retried on the
    /// primary.
    async fn route<'s, T, F>(&'s self, f: impl Fn(&'s Target) -> F) -> Result<T, Error>
    where
        F: Future<Output = Result<T, Error>>,
    {
        let shared = &self.shared;
        if let Some(replica) = self.pick() {
            match tokio::time::timeout(shared.replica_timeout, f(&replica.target)).await {
                Ok(Ok(found)) => {
                    replica.served.fetch_add(1, Ordering::Relaxed);
                    return Ok(found);
                }
                // Down, refused, reset, timed out, or an error of the server (a recovery conflict):
                // out until its next good check; the primary answers.
                _ => {
                    replica.healthy.store(false, Ordering::Release);
                    shared.fallbacks.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        shared.served_by_primary.fetch_add(1, Ordering::Relaxed);
        f(&shared.primary).await
    }

    /// A fresh replica that has replayed this handle's writes, round-robin; `None`: the primary.
    fn pick(&self) -> Option<&Replica> {
        let shared = &self.shared;
        let count = shared.replicas.len();
        if count == 0 {
            return None;
        }
        self.start_checker();
        let required = self.written.load(Ordering::Acquire);
        let first = shared.next.fetch_add(1, Ordering::Relaxed);
        (0..count)
            .map(|i| &shared.replicas[(first + i) % count])
            .find(|replica| shared.is_fresh(replica, required))
    }

    fn start_checker(&self) {
        self.shared.checker.get_or_init(|| {
            tokio::spawn(check_replicas(Arc::downgrade(&self.shared)));
        });
    }
}

impl Shared {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn is_fresh(&self, replica: &Replica, required: u64) -> bool {
        if !replica.healthy.load(Ordering::Acquire) {
            return false;
        }
        let covered = replica.covered_until.load(Ordering::Acquire);
        let max_lag = u64::try_from(self.max_lag.as_nanos()).unwrap_or(u64::MAX);
        covered != 0
            && self.now().saturating_sub(covered) <= max_lag
            && replica.replayed.load(Ordering::Acquire) >= required
    }
}

/// The primary's WAL insert position: at or past the end of every commit that has returned.
async fn wal_insert_position(conn: &mut PgConnection) -> Result<u64, Error> {
    let lsn = sqlx::query_scalar!(
        r#"SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8 AS "lsn!""#
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
}

async fn replica_status(pool: &PgPool) -> Result<ReplicaStatus, Error> {
    let row = sqlx::query!(
        r#"SELECT pg_is_in_recovery() AS "in_recovery!",
                  (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8 AS replayed,
                  CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END
                    AS "paused!""#
    )
    .fetch_one(pool)
    .await?;
    Ok(ReplicaStatus {
        in_recovery: row.in_recovery,
        replayed: row.replayed,
        paused: row.paused,
    })
}

type Samples = Arc<Mutex<std::collections::VecDeque<(u64, u64)>>>;

/// The check task: every interval, the primary's position, then each replica's (concurrently), until
/// the last handle is dropped.
async fn check_replicas(shared: Weak<Shared>) {
    // Primary positions sampled lately, oldest first: (when, position).
    let samples = Samples::default();
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let interval = shared.check_interval;
        let started = Instant::now();
        check_once(&shared, &samples).await;
        drop(shared);
        tokio::time::sleep(interval.saturating_sub(started.elapsed())).await;
    }
}

async fn check_once(shared: &Arc<Shared>, samples: &Samples) {
    let timeout = shared.check_interval.max(Duration::from_millis(500));
    let sampled_at = shared.now();
    let primary = async {
        let mut conn = shared.primary.pool.acquire().await?;
        wal_insert_position(&mut conn).await
    };
    match tokio::time::timeout(timeout, primary).await {
        Ok(Ok(lsn)) => {
            let mut samples = samples.lock().unwrap_or_else(|e| e.into_inner());
            samples.push_back((sampled_at, lsn));
            // Keep what a replica within the bound could still need.
            let keep = u64::try_from((shared.max_lag + 2 * shared.check_interval).as_nanos())
                .unwrap_or(u64::MAX);
            while samples.len() > 1
                && samples
                    .front()
                    .is_some_and(|(t, _)| sampled_at.saturating_sub(*t) > keep)
            {
                samples.pop_front();
            }
        }
        // Without the primary's position nothing new is known; the replicas' coverage ages, and
        // they stop serving once it passes the bound.
        _ => return,
    }
    let mut checks = tokio::task::JoinSet::new();
    for index in 0..shared.replicas.len() {
        let (shared, samples) = (shared.clone(), samples.clone());
        checks.spawn(async move {
            let replica = &shared.replicas[index];
            let status = tokio::time::timeout(timeout, replica_status(&replica.target.pool)).await;
            match status {
                Ok(Ok(ReplicaStatus {
                    in_recovery: true,
                    replayed: Some(replayed),
                    paused: false,
                })) => {
                    let replayed = u64::try_from(replayed).unwrap_or(0);
                    // The newest sample it has replayed past: it holds everything committed
                    // before then. Stored, not maximised: a restarted replica may be behind
                    // what it had replayed before.
                    let covered = samples
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .iter()
                        .rev()
                        .find(|(_, lsn)| *lsn <= replayed)
                        .map_or(0, |(t, _)| *t);
                    replica.covered_until.store(covered, Ordering::Release);
                    replica.replayed.store(replayed, Ordering::Release);
                    replica.healthy.store(true, Ordering::Release);
                }
                // Paused, promoted (no longer in recovery), unreachable, failing or too slow.
                _ => replica.healthy.store(false, Ordering::Release),
            }
        });
    }
    while checks.join_next().await.is_some() {}
}
