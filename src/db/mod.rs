//! [`Db`]: the handle a service uses. It holds its own connections (no pool round trip per call),
//! coalesces concurrent identity look-ups, and routes look-ups to fresh streaming replicas.

mod dispatch;
mod node;
mod routing;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

use crate::clerk::{Applied, ClerkEvent};
use crate::error::Error;
use crate::input::{Email, Identity, Profile};
use crate::role::Role;
use crate::users::{self, SignIn, User, UserId};
use dispatch::{Reason, Unsettled};
use node::Node;
use routing::{Latency, Replica, Samples, Written};

pub(crate) use dispatch::catch_up;
pub(crate) use node::breaks_connection;

/// Runs one call on a connection lent by `node`: `on_node!(node, |c| users::find_by_id(c, id))`.
/// (A macro, not a function taking a closure: a closure over `&mut PgConnection` makes the future
/// higher-ranked, and the compiler can then no longer prove the caller's future `Send`.)
macro_rules! on_node {
    ($node:expr, |$conn:ident| $call:expr) => {{
        let mut lease = $node.lease().await?;
        let result = {
            let $conn = lease.conn();
            $call.await
        };
        lease.finish(result)
    }};
}

/// Runs a write on a held primary connection; with replicas, records the primary's position after
/// it (even a failed call may have committed part of its work, a sign-in's retries say). Until the
/// position is read, the write counts as "unknown since the moment it ends": the check task's next
/// sample of the primary stands for it, so that a write whose caller went away mid-call (its future
/// dropped after the commit) is covered too.
macro_rules! write_on_primary {
    ($db:expr, |$conn:ident| $call:expr) => {{
        let db: &Db = $db;
        let shared = &*db.shared;
        if shared.replicas.is_empty() {
            on_node!(shared.primary, |$conn| $call)
        } else {
            let mut unsettled = Unsettled {
                written: &db.written,
                shared,
                armed: false,
                returned: false,
            };
            let mut lease = shared.primary.lease().await?;
            unsettled.armed = true;
            let result = {
                let $conn = lease.conn();
                $call.await
            };
            unsettled.returned = true;
            let result = lease.finish(result);
            db.settle(lease, &mut unsettled).await;
            result
        }
    }};
}

/// How stale a replica may be, by default, and still serve look-ups: 1 second.
pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(1);
/// How often each replica's replay position is checked, by default.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// How long a look-up waits for a replica, by default, before the primary answers it: 250 ms (a
/// healthy replica answers in about a millisecond).
pub const DEFAULT_REPLICA_TIMEOUT: Duration = Duration::from_millis(250);
/// Connections [`Db`] holds to each server, at most, by default (opened as calls need them).
pub const DEFAULT_CONNECTIONS: usize = 16;
/// Identity look-up statements [`Db`] runs at once on each server, by default: concurrent
/// look-ups beyond them are sent together. About the server's cores (see `BENCHMARKS.md`).
pub const DEFAULT_LOOKUP_CONNECTIONS: usize = 2;
/// The deadline of a call through [`Db`], by default: 10 s.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The most identity look-ups one statement carries, by default.
pub const DEFAULT_MAX_BATCH: usize = 128;

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

