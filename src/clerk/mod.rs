//! Keeping `users` in step with Clerk: webhook events (`user.created`, `user.updated`, `user.deleted`)
//! and bulk backfills of Clerk's user list.
//!
//! Clerk delivers webhooks at least once, retries for days and does not keep order; backfills run
//! beside them. Whatever the order, the number of deliveries and the number of concurrent workers,
//! the stored row ends as delivering each record once, in order, makes it.
//!
//! # The rules
//!
//! **Profile** (address, display name, picture): applied when the record's `updated_at` is newer than
//! the stored profile's (`users.identity_updated_at`); a replay or an older record changes nothing
//! ([`Outcome::Stale`]). `last_login_at` only moves forward.
//!
//! **Address.** Only an address Clerk verified counts (one with no `verification` object, as older
//! exports have, counts as verified): the primary address if verified, else the first verified one.
//! A new user with none is not created ([`Outcome::NoVerifiedEmail`]; a later event with a verified
//! address creates it); an existing user keeps its address. An unverified address never takes, blocks
//! or changes `users.email`.
//!
//! **Role.** `public_metadata.role` is a valid [`Role`](crate::Role), absent (`null` included), or
//! invalid; absent and invalid count as `user`, the role Clerk gives by default. The role has a
//! version of its own (`users.identity_role_updated_at`), a source (`users.role_source`: `clerk`, or
//! `manual` for [`set_role`](crate::set_role) and the default) and the role Clerk last gave
//! (`users.clerk_role`, kept when the role is then set by hand; `NULL`, for rows from before this
//! rule, counts as `user`):
//!
//! | the stored role came from | a newer Clerk record says | result |
//! |---|---|---|
//! | Clerk | a valid role R | R |
//! | Clerk | no role, `null`, or an invalid value | `user` (revoked); for an invalid value [`Applied::role_note`] says why |
//! | `set_role` (by hand) | the role Clerk last gave (valid, or none for `user`) | kept |
//! | `set_role` | another role, newer than the change by hand | Clerk's role (R, or `user` for none): now from Clerk |
//! | either | anything not newer than the role's version | nothing changes |
//!
//! Clerk re-sends the whole user on every change, so a newer record is not a new role: an admin
//! demoted by hand stays demoted when the user edits their name in Clerk and Clerk re-sends
//! `role: "admin"`; once Clerk's role changes (to `subscriber_pro`, or removed), Clerk's role applies
//! again. Clerk removing or changing a role it set revokes at once.
//!
//! "Newer" compares Clerk's `updated_at` with the role's version: the `updated_at` of the Clerk record
//! that set it, or for `set_role` the database's clock at the change. Whatever the delivery order of
//! the records newer than a change by hand, the result is the one in order: when a record that
//! differs arrives after a newer one that did not, the role of the newest record applies. A new user
//! created from Clerk gets the record's valid role, else `user`, as set by Clerk. Existing rows from
//! before these rules count as set by hand unless a Clerk record had set their role.
//!
//! **Deletion.** `user.deleted` records a permanent tombstone (`identity_tombstones`), deactivates the
//! user (`is_active = false`; the row, its id and everything pointing at it stay) and releases its
//! address: `users.email` becomes a placeholder `deleted+<md5 of the identity>@deleted.invalid` (the
//! `.invalid` domain is reserved and never delivers) and the address moves to
//! `users.released_email`, where it stays for audit. A record arriving after the deletion never
//! reactivates the user (its address goes to `released_email`); one for an identity deleted before
//! it was seen creates the user inactive. So a person who deleted their account can sign up again
//! with the same address: the new Clerk user is a new, active user; the old row is never merged into
//! it nor reactivated. The address is released at deletion rather than when a new user claims it, so
//! that no later write has to decide whether a holder is gone, and the `users_email_unique` constraint
//! keeps meaning "one live user per address".
//!
//! # Concurrency
//!
//! Every write of a Clerk identity (events, batch rows, tombstones) runs in a transaction that first
//! takes that identity's transaction-scoped advisory lock, so the writers of one identity run one
//! after the other and each sees what the previous one committed: a `user.deleted` racing the
//! `user.created` of the same user always ends with the user inactive. Locks are per identity, not per
//! table: writers of other identities never wait. A backfill applies [`DEFAULT_BATCH_SIZE`] records a
//! transaction ([`apply_batch`] splits longer input), taking the locks of those identities, in a fixed
//! order, for that transaction: a webhook for one of them waits until that chunk commits (tens of
//! milliseconds for 2 000 users here), never for the whole backfill. Each transaction holds one lock
//! per identity in PostgreSQL's lock table (`max_locks_per_transaction` × `max_connections` entries
//! in all), which is why chunks stay small. Inside your own transaction the locks are held until you
//! commit.
//!
//! # Records that cannot be applied
//!
//! Every value is checked before SQL runs (lengths, times PostgreSQL can store): a bad one is
//! [`Error::InvalidInput`] for a webhook, a rejected record for a batch. An
//! address held by another user is [`Error::EmailTaken`]. A record the
//! database still refuses for its values is rejected alone; a lost connection, a deadlock or a server
//! shutting down fails the call, which is safe to repeat.
//!
//! # Examples
//!
//! ```no_run
//! # async fn webhook(pool: &sqlx::PgPool, body: &str) -> Result<(), livermore_db::Error> {
//! use livermore_db::clerk::{ClerkEvent, apply_event};
//!
//! let event: ClerkEvent = serde_json::from_str(body).map_err(|e| livermore_db::Error::InvalidInput {
//!     field: "clerk event",
//!     reason: e.to_string(),
//! })?;
//! let applied = apply_event(pool, &event).await?;
//! println!("{}: {:?}", event.event_type, applied.outcome);
//! if let Some(note) = &applied.role_note {
//!     println!("role revoked or kept: {note}");
//! }
//! # Ok(())
//! # }
//! ```

