//! Many records at once: a backfill of Clerk's user list, or a queue of webhook events. The same
//! statements as one event, over arrays.

use std::future::Future;

use sqlx::{Acquire, PgConnection, Postgres};

use super::apply::{Change, Outcome, apply_records};
use super::change_of;
use super::payload::{ClerkEvent, ClerkUser};
use crate::error::Error;

/// Something a batch says about one record: why it was rejected or not created, or why its role was
/// not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordNote {
    /// The record's position in the input (the caller's numbering).
    pub position: usize,
    /// Why.
    pub reason: String,
}

/// What a batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackfillReport {
    /// Users created.
    pub created: usize,
    /// Users whose profile or role was updated.
    pub updated: usize,
    /// Records that changed nothing: no newer than what is stored (a record repeated in the input
    /// included), or an event type the sync ignores.
    pub unchanged: usize,
    /// `user.deleted` records applied (the user deactivated, or recorded as deleted before seen).
    pub deactivated: usize,
    /// New users not created because none of their addresses is verified.
    pub not_created: Vec<RecordNote>,
    /// Records not applied, with the reason.
    pub rejected: Vec<RecordNote>,
    /// Records whose `public_metadata.role` was not a valid role, and why.
    pub role_notes: Vec<RecordNote>,
}

impl BackfillReport {
    /// Adds another batch's counts to this one.
    pub fn merge(&mut self, other: BackfillReport) {
        self.created += other.created;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.deactivated += other.deactivated;
        self.not_created.extend(other.not_created);
        self.rejected.extend(other.rejected);
        self.role_notes.extend(other.role_notes);
    }

    /// Every record counted once.
    pub fn total(&self) -> usize {
        self.created
            + self.updated
            + self.unchanged
            + self.deactivated
            + self.not_created.len()
            + self.rejected.len()
    }

    fn note(list: &mut Vec<RecordNote>, position: usize, reason: String) {
        list.push(RecordNote { position, reason });
    }
}

/// The most records applied in one transaction (and so the most identity locks it holds); longer
/// input is applied in chunks of this many, one transaction each.
pub const DEFAULT_BATCH_SIZE: usize = 2_000;

/// Applies records in chunks of [`DEFAULT_BATCH_SIZE`], each in its own transaction (a savepoint in
/// a caller's), and reports every record.
async fn apply_all(
    conn: &mut PgConnection,
    records: Vec<(usize, Result<Option<Change>, Error>)>,
) -> Result<BackfillReport, Error> {
    let mut report = BackfillReport::default();
    let mut changes = Vec::new();
    for (position, record) in records {
        match record {
            Ok(Some(change)) => changes.push((position, change)),
            Ok(None) => report.unchanged += 1,
            Err(e) => BackfillReport::note(&mut report.rejected, position, e.to_string()),
        }
    }
    while !changes.is_empty() {
        let rest = changes.split_off(changes.len().min(DEFAULT_BATCH_SIZE));
        for (position, result) in apply_records(conn, changes).await? {
            match result {
                Ok(applied) => {
                    if let Some(note) = applied.role_note {
                        BackfillReport::note(&mut report.role_notes, position, note);
                    }
                    match applied.outcome {
                        Outcome::Created(_) => report.created += 1,
                        Outcome::Updated(_) => report.updated += 1,
                        Outcome::Stale(_) | Outcome::Ignored(_) => report.unchanged += 1,
                        Outcome::Deactivated(_)
                        | Outcome::AlreadyDeactivated(_)
                        | Outcome::DeletedBeforeSeen => report.deactivated += 1,
                        Outcome::NoVerifiedEmail => BackfillReport::note(
                            &mut report.not_created,
                            position,
                            "no verified email address".to_owned(),
                        ),
                    }
                }
                Err(e) => BackfillReport::note(&mut report.rejected, position, e.to_string()),
            }
        }
        changes = rest;
    }
    report.rejected.sort_by_key(|r| r.position);
    Ok(report)
}

/// Applies a batch of Clerk users (each with its position in the input, for the report) with the
/// rules of [`apply_user`](super::apply_user), in a few statements over arrays instead of one per
/// user: the result is the same as applying them one by one in input order. Records that fail
/// validation, whose address another user holds, or that the database refuses for their values are
/// rejected with the reason, without stopping the others.
#[expect(
    clippy::manual_async_fn,
    reason = "the `Send` bound in the signature lets callers spawn it (an `async fn` generic over `Acquire` is not provably `Send`)"
)]
pub fn apply_batch<'a, 'c, A>(
    conn: A,
    batch: &'a [(usize, ClerkUser)],
) -> impl Future<Output = Result<BackfillReport, Error>> + Send + 'a
where
    A: Acquire<'c, Database = Postgres> + Send + 'a,
{
    async move {
        let records = batch
            .iter()
            .map(|(position, user)| {
                let change = user.to_profile().map(|p| Some(Change::Profile(p)));
                (*position, change)
            })
            .collect();
        let mut conn = conn.acquire().await?;
        apply_all(&mut conn, records).await
    }
}

/// Applies a batch of webhook events (a queue drained at once, say), deletions included, with the
/// rules of [`apply_event`](super::apply_event): the result is the same as applying them one by one
/// in input order. Bad events are rejected with the reason, without stopping the others.
#[expect(
    clippy::manual_async_fn,
    reason = "the `Send` bound in the signature lets callers spawn it (an `async fn` generic over `Acquire` is not provably `Send`)"
)]
pub fn apply_events<'a, 'c, A>(
    conn: A,
    events: &'a [(usize, ClerkEvent)],
) -> impl Future<Output = Result<BackfillReport, Error>> + Send + 'a
where
    A: Acquire<'c, Database = Postgres> + Send + 'a,
{
    async move {
        let records = events
            .iter()
            .map(|(position, event)| (*position, change_of(event)))
            .collect();
        let mut conn = conn.acquire().await?;
        apply_all(&mut conn, records).await
    }
}