/// Where look-ups went, and how they were sent, so far: for a service's metrics and the benchmark.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RoutingStats {
    /// Look-ups served by the primary (no replica fresh enough, or none configured).
    pub primary: u64,
    /// Look-ups served by each replica, in the order given.
    pub replicas: Vec<u64>,
    /// Look-ups that failed or timed out on a replica and were then served by the primary (counted
    /// in `primary` too): `fallback_timeouts` plus `fallback_errors`.
    pub fallbacks: u64,
    /// Fallbacks because the replica did not answer within the replica timeout (the configured
    /// [`DbBuilder::replica_timeout`], or more while the primary itself answers slowly).
    pub fallback_timeouts: u64,
    /// Fallbacks because the look-up failed on the replica (an error; a connection error also takes
    /// the replica out until its next good check).
    pub fallback_errors: u64,
    /// Why the look-ups counted in `primary` (fallbacks aside) went there: for a service's metrics,
    /// and for the question "why is my replica idle?".
    pub primary_because: PrimaryReasons,
    /// Statements that answered identity look-ups, on every server.
    pub lookup_statements: u64,
    /// Identity look-ups they answered: `lookups / lookup_statements` is the average batch.
    pub lookups: u64,
    /// Replicas (indices in the order given) that the last check found in another cluster than the
    /// primary's (another `system_identifier`): a URL pointed at the wrong server. They serve
    /// nothing while they are.
    pub foreign_replicas: Vec<usize>,
}

/// Why look-ups went to the primary without trying a replica ([`RoutingStats::primary_because`]).
/// Each such look-up is counted once, under the first reason that applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PrimaryReasons {
    /// The handle was made by [`Db::primary_only`], or has no replicas.
    pub primary_only: u64,
    /// No replica was well at its last check (not yet checked, unreachable, paused, promoted, of
    /// another cluster, or its check failed or took too long).
    pub unhealthy: u64,
    /// A replica was well but staler than `max_lag` (it had not replayed what the primary
    /// committed `max_lag` ago, or no recent check of the primary vouched for it).
    pub stale: u64,
    /// A replica was fresh but had not replayed the handle's own last write within the catch-up
    /// wait (read-your-writes).
    pub behind_own_writes: u64,
    /// The position of the handle's last write was not known yet (the write's read of it failed or
    /// was cut short): the primary answers until the next check of the primary stands for it.
    pub write_position_unknown: u64,
}

/// Where one session's look-ups went ([`Db::session_stats`]): a handle made by [`Db::session`] or
/// [`Db::session_after`] and its clones count together; the handle from the builder is a session too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SessionStats {
    /// Look-ups of the session served by the primary (fallbacks included).
    pub primary: u64,
    /// Look-ups of the session served by a replica.
    pub replicas: u64,
}

