//! One server's connections, held by the handle and lent to one call at a time (no pool, so no
//! acquire and release round trip per call), with identity look-ups coalesced while every
//! connection is busy.
//!
//! The path of one identity look-up: [`queue`] (alone on a connection, or queued), then
//! [`sender`] (the task that sends queued look-ups, many a statement, and answers them).

mod queue;
mod sender;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use std::future::Future;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::error::Error;
use queue::Queue;

/// Counters of one server's calls, for [`RoutingStats`](super::RoutingStats) and the benchmark.
#[derive(Default)]
pub(crate) struct Counts {
    /// Statements that answered identity look-ups.
    pub(crate) lookup_statements: AtomicU64,
    /// Identity look-ups they answered.
    pub(crate) lookups: AtomicU64,
}

/// A server's held connections. At most `size` calls run at once. Identity look-ups run alone while
/// at most `lookup_size` are in flight; past that they queue, and up to `lookup_size` sender tasks
/// send the queued look-ups (up to `max_batch` a statement) as soon as each has a connection.
///
/// The handle's part is shared with the sender tasks ([`NodeInner`]); dropping the handle closes it.
pub(crate) struct Node(Arc<NodeInner>);

impl std::ops::Deref for Node {
    type Target = NodeInner;

    fn deref(&self) -> &NodeInner {
        &self.0
    }
}

/// A [`Node`]'s state, shared by the handle and its sender tasks.
pub(crate) struct NodeInner {
    /// How to open a connection, shared with the tasks that open them.
    opener: Arc<Opener>,
    /// Its connections, shared with the tasks that open them (a connection whose caller went away
    /// while it opened lands there, idle).
    conns: Arc<Conns>,
    turns: Arc<Semaphore>,
    /// Identity look-up statements in flight at once when they are coalesced; and while at most
    /// this many look-ups are in flight, each runs alone on a connection of its own (issue 33).
    ///
    /// Measured on 2 cores with generic plans (`BENCHMARKS.md`, "Look-ups alone up to
    /// `lookup_connections`"): at 4 callers, letting twice as many run alone (as before) cost
    /// 1.02-1.16x held-each's CPU per look-up at 0.89-0.95x its rate, against 0.81-0.84x and
    /// 1.09-1.19x this way; one alone was worse at 2 callers (0.69x held-each's rate). Fewer
    /// statements alone also leave the server's backends to the handle's writes (with 8 single
    /// statements, a sign-in every 20 ms managed 14-31 in 3 s instead of 100).
    lookup_size: usize,
    queue: std::sync::Mutex<Queue>,
    /// Identity look-ups being answered now (callers inside [`Node::find_by_identity`]).
    lookups_in_flight: AtomicUsize,
    pub(crate) size: usize,
    max_batch: usize,
    /// The `statement_timeout` its connections carry.
    pub(crate) statement_timeout: Option<Duration>,
    pub(crate) counts: Counts,
}

/// One server's connections: the idle ones, and how many exist (idle, lent or opening), at most
/// the node's size. A call that finds none idle opens one while fewer exist, else waits for one to
/// be returned: however often callers give up while connections open, no more than `size` exist
/// or open at once (no connect storm on a slow host).
struct Conns {
    idle: std::sync::Mutex<Vec<PgConnection>>,
    live: AtomicUsize,
    /// Woken (one waiter, or the next to wait) when a connection is returned or one fewer exists.
    returned: tokio::sync::Notify,
    size: usize,
}

impl Conns {
    fn pop(&self) -> Option<PgConnection> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn put(&self, conn: PgConnection) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
        self.returned.notify_one();
    }

    /// A connection that existed is gone (closed, broken, or its open failed).
    fn discard(&self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
        self.returned.notify_one();
    }

    /// Counts one more connection, if fewer than `size` exist.
    fn try_reserve(&self) -> bool {
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.size).then_some(n + 1)
            })
            .is_ok()
    }
}

/// Opens connections to one server, in tasks of their own: a caller that gives up while its
/// connection opens (a deadline, a replica timeout) does not cancel the open, whose connection then
/// waits idle for the next call. (Cancelled opens were how a slow host lost its replica for good:
/// under load a connect took longer than the replica timeout, every look-up's connect was cut short
/// at the timeout, and no connection to the replica ever came to exist.)
struct Opener {
    options: PgConnectOptions,
    connect_timeout: Duration,
    statement_timeout: Option<Duration>,
}

