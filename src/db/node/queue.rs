//! The path of one identity look-up: alone on a connection of its own while few are in flight,
//! else queued for a [`sender`](super::sender) task, whose statement answers it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::oneshot;

use super::Node;
use crate::error::Error;
use crate::input::Identity;
use crate::users::{User, find_by_identity};

/// What a waiting identity look-up is answered with.
pub(super) type Answer = Result<Option<User>, Error>;

pub(super) struct Pending {
    pub(super) identity: Identity,
    pub(super) reply: oneshot::Sender<Answer>,
}

/// Look-ups waiting for a statement, and how many sender tasks are sending them.
#[derive(Default)]
pub(super) struct Queue {
    pub(super) pending: VecDeque<Pending>,
    /// Sender tasks running (at most the node's `lookup_size`): each sends the queued look-ups,
    /// one statement at a time, until none is left.
    pub(super) senders: usize,
    /// The node is closed: nothing more is queued.
    pub(super) closed: bool,
}

impl Node {
    /// An identity look-up. While at most `lookup_size` are in flight, each runs alone on a
    /// connection of its own; beyond that they queue, and up to `lookup_size` sender tasks send
    /// whatever is queued, `max_batch` a statement, as soon as each has a connection. The caller
    /// only waits for its answer: it never sends the look-ups of others (a caller that did, under a
    /// steady stream, could be held sending until its deadline, answered long before). Every
    /// answer comes from a statement sent after the call was made: nothing is cached.
    pub(crate) async fn find_by_identity(&self, identity: &Identity) -> Answer {
        let in_flight = InFlight::enter(&self.lookups_in_flight);
        if in_flight.count <= self.lookup_size {
            let mut lease = self.lease().await?;
            self.count(1);
            let result = find_by_identity(lease.conn(), identity).await;
            return lease.finish(result);
        }
        let (reply, answer) = oneshot::channel();
        let start_sender = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            if queue.closed {
                return Err(Error::Database(sqlx::Error::PoolClosed));
            }
            queue.pending.push_back(Pending {
                identity: identity.clone(),
                reply,
            });
            let start = queue.senders < self.lookup_size;
            if start {
                queue.senders += 1;
            }
            start
        };
        if start_sender {
            tokio::spawn(self.0.clone().send_queued());
        }
        // A sender drops a reply unsent only when its task is dropped (the runtime shutting down).
        answer
            .await
            .unwrap_or(Err(Error::Lookup(Arc::new(sqlx::Error::WorkerCrashed))))
    }
}

/// One caller counted in [`Node::lookups_in_flight`] until dropped (however the call ends).
struct InFlight<'a> {
    counter: &'a AtomicUsize,
    /// Look-ups in flight, this one included, when it came in.
    count: usize,
}

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        let count = counter.fetch_add(1, Ordering::Relaxed) + 1;
        InFlight { counter, count }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}
