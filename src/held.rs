//! [`HeldConnections`]: the crate's one-statement calls on connections the handle holds, lent per call
//! without sqlx's pool (and so without its ping on every release).

use std::sync::{Arc, Mutex};

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::sync::Semaphore;

use crate::error::Error;
use crate::input::{Identity, Profile};
use crate::users::{self, SignIn, User, UserId};

/// A few connections of its own, lent to one call at a time: for sign-ins and look-ups at the rate of
/// the statements themselves.
///
/// A call through a `PgPool` costs an acquire and a release, and sqlx 0.9 pings the server on every
/// release (`return_to_pool`, whatever the pool options say): a second round trip for a
/// one-statement call such as the returning user's sign-in. Here a call takes an idle connection
/// (opening one if a slot is empty), runs, and puts it back: no ping, no task.
///
/// What the ping was for is kept: a call that does not finish (its future dropped mid-statement, a
/// timed-out request) or that fails on the connection itself (I/O, protocol, TLS) gives its
/// connection up (the server then rolls back whatever it had open) and the slot opens a new one on
/// its next use. A call that fails on a server error leaves its connection usable: sqlx rolls back
/// the call's transaction before the connection's next statement. At most `connections` calls run at
/// once; others wait their turn. No connection is retired for age: recreate the handle to renew them.
///
/// Cheap to clone (clones share the connections), `Send + Sync`, usable from `tokio::spawn` and axum
/// handlers. For transactions of your own and everything else, use a pool.
///
/// # Examples
///
/// ```no_run
/// # async fn f() -> Result<(), livermore_db::Error> {
/// use livermore_db::{HeldConnections, Profile};
///
/// let options: sqlx::postgres::PgConnectOptions =
///     "postgres://livermore@127.0.0.1:54329/livermore".parse()?;
/// let held = HeldConnections::connect(options, 4).await?;
/// let profile = Profile::parse("clerk", "user_2NNEqL2nrIRdJ194ndJqAHwEfxC", "ada@example.com", None, None)?;
/// let signed_in = held.sign_in(&profile).await?;
/// held.record_login(signed_in.user.id).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct HeldConnections {
    shared: Arc<Shared>,
}

struct Shared {
    options: PgConnectOptions,
    idle: Mutex<Vec<PgConnection>>,
    turns: Semaphore,
    size: usize,
}

impl std::fmt::Debug for HeldConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldConnections")
            .field("connections", &self.shared.size)
            .finish_non_exhaustive()
    }
}

/// One connection lent to one call; back to the idle list only when the call said it may be.
struct Lease<'a> {
    shared: &'a Shared,
    conn: Option<PgConnection>,
    reusable: bool,
    _turn: tokio::sync::SemaphorePermit<'a>,
}

impl Lease<'_> {
    fn conn(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .unwrap_or_else(|| unreachable!("a lease holds its connection until dropped"))
    }

    /// Marks the connection reusable unless the call failed on the connection itself.
    fn finish<T>(mut self, result: Result<T, Error>) -> Result<T, Error> {
        self.reusable = match &result {
            Err(Error::Database(sqlx::Error::Database(e))) => {
                // A server error ends the statement, not the session, unless it is FATAL
                // (`terminating connection due to administrator command`, 57P01, …).
                let fatal = e
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .is_some_and(|pg| {
                        matches!(
                            pg.severity(),
                            sqlx::postgres::PgSeverity::Fatal | sqlx::postgres::PgSeverity::Panic
                        )
                    });
                let code = e.code();
                let class = code.as_deref().map(|c| c.get(..2).unwrap_or(c));
                !fatal && !matches!(class, Some("08" | "57"))
            }
            Err(Error::Database(e)) => {
                matches!(
                    e,
                    sqlx::Error::RowNotFound | sqlx::Error::ColumnDecode { .. }
                )
            }
            _ => true,
        };
        result
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        // A connection not marked reusable is dropped: the socket closes, and the server ends the
        // session and whatever it had open.
        if let Some(conn) = self.conn.take()
            && self.reusable
            && !self.shared.turns.is_closed()
        {
            self.shared
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
        }
    }
}

impl HeldConnections {
    /// Opens `connections` connections (at least one). Fails when they cannot be opened.
    pub async fn connect(options: PgConnectOptions, connections: usize) -> Result<Self, Error> {
        let size = connections.max(1);
        let mut idle = Vec::with_capacity(size);
        for _ in 0..size {
            idle.push(PgConnection::connect_with(&options).await?);
        }
        Ok(HeldConnections {
            shared: Arc::new(Shared {
                options,
                idle: Mutex::new(idle),
                turns: Semaphore::new(size),
                size,
            }),
        })
    }

    async fn lease(&self) -> Result<Lease<'_>, Error> {
        let shared = &*self.shared;
        let turn = shared
            .turns
            .acquire()
            .await
            .map_err(|_| Error::Database(sqlx::Error::PoolClosed))?;
        let idle = shared.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => PgConnection::connect_with(&shared.options).await?,
        };
        Ok(Lease {
            shared,
            conn: Some(conn),
            reusable: false,
            _turn: turn,
        })
    }

    /// [`sign_in`](crate::sign_in) on a held connection.
    pub async fn sign_in(&self, profile: &Profile) -> Result<SignIn, Error> {
        let mut lease = self.lease().await?;
        let result = users::sign_in(lease.conn(), profile).await;
        lease.finish(result)
    }

    /// [`record_login`](crate::record_login) on a held connection.
    pub async fn record_login(&self, id: UserId) -> Result<User, Error> {
        let mut lease = self.lease().await?;
        let result = users::record_login(lease.conn(), id).await;
        lease.finish(result)
    }

    /// [`find_by_identity`](crate::find_by_identity) on a held connection (for many concurrent
    /// look-ups, [`IdentityLookup`](crate::IdentityLookup) also coalesces them).
    pub async fn find_by_identity(&self, identity: &Identity) -> Result<Option<User>, Error> {
        let mut lease = self.lease().await?;
        let result = users::find_by_identity(lease.conn(), identity).await;
        lease.finish(result)
    }

    /// Closes the idle connections and makes later calls fail (`sqlx::Error::PoolClosed`); calls running
    /// now finish, and their connections close as they return.
    pub async fn close(&self) {
        self.shared.turns.close();
        let idle = std::mem::take(&mut *self.shared.idle.lock().unwrap_or_else(|e| e.into_inner()));
        for conn in idle {
            let _ = conn.close().await;
        }
    }
}