/// The one handle a service uses for `users`: build it once at start-up, clone it into every
/// request handler (clones share everything), call its methods.
///
/// - **Fast by default.** It holds a few connections to each server ([`DEFAULT_CONNECTIONS`]) and
///   lends one to each call: a one-statement call is one round trip. (A call through a `PgPool` is
///   two: sqlx 0.9 pings the server on every release.) Identity look-ups run alone while few are in
///   flight; past that they queue, and a few sender tasks of the handle's send whatever is queued as
///   one statement as soon as each has a connection: single statements while calls are few, batches
///   when they are many. Nothing is cached: every answer comes from a statement sent after the call
///   was made. Its held connections run their statements on generic plans (`plan_cache_mode =
///   force_generic_plan` for the session), planned once per connection instead of on every batch.
/// - **Runtime.** It needs a Tokio runtime (its sender tasks are spawned on the caller's). Use the
///   multi-threaded one (`#[tokio::main]`'s default): measured on 2 cores, a current-thread runtime
///   answered 19-40 % fewer look-ups a second from 4 to 64 concurrent callers, for up to 27 % less
///   CPU per look-up from 8 callers up (and more at 1-4), since one thread then runs the callers
///   and sends the statements (`BENCHMARKS.md`, "Tokio runtimes").
/// - **Faults stay local.** A call whose future is dropped mid-statement gives its connection up (the
///   server rolls back what it had open); a call that fails on its connection fails alone, and the
///   next call opens a new connection. When the server restarts, calls fail with
///   [`Error::Database`] while it is down and succeed again once it is back: no restart of the
///   service, no background task to watch.
/// - **Deadlines.** Every call has one ([`DEFAULT_CALL_TIMEOUT`], [`DbBuilder::call_timeout`]),
///   waiting for a connection included: past it, [`Error::Timeout`]. The held connections carry the
///   same `statement_timeout`, so the server gives up on the statement too (with `users` locked by a
///   migration, look-ups fail at the deadline instead of queueing behind the lock).
/// - **Replicas** (optional, [`DbBuilder::replicas`]): look-ups go to a streaming replica that has
///   replayed every transaction the primary committed more than `max_lag` ago, and everything this
///   handle wrote (read-your-writes); otherwise, or when a replica fails or is slow, to the primary.
///   See "The staleness contract" below.
/// - **Transactions of your own** go through [`Db::pool`], a pool on the primary, with the crate's
///   executor-generic functions ([`crate::sign_in`], [`crate::set_role`], …) inside them.
///
/// Every method's future is `Send`: spawn them, hold them across `.await` in axum handlers.
///
/// # Examples
///
/// ```no_run
/// # async fn f() -> Result<(), livermore_db::Error> {
/// use livermore_db::{Db, Identity, Profile, Role};
///
/// let db = Db::connect("postgres://livermore@127.0.0.1:54329/livermore".parse()?).await?;
///
/// // Sign-in: created the first time, updated after.
/// let profile = Profile::parse("clerk", "user_2NNEqL2nrIRdJ194ndJqAHwEfxC", "ada@example.com", Some("Ada"), None)?;
/// let signed_in = db.sign_in(&profile).await?;
///
/// // Every authenticated request: find the user by the identity in its token.
/// let identity = Identity::parse("clerk", "user_2NNEqL2nrIRdJ194ndJqAHwEfxC")?;
/// if let Some(user) = db.find_by_identity(&identity).await? {
///     db.set_role(user.id, Role::SubscriberPro).await?;
/// }
///
/// // A transaction of your own: the pool, and the executor-generic functions.
/// let mut tx = db.pool().begin().await?;
/// livermore_db::record_login(&mut *tx, signed_in.user.id).await?;
/// tx.commit().await?;
/// # Ok(())
/// # }
/// ```
///
/// With replicas:
///
/// ```no_run
/// # async fn f() -> Result<(), livermore_db::Error> {
/// use std::time::Duration;
/// use livermore_db::Db;
///
/// let db = Db::builder("postgres://livermore@primary/livermore".parse()?)
///     .replicas(["postgres://livermore@replica-1/livermore".parse()?])
///     .max_lag(Duration::from_millis(500))
///     .build()
///     .await?;
/// # Ok(())
/// # }
/// ```
///
/// # The staleness contract
///
/// A replica serves a look-up only while it has replayed **every transaction the primary committed
/// more than `max_lag` ago** (default [`DEFAULT_MAX_LAG`]), measured, not assumed: every
/// `check_interval` (default [`DEFAULT_CHECK_INTERVAL`]) a task of the handle reads the primary's WAL
/// position, then each replica's replay position, each on a connection of its own (a busy service
/// cannot starve it); a replica that has replayed past a position sampled at time *t* holds
/// everything committed before *t*. A replica that is paused, promoted, unreachable, or whose check
/// fails, serves nothing until a later check finds it well. One that is well but stale (a check found
/// it behind, or its coverage aged) has its replay position read again by look-ups that find it so
/// (at most one read every 10 ms): it serves again once it has caught up, not only at the next check.
///
/// **So a look-up served by a replica may miss a change made elsewhere** (another request's handle,
/// the webhook service, `psql`) **during the last `max_lag`**. For an authorization decision that must
/// see a revocation at once, ask the primary: [`Db::primary_only`]. Clerk's own session tokens live
/// 60 seconds, so a role or deactivation is seen by a token-based check within 60 s anyway; `max_lag`
/// (1 s by default) adds at most that to it.
///
/// # Read-your-writes
///
/// Every write through the handle records the primary's WAL position after it. A look-up through
/// the same handle (or a clone: they share it) is served by a replica only once that replica is
/// known to have replayed past the newest such position, else by the primary: a role change made
/// through the handle is seen by its next look-up, always. The replica's position is read when a
/// look-up needs it (one read in flight per replica), not only at the periodic check, so that
/// after a write look-ups return to the replica within a round trip of its replay; a look-up waits
/// for that about one of the primary's typical round trips (at least 2 ms), what asking the primary
/// would cost.
///
/// # Why a replica is idle
///
/// [`Db::stats`] counts each look-up the primary answered under one reason:
/// [`RoutingStats::primary_because`] (no replica well, all staler than `max_lag`, behind the
/// handle's own writes, a write's position unknown, a primary-only handle) and
/// [`RoutingStats::fallback_timeouts`] / [`RoutingStats::fallback_errors`] (tried on a replica, then
/// answered by the primary). Export them as a service's metrics. [`Db::session`]
/// gives a handle of its own position (per request or per user, say); [`Db::last_write`] and
/// [`Db::session_after`] carry a position across processes.
#[derive(Clone)]
pub struct Db {
    shared: Arc<Shared>,
    /// What this handle (and its clones) wrote.
    written: Arc<Written>,
    primary_only: bool,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("connections", &self.shared.primary.size)
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
    primary: PgConnectOptions,
    replicas: Vec<PgConnectOptions>,
    connections: usize,
    lookup_connections: usize,
    max_batch: usize,
    pool_size: u32,
    max_lag: Duration,
    check_interval: Duration,
    replica_timeout: Duration,
    connect_timeout: Duration,
    call_timeout: Duration,
    statement_timeout: Option<Duration>,
}

