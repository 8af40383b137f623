//! The sender task: sends the queued identity look-ups, up to `max_batch` a statement, on one
//! connection, as soon as it has one, and answers each caller; it ends when nothing is queued.

use std::sync::Arc;

use super::queue::Pending;
use super::{Lease, NodeInner};
use crate::error::Error;
use crate::input::Identity;
use crate::users::{find_by_identity, find_identities};

impl NodeInner {
    /// A sender task: sends the queued look-ups, one statement at a time on one connection, until
    /// none is left. Its place was counted in [`Queue::senders`](super::queue::Queue) by the caller
    /// that started it. It runs once the tasks ready before it have (a spawned task waits its
    /// turn), so that calls made at the same moment share its first statement.
    pub(super) async fn send_queued(self: Arc<Self>) {
        let mut place = Place {
            node: &self,
            held: true,
        };
        let mut lease = None;
        loop {
            let mut held = match lease.take() {
                Some(held) => held,
                None => match self.lease().await {
                    Ok(held) => held,
                    Err(e) => {
                        // No connection: the queued look-ups fail with the reason.
                        drop(place);
                        self.fail_pending(&e);
                        return;
                    }
                },
            };
            let batch = self.next_batch();
            if batch.is_empty() {
                // `next_batch` gave the place up, under the queue's lock.
                place.held = false;
                return;
            }
            self.send(&mut held, batch).await;
            if held.usable() {
                lease = Some(held);
            }
            // The callers it answered come back with their next look-ups: let them queue first
            // (one pass of the scheduler), or the next statement carries one.
            tokio::task::yield_now().await;
        }
    }

    /// The next statement's worth of queued look-ups, or none (and one sender fewer).
    fn next_batch(&self) -> Vec<Pending> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = Vec::new();
        while batch.len() < self.max_batch {
            match queue.pending.pop_front() {
                Some(p) if p.reply.is_closed() => continue,
                Some(p) => batch.push(p),
                None => break,
            }
        }
        if batch.is_empty() {
            queue.senders -= 1;
        }
        batch
    }

    /// Sends `batch` on the lease's connection and answers each look-up in it.
    async fn send(&self, lease: &mut Lease<'_>, batch: Vec<Pending>) {
        self.count(batch.len());
        let found = match batch.as_slice() {
            [one] => find_by_identity(lease.conn(), &one.identity)
                .await
                .map(|u| vec![u]),
            many => {
                let identities: Vec<&Identity> = many.iter().map(|p| &p.identity).collect();
                find_identities(lease.conn(), &identities).await
            }
        };
        match lease.finish(found) {
            Ok(users) => {
                for (pending, user) in batch.into_iter().zip(users) {
                    let _ = pending.reply.send(Ok(user));
                }
            }
            Err(e) => {
                let shared = Arc::new(into_sqlx(e));
                for pending in batch {
                    let _ = pending.reply.send(Err(Error::Lookup(shared.clone())));
                }
            }
        }
    }

    pub(super) fn fail_pending(&self, e: &Error) {
        let waiting: Vec<Pending> = self
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .drain(..)
            .collect();
        let shared = Arc::new(sqlx::Error::Protocol(format!("no connection: {e}")));
        for pending in waiting {
            let _ = pending.reply.send(Err(Error::Lookup(shared.clone())));
        }
    }
}

/// The sqlx error inside a library error (a look-up statement fails only with database errors).
fn into_sqlx(e: Error) -> sqlx::Error {
    match e {
        Error::Database(e) => e,
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

/// A sender's place in [`Queue::senders`](super::queue::Queue), given up however the sender ends. A
/// sender task dropped unfinished (its runtime shut down) gives it up too: a place lost would be
/// lost for good, and with every place lost no sender would start again.
struct Place<'a> {
    node: &'a NodeInner,
    /// Not yet given up (by [`NodeInner::next_batch`], finding the queue empty).
    held: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if self.held {
            self.node
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .senders -= 1;
        }
    }
}