impl Opener {
    /// Opens a connection within the connect timeout and sets, for the session (a `SET`, not a
    /// startup option: PgBouncer refuses unknown startup options), its statement timeout and
    /// generic plans for its prepared statements.
    ///
    /// Generic plans: PostgreSQL plans a prepared statement anew on each run (a custom plan) while
    /// the custom plans' average cost stays below the generic plan's. For the look-up batch, whose
    /// generic plan assumes an array of 10, batches of a few identities kept it re-planning every
    /// statement: planning was about 30 % of the server's CPU with 8 callers, and half the CPU per
    /// look-up went with it (`BENCHMARKS.md`, "Generic plans"). The statements sent on these
    /// connections probe unique keys, or arrays of them, whose plans do not depend on the values;
    /// the one exception, `list_by_role`, walks the primary key under a generic plan (29 ms against
    /// the custom plan's 23 ms for a rare role among 200 000 users). `Db::pool` keeps the server's
    /// default.
    async fn open(&self) -> Result<PgConnection, Error> {
        let opened = async {
            let mut conn = PgConnection::connect_with(&self.options).await?;
            let timeout = self
                .statement_timeout
                .map(|t| format!("{}ms", t.as_millis().max(1)));
            sqlx::query!(
                r#"SELECT set_config('plan_cache_mode', 'force_generic_plan', false) AS "plans!",
                          set_config('statement_timeout',
                                     coalesce($1, current_setting('statement_timeout')),
                                     false) AS "timeout!""#,
                timeout
            )
            .fetch_one(&mut conn)
            .await?;
            Ok::<_, Error>(conn)
        };
        match tokio::time::timeout(self.connect_timeout, opened).await {
            Ok(conn) => conn,
            Err(_) => Err(Error::Database(sqlx::Error::PoolTimedOut)),
        }
    }
}

impl Drop for Node {
    /// Closes its idle connections now: the tasks still opening connections share the set, and
    /// would otherwise keep them open until their connects end (up to the connect timeout). A
    /// sender task still running closes its connection when its statement ends.
    fn drop(&mut self) {
        self.turns.close();
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.conns
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// One connection lent to one call. Back to the idle list only when the call says it may be: a call
/// whose future is dropped mid-statement, or that failed on the connection itself, gives its
/// connection up (the socket closes; the server ends the session and rolls back what it had open),
/// and the next call opens a new one.
pub(crate) struct Lease<'a> {
    node: &'a NodeInner,
    conn: Option<PgConnection>,
    /// No statement is running on it, and none broke it.
    reusable: bool,
    broken: bool,
    _turn: OwnedSemaphorePermit,
}

impl Lease<'_> {
    /// The connection, for a statement: until [`finish`](Self::finish) says how it went, the
    /// connection counts as in an unknown state (a future dropped meanwhile gives it up).
    pub(crate) fn conn(&mut self) -> &mut PgConnection {
        self.reusable = false;
        self.conn
            .as_mut()
            .unwrap_or_else(|| unreachable!("a lease holds its connection until dropped"))
    }

    /// Marks the connection reusable unless the call failed on the connection itself. A lease may
    /// carry several statements (a write, then its position): once one breaks the connection, it
    /// stays broken.
    pub(crate) fn finish<T>(&mut self, result: Result<T, Error>) -> Result<T, Error> {
        if let Err(e) = &result
            && breaks_connection(e)
        {
            self.broken = true;
        }
        self.reusable = !self.broken;
        result
    }

    /// Whether the connection is still usable after what ran on it.
    pub(crate) fn usable(&self) -> bool {
        !self.broken
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.reusable && !self.node.turns.is_closed() {
                self.node.conns.put(conn);
            } else {
                drop(conn);
                self.node.conns.discard();
            }
        }
    }
}

/// Whether an error leaves the connection in an unknown state (I/O, protocol, TLS, a FATAL server
/// error, connection exceptions): such a connection is closed, not reused. A server error of the
/// statement alone (a constraint, a cancelled statement) leaves it usable: sqlx rolls back an
/// unfinished transaction before the connection's next statement.
pub(crate) fn breaks_connection(e: &Error) -> bool {
    let sqlx_error = match e {
        Error::Database(e) => e,
        Error::Lookup(e) => e.as_ref(),
        _ => return false,
    };
    match sqlx_error {
        sqlx::Error::Database(db) => {
            let fatal = db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some_and(|pg| {
                    matches!(
                        pg.severity(),
                        sqlx::postgres::PgSeverity::Fatal | sqlx::postgres::PgSeverity::Panic
                    )
                });
            let code = db.code();
            let class = code.as_deref().map(|c| c.get(..2).unwrap_or(c));
            fatal || matches!(class, Some("08" | "57"))
        }
        sqlx::Error::RowNotFound | sqlx::Error::ColumnDecode { .. } => false,
        _ => true,
    }
}