pub(crate) struct Shared {
    primary: Node,
    replicas: Vec<Replica>,
    pool: PgPool,
    max_lag: Duration,
    check_interval: Duration,
    replica_timeout: Duration,
    call_timeout: Duration,
    epoch: Instant,
    checker: OnceLock<()>,
    next: AtomicUsize,
    served_by_primary: AtomicU64,
    fallback_timeouts: AtomicU64,
    fallback_errors: AtomicU64,
    /// Look-ups sent to the primary without trying a replica, by [`Reason`].
    reasons: [AtomicU64; Reason::COUNT],
    samples: Samples,
    primary_latency: Latency,
    closed: AtomicBool,
}

impl DbBuilder {
    /// Streaming replicas of the primary to serve look-ups from. They are connected when first
    /// needed: building never fails, nor waits, because a replica is down.
    pub fn replicas(mut self, replicas: impl IntoIterator<Item = PgConnectOptions>) -> Self {
        self.replicas.extend(replicas);
        self
    }

    /// Connections held to each server, at most (default [`DEFAULT_CONNECTIONS`]; at least 1): at
    /// most this many calls run at once on a server, the others wait their turn. They are opened
    /// as calls need them.
    pub fn connections(mut self, connections: usize) -> Self {
        self.connections = connections.max(1);
        self
    }

    /// Identity look-ups coalesced at once on each server (default
    /// [`DEFAULT_LOOKUP_CONNECTIONS`], at most `connections`). While at most this many
    /// look-ups are in flight, each runs alone on a connection of its own; past that they queue,
    /// and this many statements at a time (each sent by a task of the handle's, never by a
    /// caller) carry what is queued, many look-ups a statement.
    pub fn lookup_connections(mut self, connections: usize) -> Self {
        self.lookup_connections = connections.max(1);
        self
    }

