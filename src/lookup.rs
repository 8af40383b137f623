//! [`IdentityLookup`]: identity look-ups that skip the pool and share statements.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::sync::oneshot;

use crate::error::Error;
use crate::input::Identity;
use crate::users::{User, find_by_identity, find_identities};

/// The most look-ups one statement carries, unless told otherwise.
pub const DEFAULT_MAX_BATCH: usize = 128;

/// How many look-ups may wait for a connection before [`IdentityLookup::lookup`] waits to queue.
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<Option<User>, Error>>;

struct Request {
    identity: Identity,
    reply: Reply,
}

/// A look-up handle for the hot path of every authenticated request: it owns a few connections of its
/// own (no pool, so no acquire and release per call) and sends concurrent look-ups together, as one
/// [`find_by_identities`](crate::find_by_identities) statement per connection round trip.
///
/// - A call made while a connection is free goes out at once, alone: no timer, no added latency.
/// - While every connection has a statement in flight, new calls queue; when a connection frees,
///   all queued calls (up to `max_batch`) go out together.
/// - **No stale read, by construction:** every answer comes from a statement sent after the call was
///   made; nothing is cached. A role change or a deactivation committed before a call is seen by it.
/// - A failed statement fails only the calls it carried (each gets [`Error::Lookup`]); the
///   connection is then replaced. A caller that goes away (a dropped future, a timed-out request)
///   breaks nothing.
///
/// Cheap to clone; the connections close when the last clone is dropped. Use it for look-ups; use a
/// pool (with [`pool_options`](crate::pool_options)) for everything else.
///
/// # Examples
///
/// ```no_run
/// # async fn f() -> Result<(), livermore_db::Error> {
/// use livermore_db::{Identity, IdentityLookup};
///
/// let options: sqlx::postgres::PgConnectOptions =
///     "postgres://livermore@127.0.0.1:54329/livermore".parse()?;
/// let lookup = IdentityLookup::connect(options, 2).await?;
/// let identity = Identity::parse("clerk", "user_2NNEqL2nrIRdJ194ndJqAHwEfxC")?;
/// if let Some(user) = lookup.lookup(&identity).await? {
///     println!("{} ({})", user.username, user.role);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct IdentityLookup {
    queue: async_channel::Sender<Request>,
    counts: Arc<Counts>,
}

/// What an [`IdentityLookup`] has done so far: how many statements carried how many look-ups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LookupStats {
    /// Statements sent.
    pub statements: u64,
    /// Look-ups answered by them.
    pub lookups: u64,
}

#[derive(Default)]
struct Counts {
    statements: AtomicU64,
    lookups: AtomicU64,
}

impl std::fmt::Debug for IdentityLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityLookup").finish_non_exhaustive()
    }
}

impl IdentityLookup {
    /// Opens `connections` connections (at least one) and starts the handle, with
    /// [`DEFAULT_MAX_BATCH`]. Fails when the first connections cannot be opened.
    pub async fn connect(options: PgConnectOptions, connections: usize) -> Result<Self, Error> {
        Self::connect_with(options, connections, DEFAULT_MAX_BATCH).await
    }

    /// [`IdentityLookup::connect`] with the most look-ups one statement may carry (at least one).
    pub async fn connect_with(
        options: PgConnectOptions,
        connections: usize,
        max_batch: usize,
    ) -> Result<Self, Error> {
        let mut opened = Vec::new();
        for _ in 0..connections.max(1) {
            opened.push(PgConnection::connect_with(&options).await?);
        }
        let (queue, requests) = async_channel::bounded(QUEUE);
        let options = Arc::new(options);
        let counts = Arc::new(Counts::default());
        for conn in opened {
            tokio::spawn(worker(
                Some(conn),
                options.clone(),
                requests.clone(),
                max_batch.max(1),
                counts.clone(),
            ));
        }
        Ok(IdentityLookup { queue, counts })
    }

    /// How many statements have carried how many look-ups so far (for a service's metrics: their
    /// ratio is the average batch).
    pub fn stats(&self) -> LookupStats {
        LookupStats {
            statements: self.counts.statements.load(Ordering::Relaxed),
            lookups: self.counts.lookups.load(Ordering::Relaxed),
        }
    }

    /// Finds the user holding an identity; `Ok(None)` when there is none. See the type's docs for
    /// what it guarantees.
    pub async fn lookup(&self, identity: &Identity) -> Result<Option<User>, Error> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            identity: identity.clone(),
            reply,
        };
        let closed = || Error::Lookup("the look-up handle's connections have stopped".to_owned());
        self.queue.send(request).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

/// One connection's loop: take the first waiting call and every call queued behind it (up to
/// `max_batch`), run them as one statement, answer each; replace the connection after a failure.
async fn worker(
    mut conn: Option<PgConnection>,
    options: Arc<PgConnectOptions>,
    requests: async_channel::Receiver<Request>,
    max_batch: usize,
    counts: Arc<Counts>,
) {
    let mut backoff = Duration::from_millis(50);
    // Whether the last statement carried more than one call.
    let mut busy = false;
    loop {
        // Take the first waiting call. When calls have been arriving together, let the tasks that are
        // ready run first (no timer: one pass of the scheduler), so that calls made at the same
        // moment share this statement; then take everything queued behind it. A lone caller skips
        // the pass.
        let Ok(first) = requests.recv().await else {
            break; // every handle is gone
        };
        if busy {
            tokio::task::yield_now().await;
        }
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        busy = batch.len() > 1;
        batch.retain(|r| !r.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        if conn.is_none() {
            match PgConnection::connect_with(&options).await {
                Ok(fresh) => {
                    conn = Some(fresh);
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    fail(batch, &format!("cannot reconnect: {e}"));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        counts.statements.fetch_add(1, Ordering::Relaxed);
        counts
            .lookups
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let found = match batch.as_slice() {
            [one] => find_by_identity(&mut *c, &one.identity)
                .await
                .map(|u| vec![u]),
            many => {
                let identities: Vec<&Identity> = many.iter().map(|r| &r.identity).collect();
                find_identities(&mut *c, &identities).await
            }
        };
        match found {
            Ok(users) => {
                for (request, user) in batch.into_iter().zip(users) {
                    let _ = request.reply.send(Ok(user));
                }
            }
            Err(e) => {
                // The connection may be broken: replace it before the next statement.
                if let Some(old) = conn.take() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), old.close()).await;
                }
                fail(batch, &e.to_string());
            }
        }
    }
    if let Some(c) = conn {
        let _ = c.close().await;
    }
}

fn fail(batch: Vec<Request>, reason: &str) {
    for request in batch {
        // A caller that went away needs no answer.
        let _ = request.reply.send(Err(Error::Lookup(reason.to_owned())));
    }
}