impl Node {
    pub(crate) fn new(
        options: PgConnectOptions,
        size: usize,
        lookup_size: usize,
        max_batch: usize,
        connect_timeout: Duration,
        statement_timeout: Option<Duration>,
    ) -> Node {
        let size = size.max(1);
        let lookup_size = lookup_size.clamp(1, size);
        Node(Arc::new(NodeInner {
            lookups_in_flight: AtomicUsize::new(0),
            opener: Arc::new(Opener {
                options,
                connect_timeout,
                statement_timeout,
            }),
            conns: Arc::new(Conns {
                idle: std::sync::Mutex::new(Vec::with_capacity(size)),
                live: AtomicUsize::new(0),
                returned: tokio::sync::Notify::new(),
                size,
            }),
            turns: Arc::new(Semaphore::new(size)),
            lookup_size,
            queue: std::sync::Mutex::new(Queue::default()),
            size,
            max_batch: max_batch.max(1),
            statement_timeout,
            counts: Counts::default(),
        }))
    }
}

impl NodeInner {
    /// Opens a connection (already counted by [`Conns::try_reserve`]) in a task of its own and
    /// waits for it: if this caller goes away first, the connection, once open, waits idle for the
    /// next call.
    fn open_detached(&self) -> impl Future<Output = Result<PgConnection, Error>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let (opener, conns) = (self.opener.clone(), self.conns.clone());
        tokio::spawn(async move {
            match opener.open().await {
                Ok(conn) => {
                    if let Err(Ok(conn)) = tx.send(Ok(conn)) {
                        // Its caller went away: kept for the next one.
                        conns.put(conn);
                    }
                }
                Err(e) => {
                    conns.discard();
                    let _ = tx.send(Err(e));
                }
            }
        });
        async move {
            rx.await
                .unwrap_or(Err(Error::Database(sqlx::Error::WorkerCrashed)))
        }
    }

    /// Opens a connection outside the node's set (the check task's own), in a task of its own: a
    /// check that stops waiting for it finds it open at a later check.
    pub(crate) fn spawn_open(&self) -> tokio::task::JoinHandle<Result<PgConnection, Error>> {
        let opener = self.opener.clone();
        tokio::spawn(async move { opener.open().await })
    }

    /// Opens one connection now and keeps it idle: fails when the server cannot be reached.
    pub(crate) async fn warm(&self) -> Result<(), Error> {
        if self.conns.try_reserve() {
            let conn = self.open_detached().await?;
            self.conns.put(conn);
        }
        Ok(())
    }

    /// Starts opening one connection in the background when the server has none, so that the
    /// first calls to a replica that comes into service find one open; returns at once.
    pub(crate) fn prewarm(&self) {
        if self.conns.live.load(Ordering::Acquire) == 0
            && !self.turns.is_closed()
            && self.conns.try_reserve()
        {
            drop(self.open_detached());
        }
    }

    async fn lease_with(&self, turn: OwnedSemaphorePermit) -> Result<Lease<'_>, Error> {
        let conn = loop {
            if let Some(conn) = self.conns.pop() {
                break conn;
            }
            if self.conns.try_reserve() {
                // Opening is rare, and runs in a task of its own (its future, sqlx's connect, is
                // kilobytes, and is boxed out of every call's future by the spawn).
                break self.open_or_returned().await?;
            }
            // Every connection is lent or opening (for callers that went away): the next one
            // returned, or a place freed, is this call's.
            let returned = self.conns.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(conn) = self.conns.pop() {
                break conn;
            }
            returned.await;
        };
        Ok(Lease {
            node: self,
            conn: Some(conn),
            reusable: true,
            broken: false,
            _turn: turn,
        })
    }

    /// Opens a connection (already counted) for a call, unless another is returned first: then the
    /// call takes that one, and the open goes on in its task, its connection idle for a later call.
    /// On a saturated host a connect (a backend forked, SCRAM) took 0.1-2 s while the connections
    /// lent to look-ups came back within milliseconds: callers that waited for their own open stalled
    /// for all of it (a writer's read-back, 2 s).
    async fn open_or_returned(&self) -> Result<PgConnection, Error> {
        let opening = self.open_detached();
        tokio::pin!(opening);
        loop {
            let returned = self.conns.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(conn) = self.conns.pop() {
                return Ok(conn);
            }
            // A notification this call took and did not use (its open finished first) is passed
            // on to the next waiter when `returned` is dropped (tokio's `Notified`).
            tokio::select! {
                biased;
                opened = &mut opening => return opened,
                () = &mut returned => {}
            }
        }
    }

    /// A connection for one call, waiting for a turn while every connection is lent.
    pub(crate) async fn lease(&self) -> Result<Lease<'_>, Error> {
        let turn = self
            .turns
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Database(sqlx::Error::PoolClosed))?;
        self.lease_with(turn).await
    }

    fn count(&self, lookups: usize) {
        self.counts
            .lookup_statements
            .fetch_add(1, Ordering::Relaxed);
        self.counts
            .lookups
            .fetch_add(lookups as u64, Ordering::Relaxed);
    }

    /// Closes the idle connections and makes later calls fail (`sqlx::Error::PoolClosed`); calls
    /// running now finish, and their connections close as they return.
    pub(crate) async fn close(&self) {
        self.turns.close();
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        let idle = std::mem::take(&mut *self.conns.idle.lock().unwrap_or_else(|e| e.into_inner()));
        for conn in idle {
            self.conns.discard();
            let _ = conn.close().await;
        }
        self.fail_pending(&Error::Database(sqlx::Error::PoolClosed));
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;
    use crate::input::Identity;
    use crate::users::find_identities;

    /// The look-up batch runs on a generic plan on the node's connections, with a statement
    /// timeout or without, and the timeout is set when there is one. Seen from the session itself
    /// (`pg_prepared_statements` is per session), with the server's default as the control: there
    /// the first five runs at least are planned anew (every run, on a large `users`).
    #[tokio::test]
    async fn the_lookup_batch_is_planned_once_per_connection() {
        let url = std::env::var("DATABASE_URL")
            .expect("DATABASE_URL: this test opens connections (make test sets it)");
        let options = PgConnectOptions::from_str(&url).expect("DATABASE_URL parses");
        let identities: Vec<Identity> = (1..=3)
            .map(|n| Identity::parse("clerk", &format!("user_plan_{n}")).unwrap())
            .collect();
        let identities: Vec<&Identity> = identities.iter().collect();
        let plans = async |conn: &mut PgConnection| {
            for _ in 0..10 {
                find_identities(&mut *conn, &identities).await.unwrap();
            }
            let row = sqlx::query!(
                r#"SELECT generic_plans AS "generic!", custom_plans AS "custom!"
                   FROM pg_prepared_statements
                   WHERE statement LIKE '%FROM unnest($1::varchar[], $2::varchar[]) WITH ORDINALITY AS i(provider, sub, n)%'
                     AND statement NOT LIKE '%pg_prepared_statements%'"#
            )
            .fetch_one(&mut *conn)
            .await
            .unwrap();
            (row.generic, row.custom)
        };

        let mut plain = PgConnection::connect_with(&options).await.unwrap();
        let (generic, custom) = plans(&mut plain).await;
        assert!(
            custom >= 5,
            "the control: the server's default plans the batch anew ({generic} generic, {custom} custom)"
        );

        for timeout in [Some(Duration::from_millis(1234)), None] {
            let opener = Opener {
                options: options.clone(),
                connect_timeout: Duration::from_secs(30),
                statement_timeout: timeout,
            };
            let mut conn = opener.open().await.expect("open");
            let (generic, custom) = plans(&mut conn).await;
            assert!(
                generic >= 1 && custom == 0,
                "timeout {timeout:?}: {generic} generic, {custom} custom"
            );
            let set = statement_timeout(&mut conn).await;
            let server_default = statement_timeout(&mut plain).await;
            match timeout {
                Some(_) => assert_eq!(set, "1234ms"),
                None => assert_eq!(set, server_default),
            }
        }
    }

    /// The session's `statement_timeout`.
    async fn statement_timeout(conn: &mut PgConnection) -> String {
        sqlx::query_scalar!(r#"SELECT current_setting('statement_timeout') AS "setting!""#)
            .fetch_one(conn)
            .await
            .unwrap()
    }
}