    /// The most identity look-ups one statement carries (default [`DEFAULT_MAX_BATCH`]).
    pub fn max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch.max(1);
        self
    }

    /// Connections of [`Db::pool`], for transactions of your own (default 8).
    pub fn pool_size(mut self, size: u32) -> Self {
        self.pool_size = size.max(1);
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

    /// How long a look-up waits for a replica before the primary answers it (default
    /// [`DEFAULT_REPLICA_TIMEOUT`]), at least: while the primary's own round trip (measured by the
    /// check task) is slow, a replica may take four of those instead, since on a saturated host a
    /// replica as slow as the primary is no worse than it. A look-up that times out goes to the
    /// primary; the replica keeps serving the others (a slow query is not a sick replica). Opening a
    /// connection to the replica is not cut short by it: a connect that outlasts the timeout goes
    /// on in the background, and the next look-ups use its connection.
    pub fn replica_timeout(mut self, timeout: Duration) -> Self {
        self.replica_timeout = timeout;
        self
    }

    /// How long opening a connection may take (default 5 s): past it, the call fails.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The deadline of every call through the handle, waiting for a connection included (default
    /// [`DEFAULT_CALL_TIMEOUT`]): past it the call fails with [`Error::Timeout`] and whatever it had
    /// open is rolled back. With `users` locked by a migration, say, look-ups fail at the deadline
    /// instead of waiting as long as the lock is held.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// `statement_timeout` on the connections the handle holds (default: the call timeout), so that
    /// the server also gives up on a statement whose caller has; `None`: the call timeout.
    /// ([`Db::pool`] keeps the server's setting: your transactions are yours.)
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = Some(timeout);
        self
    }

    /// Builds the handle and opens one connection to the primary, so that a wrong address or
    /// password fails here rather than at the first call. Replicas are not contacted.
    pub async fn build(self) -> Result<Db, Error> {
        let db = self.build_lazy();
        db.shared.primary.warm().await?;
        Ok(db)
    }

    /// Builds the handle without contacting any server: connections open at the first calls.
    pub fn build_lazy(self) -> Db {
        let statement_timeout = self.statement_timeout.or(Some(self.call_timeout));
        let node = |options: &PgConnectOptions| {
            Node::new(
                options.clone(),
                self.connections,
                self.lookup_connections,
                self.max_batch,
                self.connect_timeout,
                statement_timeout,
            )
        };
        let pool = crate::pool_options()
            .max_connections(self.pool_size)
            .acquire_timeout(self.connect_timeout.max(Duration::from_secs(1)))
            .connect_lazy_with(self.primary.clone());
        Db {
            shared: Arc::new(Shared {
                primary: node(&self.primary),
                replicas: self
                    .replicas
                    .iter()
                    .map(|options| Replica::new(node(options)))
                    .collect(),
                pool,
                max_lag: self.max_lag,
                check_interval: self.check_interval,
                replica_timeout: self.replica_timeout,
                call_timeout: self.call_timeout,
                epoch: Instant::now(),
                checker: OnceLock::new(),
                next: AtomicUsize::new(0),
                served_by_primary: AtomicU64::new(0),
                fallback_timeouts: AtomicU64::new(0),
                fallback_errors: AtomicU64::new(0),
                reasons: Default::default(),
                samples: Samples::default(),
                primary_latency: Latency::default(),
                closed: AtomicBool::new(false),
            }),
            written: Arc::new(Written::default()),
            primary_only: false,
        }
    }
}

impl Db {
    /// A handle on the primary alone, with the defaults; opens one connection to check it.
    pub async fn connect(primary: PgConnectOptions) -> Result<Db, Error> {
        Db::builder(primary).build().await
    }

    /// A builder: the primary's connect options, then replicas and options.
    pub fn builder(primary: PgConnectOptions) -> DbBuilder {
        DbBuilder {
            primary,
            replicas: Vec::new(),
            connections: DEFAULT_CONNECTIONS,
            lookup_connections: DEFAULT_LOOKUP_CONNECTIONS,
            max_batch: DEFAULT_MAX_BATCH,
            pool_size: 8,
            max_lag: DEFAULT_MAX_LAG,
            check_interval: DEFAULT_CHECK_INTERVAL,
            replica_timeout: DEFAULT_REPLICA_TIMEOUT,
            connect_timeout: Duration::from_secs(5),
            call_timeout: DEFAULT_CALL_TIMEOUT,
            statement_timeout: None,
        }
    }