mod apply;
mod backfill;
mod payload;
mod profile;
#[cfg(feature = "clerk-webhook")]
pub mod webhook;

use std::future::Future;

use serde::Deserialize;
use sqlx::{Acquire, PgConnection, Postgres};

pub use apply::{Applied, Outcome};
pub use backfill::{BackfillReport, DEFAULT_BATCH_SIZE, RecordNote, apply_batch, apply_events};
pub use payload::{ClerkDeleted, ClerkEmailAddress, ClerkEvent, ClerkUser, ClerkVerification};
pub use profile::{ClerkProfile, MetadataRole};
#[cfg(feature = "clerk-webhook")]
pub use webhook::{
    DEFAULT_MAX_BODY_BYTES, DEFAULT_TOLERANCE, MAX_SIGNATURE_HEADER_BYTES, VerifiedEvent,
    WebhookError, WebhookHeaders, WebhookVerifier,
};

use crate::error::Error;
use crate::input::Subject;
use apply::{Change, apply_records};

/// The provider name Clerk identities are stored under.
pub const PROVIDER: &str = "clerk";

/// What an event asks for: a change to apply, or nothing (an event type this sync ignores).
fn change_of(event: &ClerkEvent) -> Result<Option<Change>, Error> {
    // serde's own messages quote the offending value: described without it.
    let bad_payload = |e: serde_json::Error| Error::InvalidInput {
        field: "clerk event data",
        reason: payload::describe_json_error(&e),
    };
    match event.event_type.as_str() {
        "user.created" | "user.updated" => {
            let user = ClerkUser::deserialize(&event.data).map_err(bad_payload)?;
            Ok(Some(Change::Profile(user.to_profile()?)))
        }
        "user.deleted" => {
            let deleted = ClerkDeleted::deserialize(&event.data).map_err(bad_payload)?;
            let at = match event.timestamp {
                Some(ms) => profile::millis("timestamp", ms)?,
                None => chrono::Utc::now(),
            };
            Ok(Some(Change::Deletion {
                subject: Subject::parse(&deleted.id)?,
                at,
            }))
        }
        _ => Ok(None),
    }
}

/// Applies one record on its own and returns its result.
async fn apply_one(conn: &mut PgConnection, change: Change) -> Result<Applied, Error> {
    let mut results = apply_records(conn, vec![(0, change)]).await?;
    match results.pop() {
        Some((_, result)) => result,
        None => unreachable!("one record gives one result"),
    }
}

/// Applies one webhook event; see the [module docs](self) for the rules. Bad payload values are
/// [`Error::InvalidInput`], an address held by another user [`Error::EmailTaken`]; an event type other
/// than `user.*` is [`Outcome::Ignored`].
#[expect(
    clippy::manual_async_fn,
    reason = "the `Send` bound in the signature lets callers spawn it (an `async fn` generic over `Acquire` is not provably `Send`)"
)]
pub fn apply_event<'a, 'c, A>(
    conn: A,
    event: &'a ClerkEvent,
) -> impl Future<Output = Result<Applied, Error>> + Send + 'a
where
    A: Acquire<'c, Database = Postgres> + Send + 'a,
{
    async move {
        let Some(change) = change_of(event)? else {
            return Ok(Applied {
                outcome: Outcome::Ignored(event.event_type.clone()),
                role_note: None,
            });
        };
        let mut conn = conn.acquire().await?;
        apply_one(&mut conn, change).await
    }
}

/// Applies a Clerk user's profile (a `user.created`/`user.updated` event, or one backfilled user); see
/// the [module docs](self) for the rules.
#[expect(
    clippy::manual_async_fn,
    reason = "the `Send` bound in the signature lets callers spawn it (an `async fn` generic over `Acquire` is not provably `Send`)"
)]
pub fn apply_user<'a, 'c, A>(
    conn: A,
    profile: &'a ClerkProfile,
) -> impl Future<Output = Result<Applied, Error>> + Send + 'a
where
    A: Acquire<'c, Database = Postgres> + Send + 'a,
{
    async move {
        let mut conn = conn.acquire().await?;
        apply_one(&mut conn, Change::Profile(profile.clone())).await
    }
}