    /// A pool on the primary (connected lazily), for transactions of your own and anything the
    /// handle does not wrap; use the crate's executor-generic functions in them. Writes made
    /// through it are not recorded for read-your-writes.
    pub fn pool(&self) -> &PgPool {
        &self.shared.pool
    }

    /// Applies the pending migrations ([`crate::migrate`]) on a connection of their own.
    pub async fn migrate(&self) -> Result<(), Error> {
        crate::migrate(&self.shared.pool).await
    }

    /// A handle sharing everything but with a read-your-writes position of its own, starting with
    /// none.
    pub fn session(&self) -> Db {
        self.session_after(WalPosition(0))
    }

    /// A session whose look-ups see at least everything up to `position` (from [`Db::last_write`],
    /// perhaps in another process).
    pub fn session_after(&self, position: WalPosition) -> Db {
        Db {
            shared: self.shared.clone(),
            written: Arc::new(Written::at(position.0)),
            primary_only: self.primary_only,
        }
    }

    /// This handle (sharing everything, its read-your-writes position included) with every look-up
    /// sent to the primary: for a decision that must see every committed change at once (an
    /// authorization right after a revocation made elsewhere, say).
    pub fn primary_only(&self) -> Db {
        Db {
            primary_only: true,
            ..self.clone()
        }
    }

    /// The newest position this handle (and its clones) wrote; `None` before any write, or while
    /// the position of the last write is not known yet.
    pub fn last_write(&self) -> Option<WalPosition> {
        self.written
            .required(&self.shared.samples)
            .filter(|p| *p != 0)
            .map(WalPosition)
    }

    /// Where look-ups went so far, and how many statements carried them.
    pub fn stats(&self) -> RoutingStats {
        let nodes = std::iter::once(&self.shared.primary)
            .chain(self.shared.replicas.iter().map(|r| &r.node));
        let (mut lookup_statements, mut lookups) = (0, 0);
        for node in nodes {
            lookup_statements += node.counts.lookup_statements.load(Ordering::Relaxed);
            lookups += node.counts.lookups.load(Ordering::Relaxed);
        }
        RoutingStats {
            primary: self.shared.served_by_primary.load(Ordering::Relaxed),
            replicas: self
                .shared
                .replicas
                .iter()
                .map(|r| r.served.load(Ordering::Relaxed))
                .collect(),
            fallbacks: self.shared.fallback_timeouts.load(Ordering::Relaxed)
                + self.shared.fallback_errors.load(Ordering::Relaxed),
            fallback_timeouts: self.shared.fallback_timeouts.load(Ordering::Relaxed),
            fallback_errors: self.shared.fallback_errors.load(Ordering::Relaxed),
            primary_because: {
                let n = |r: Reason| self.shared.reasons[r as usize].load(Ordering::Relaxed);
                PrimaryReasons {
                    primary_only: n(Reason::PrimaryOnly),
                    unhealthy: n(Reason::Unhealthy),
                    stale: n(Reason::Stale),
                    behind_own_writes: n(Reason::Behind),
                    write_position_unknown: n(Reason::Unknown),
                }
            },
            lookup_statements,
            lookups,
            foreign_replicas: (self.shared.replicas.iter().enumerate())
                .filter(|(_, r)| r.foreign.load(Ordering::Acquire))
                .map(|(i, _)| i)
                .collect(),
        }
    }

    /// Where this session's look-ups went so far ([`Db::stats`] counts every session's).
    pub fn session_stats(&self) -> SessionStats {
        SessionStats {
            primary: self.written.on_primary.load(Ordering::Relaxed),
            replicas: self.written.on_replicas.load(Ordering::Relaxed),
        }
    }

    /// Which replicas would serve a look-up of this handle now (indices in the order given).
    pub fn serving_replicas(&self) -> Vec<usize> {
        self.start_checker();
        let required = self.written.required(&self.shared.samples);
        (0..self.shared.replicas.len())
            .filter(|&i| {
                self.shared
                    .is_fresh(&self.shared.replicas[i], required.unwrap_or(u64::MAX))
            })
            .collect()
    }

    /// Closes every held connection and the pool; later calls fail with `PoolClosed`. Calls running
    /// now finish.
    pub async fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.primary.close().await;
        for replica in &self.shared.replicas {
            replica.node.close().await;
        }
        self.shared.pool.close().await;
    }

    // ---- look-ups: a fresh replica, else the primary ----

    /// [`find_by_identity`](crate::find_by_identity): coalesced with the look-ups made at the same
    /// moment, routed.
    pub async fn find_by_identity(&self, identity: &Identity) -> Result<Option<User>, Error> {
        self.within(async { self.route(|node| node.find_by_identity(identity)).await })
            .await
    }

    /// [`find_by_identities`](crate::find_by_identities), routed.
    pub async fn find_by_identities(
        &self,
        identities: &[Identity],
    ) -> Result<Vec<Option<User>>, Error> {
        self.within(async {
            self.route(|node| async move {
                on_node!(node, |c| users::find_by_identities(c, identities))
            })
            .await
        })
        .await
    }

    /// [`find_by_id`](crate::find_by_id), routed.
    pub async fn find_by_id(&self, id: UserId) -> Result<Option<User>, Error> {
        self.within(async {
            self.route(|node| async move { on_node!(node, |c| users::find_by_id(c, id)) })
                .await
        })
        .await
    }

    /// [`find_by_email`](crate::find_by_email), routed.
    pub async fn find_by_email(&self, email: &Email) -> Result<Option<User>, Error> {
        self.within(async {
            self.route(|node| async move { on_node!(node, |c| users::find_by_email(c, email)) })
                .await
        })
        .await
    }

    /// [`list_by_role`](crate::list_by_role), routed.
    pub async fn list_by_role(
        &self,
        role: Role,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<User>, Error> {
        self.within(async {
            self.route(|node| async move {
                on_node!(node, |c| users::list_by_role(c, role, after, limit))
            })
            .await
        })
        .await
    }

    // ---- writes: the primary, and the position recorded ----

    /// [`sign_in`](crate::sign_in) on the primary.
    pub async fn sign_in(&self, profile: &Profile) -> Result<SignIn, Error> {
        self.within(async { write_on_primary!(self, |c| users::sign_in(c, profile)) })
            .await
    }

    /// [`link_identity`](crate::link_identity) on the primary.
    pub async fn link_identity(&self, id: UserId, identity: &Identity) -> Result<User, Error> {
        self.within(async { write_on_primary!(self, |c| users::link_identity(c, id, identity)) })
            .await
    }

    /// [`record_login`](crate::record_login) on the primary.
    pub async fn record_login(&self, id: UserId) -> Result<User, Error> {
        self.within(async { write_on_primary!(self, |c| users::record_login(c, id)) })
            .await
    }

    /// [`set_role`](crate::set_role) on the primary.
    pub async fn set_role(&self, id: UserId, role: Role) -> Result<User, Error> {
        self.within(async { write_on_primary!(self, |c| users::set_role(c, id, role)) })
            .await
    }

    /// [`deactivate`](crate::deactivate) on the primary.
    pub async fn deactivate(&self, id: UserId) -> Result<User, Error> {
        self.within(async { write_on_primary!(self, |c| users::deactivate(c, id)) })
            .await
    }

    /// [`clerk::apply_event`](crate::clerk::apply_event) on the primary.
    pub async fn apply_clerk_event(&self, event: &ClerkEvent) -> Result<Applied, Error> {
        self.within(async { write_on_primary!(self, |c| crate::clerk::apply_event(c, event)) })
            .await
    }
}
