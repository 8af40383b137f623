//! Keeping `users` in step with Clerk: webhook events (`user.created`, `user.updated`, `user.deleted`)
//! and bulk backfills of Clerk's user list.
//!
//! Clerk delivers webhooks at least once, retries for days and does not keep order, so applying is
//! idempotent and order-proof:
//!
//! - A profile is applied only when its `updated_at` is newer than the one last applied
//!   (`users.identity_updated_at`); a replay or an older event changes nothing ([`Outcome::Stale`]).
//!   The role has a version of its own (`users.identity_role_updated_at`), set only by events that
//!   carry a valid role, so an older event's valid role is not lost behind a newer event without one.
//! - `user.deleted` deactivates the user (`is_active = false`), keeps the row and its identity, and
//!   records a tombstone, so a `created`/`updated` event arriving later never brings the user back
//!   (one that arrives first creates the user inactive).
//! - `last_login_at` only moves forward.
//!
//! So delivering any set of events in any order, any number of times, ends in the same row as
//! delivering them once in order.
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
//!     println!("role kept: {note}");
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;
use sqlx::{Acquire, Connection, PgConnection, Postgres};

use crate::error::{Error, shown};
use crate::input::{DisplayName, Email, PictureUrl, Subject};
use crate::role::Role;
use crate::users::{UserId, UsernameRetries, attempt, free_usernames, username_from_email};

/// The provider name Clerk identities are stored under.
pub const PROVIDER: &str = "clerk";

/// A webhook's envelope: `{"type": "user.updated", "data": {...}, "timestamp": 1700000000000, ...}`.
/// Unknown fields are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct ClerkEvent {
    /// `user.created`, `user.updated`, `user.deleted`, or another type (ignored).
    #[serde(rename = "type")]
    pub event_type: String,
    /// The payload: a [`ClerkUser`], or for `user.deleted` a [`ClerkDeleted`].
    pub data: serde_json::Value,
    /// When Clerk emitted the event, in milliseconds since the epoch.
    #[serde(default)]
    pub timestamp: Option<i64>,
}

/// One email address of a Clerk user.
#[derive(Debug, Clone, Deserialize)]
pub struct ClerkEmailAddress {
    /// Clerk's id of the address (`idn_…`).
    pub id: String,
    /// The address.
    pub email_address: String,
}

/// An external account (Google, GitHub, …) linked to a Clerk user. Only read, never required.
#[derive(Debug, Clone, Deserialize)]
pub struct ClerkExternalAccount {
    /// Clerk's id of the account.
    #[serde(default)]
    pub id: Option<String>,
    /// The provider, e.g. `oauth_google`.
    #[serde(default)]
    pub provider: Option<String>,
    /// The account's email address.
    #[serde(default)]
    pub email_address: Option<String>,
}

/// Clerk's user object, as webhooks and the user list deliver it. Unknown fields are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct ClerkUser {
    /// Clerk's user id, `user_…`: the identity's subject.
    pub id: String,
    /// Every address of the user.
    #[serde(default)]
    pub email_addresses: Vec<ClerkEmailAddress>,
    /// Which of `email_addresses` is primary.
    #[serde(default)]
    pub primary_email_address_id: Option<String>,
    /// Given name.
    #[serde(default)]
    pub first_name: Option<String>,
    /// Family name.
    #[serde(default)]
    pub last_name: Option<String>,
    /// Clerk username, if the instance uses them.
    #[serde(default)]
    pub username: Option<String>,
    /// Profile picture.
    #[serde(default)]
    pub image_url: Option<String>,
    /// Public metadata; its `role`, when a valid [`Role`], sets the user's role.
    #[serde(default)]
    pub public_metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Last sign-in, milliseconds since the epoch.
    #[serde(default)]
    pub last_sign_in_at: Option<i64>,
    /// Last change at Clerk, milliseconds since the epoch: orders the events.
    pub updated_at: i64,
    /// Linked external accounts.
    #[serde(default)]
    pub external_accounts: Vec<ClerkExternalAccount>,
}

/// A `user.deleted` event's data: `{"id": "user_…", "object": "user", "deleted": true}`.
#[derive(Debug, Clone, Deserialize)]
pub struct ClerkDeleted {
    /// Clerk's user id.
    pub id: String,
    /// `user`.
    #[serde(default)]
    pub object: Option<String>,
    /// `true`.
    #[serde(default)]
    pub deleted: bool,
}

/// What `public_metadata.role` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataRole {
    /// A valid role: it is applied.
    Valid(Role),
    /// No role in the metadata: the stored role is kept (`user` for a new user).
    Absent,
    /// Something that is not a role: the stored role is kept, and this says why.
    Invalid(String),
}

/// A Clerk user mapped onto the `users` columns, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClerkProfile {
    /// Clerk's user id.
    pub subject: Subject,
    /// The primary address (by id), else the first.
    pub email: Email,
    /// First and last name joined, else the Clerk username, else none; cut to 100 characters.
    pub display_name: Option<DisplayName>,
    /// `image_url`.
    pub picture_url: Option<PictureUrl>,
    /// `public_metadata.role`.
    pub role: MetadataRole,
    /// `last_sign_in_at`, UTC.
    pub last_sign_in_at: Option<DateTime<Utc>>,
    /// `updated_at`, UTC.
    pub updated_at: DateTime<Utc>,
}

fn millis(field: &'static str, ms: i64) -> Result<DateTime<Utc>, Error> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| Error::InvalidInput {
        field,
        reason: format!("{ms} is not a time in milliseconds since the epoch"),
    })
}

impl ClerkUser {
    /// Maps the user onto the `users` columns. A user with no email address at all is
    /// [`Error::InvalidInput`] (`email`), as is any field that does not fit its column.
    pub fn to_profile(&self) -> Result<ClerkProfile, Error> {
        let primary = self
            .primary_email_address_id
            .as_deref()
            .and_then(|id| self.email_addresses.iter().find(|a| a.id == id))
            .or(self.email_addresses.first())
            .ok_or_else(|| Error::InvalidInput {
                field: "email",
                reason: format!("Clerk user {} has no email address", shown(&self.id, 64)),
            })?;
        let full_name = [self.first_name.as_deref(), self.last_name.as_deref()]
            .into_iter()
            .flatten()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let name = Some(full_name)
            .filter(|n| !n.is_empty())
            .or_else(|| self.username.clone().filter(|u| !u.trim().is_empty()));
        let role = match self.public_metadata.as_ref().and_then(|m| m.get("role")) {
            None | Some(serde_json::Value::Null) => MetadataRole::Absent,
            Some(serde_json::Value::String(s)) => match Role::parse(s) {
                Ok(role) => MetadataRole::Valid(role),
                Err(e) => MetadataRole::Invalid(e.to_string()),
            },
            Some(other) => MetadataRole::Invalid(format!(
                "public_metadata.role is not a string: {}",
                shown(&other.to_string(), 64)
            )),
        };
        Ok(ClerkProfile {
            subject: Subject::parse(&self.id)?,
            email: Email::parse(&primary.email_address)?,
            display_name: name.as_deref().map(DisplayName::parse).transpose()?,
            picture_url: self
                .image_url
                .as_deref()
                .filter(|u| !u.trim().is_empty())
                .map(PictureUrl::parse)
                .transpose()?,
            role,
            last_sign_in_at: self
                .last_sign_in_at
                .map(|ms| millis("last_sign_in_at", ms))
                .transpose()?,
            updated_at: millis("updated_at", self.updated_at)?,
        })
    }
}

impl ClerkProfile {
    fn valid_role(&self) -> Option<Role> {
        match self.role {
            MetadataRole::Valid(role) => Some(role),
            _ => None,
        }
    }

    fn role_note(&self) -> Option<String> {
        match &self.role {
            MetadataRole::Invalid(why) => Some(why.clone()),
            _ => None,
        }
    }
}

/// What applying an event did, for the webhook handler's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new user was created (inactive if Clerk had already deleted it).
    Created(UserId),
    /// The user's profile was updated.
    Updated(UserId),
    /// Nothing changed: the event is no newer than what is stored (a replay, or out of order).
    Stale(UserId),
    /// `user.deleted`: the user was deactivated.
    Deactivated(UserId),
    /// `user.deleted` for a user already deactivated: nothing changed.
    AlreadyDeactivated(UserId),
    /// `user.deleted` for a user not seen yet: recorded, so a late `created` creates it inactive.
    DeletedBeforeSeen,
    /// An event type this sync does not handle.
    Ignored(String),
}

/// The result of [`apply_event`] / [`apply_user`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// What happened.
    pub outcome: Outcome,
    /// Why the role in `public_metadata` was not applied, when it was not a valid role.
    pub role_note: Option<String>,
}

fn bad_payload(e: serde_json::Error) -> Error {
    Error::InvalidInput {
        field: "clerk event data",
        reason: e.to_string(),
    }
}

/// Applies one webhook event; see the [module docs](self) for the rules.
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
        let mut conn = conn.acquire().await?;
        apply_event_on(&mut conn, event).await
    }
}

async fn apply_event_on(conn: &mut PgConnection, event: &ClerkEvent) -> Result<Applied, Error> {
    match event.event_type.as_str() {
        "user.created" | "user.updated" => {
            let user = ClerkUser::deserialize(&event.data).map_err(bad_payload)?;
            apply_user_on(conn, &user.to_profile()?).await
        }
        "user.deleted" => {
            let deleted = ClerkDeleted::deserialize(&event.data).map_err(bad_payload)?;
            let at = match event.timestamp {
                Some(ms) => millis("timestamp", ms)?,
                None => Utc::now(),
            };
            let outcome = apply_deletion(conn, &Subject::parse(&deleted.id)?, at).await?;
            Ok(Applied {
                outcome,
                role_note: None,
            })
        }
        other => Ok(Applied {
            outcome: Outcome::Ignored(other.to_owned()),
            role_note: None,
        }),
    }
}

/// Applies a Clerk user's profile (a `user.created`/`user.updated` event, or one backfilled user):
/// creates the user, updates it when the profile is newer than the one stored, or changes nothing.
/// An email address held by another user is [`Error::EmailTaken`].
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
        apply_user_on(&mut conn, profile).await
    }
}

async fn apply_user_on(conn: &mut PgConnection, profile: &ClerkProfile) -> Result<Applied, Error> {
    let mut retries = UsernameRetries::new(&profile.email);
    let applied = loop {
        let result = attempt!(&mut *conn, |c| upsert_profile(
            c,
            profile,
            retries.username()
        )
        .await);
        match result {
            Ok(applied) => break applied,
            Err(e) => retries.after(conn, e).await?,
        }
    };
    let outcome = match applied {
        Some((id, true)) => Outcome::Created(id),
        Some((id, false)) => Outcome::Updated(id),
        None => {
            let id = sqlx::query_scalar!(
                r#"SELECT id FROM users
                   WHERE identity_provider = 'clerk' AND identity_sub = $1"#,
                profile.subject.as_str()
            )
            .fetch_one(&mut *conn)
            .await?;
            Outcome::Stale(id)
        }
    };
    Ok(Applied {
        outcome,
        role_note: profile.role_note(),
    })
}

/// The single-user upsert: `Some((id, created))` when it wrote, `None` when the stored profile is as
/// new or newer.
async fn upsert_profile(
    conn: &mut PgConnection,
    p: &ClerkProfile,
    username: &str,
) -> Result<Option<(UserId, bool)>, sqlx::Error> {
    let row = sqlx::query!(
        r#"INSERT INTO users (username, email, identity_provider, identity_sub, display_name,
                              identity_picture_url, role, last_login_at, identity_updated_at,
                              identity_role_updated_at, is_active)
           VALUES ($1, $2, 'clerk', $3::varchar, $4, $5, coalesce($6, 'user'), $7, $8,
                   CASE WHEN $6 IS NOT NULL THEN $8::timestamp END,
                   NOT EXISTS (SELECT 1 FROM identity_tombstones t
                               WHERE t.identity_provider = 'clerk' AND t.identity_sub = $3::varchar))
           ON CONFLICT (identity_provider, identity_sub) WHERE identity_provider IS NOT NULL
           DO UPDATE SET
               -- The profile, when this event is newer than the profile stored.
               email = CASE WHEN users.identity_updated_at IS NULL
                              OR users.identity_updated_at < EXCLUDED.identity_updated_at
                            THEN EXCLUDED.email ELSE users.email END,
               display_name = CASE WHEN users.identity_updated_at IS NULL
                                     OR users.identity_updated_at < EXCLUDED.identity_updated_at
                                   THEN EXCLUDED.display_name ELSE users.display_name END,
               identity_picture_url = CASE WHEN users.identity_updated_at IS NULL
                                             OR users.identity_updated_at < EXCLUDED.identity_updated_at
                                           THEN EXCLUDED.identity_picture_url
                                           ELSE users.identity_picture_url END,
               identity_updated_at = greatest(users.identity_updated_at, EXCLUDED.identity_updated_at),
               -- The role, when this event carries a valid one newer than the role stored.
               role = CASE WHEN EXCLUDED.identity_role_updated_at IS NOT NULL
                             AND (users.identity_role_updated_at IS NULL
                                  OR users.identity_role_updated_at < EXCLUDED.identity_role_updated_at)
                           THEN EXCLUDED.role ELSE users.role END,
               identity_role_updated_at = greatest(users.identity_role_updated_at,
                                                   EXCLUDED.identity_role_updated_at),
               last_login_at = greatest(users.last_login_at, EXCLUDED.last_login_at),
               updated_at = now() AT TIME ZONE 'UTC'
           WHERE users.identity_updated_at IS NULL
              OR users.identity_updated_at < EXCLUDED.identity_updated_at
              OR (EXCLUDED.identity_role_updated_at IS NOT NULL
                  AND (users.identity_role_updated_at IS NULL
                       OR users.identity_role_updated_at < EXCLUDED.identity_role_updated_at))
           RETURNING id, (xmax = 0) AS "created!""#,
        username,
        p.email.as_str(),
        p.subject.as_str(),
        p.display_name.as_ref().map(|d| d.as_str()),
        p.picture_url.as_ref().map(|u| u.as_str()),
        p.valid_role().map(Role::as_str),
        p.last_sign_in_at.map(|t| t.naive_utc()),
        p.updated_at.naive_utc(),
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (r.id, r.created)))
}

/// Applies `user.deleted`: records the tombstone and deactivates the user if there is one.
async fn apply_deletion(
    conn: &mut PgConnection,
    subject: &Subject,
    at: DateTime<Utc>,
) -> Result<Outcome, Error> {
    let row = sqlx::query!(
        r#"WITH tombstone AS (
               INSERT INTO identity_tombstones (identity_provider, identity_sub, deleted_at)
               VALUES ('clerk', $1, $2)
               ON CONFLICT (identity_provider, identity_sub)
               DO UPDATE SET deleted_at = least(identity_tombstones.deleted_at, EXCLUDED.deleted_at)
           ),
           deactivated AS (
               UPDATE users SET is_active = false, updated_at = now() AT TIME ZONE 'UTC'
               WHERE identity_provider = 'clerk' AND identity_sub = $1 AND is_active
               RETURNING id
           )
           SELECT (SELECT id FROM deactivated) AS "deactivated: UserId",
                  (SELECT id FROM users WHERE identity_provider = 'clerk' AND identity_sub = $1)
                      AS "existing: UserId""#,
        subject.as_str(),
        at.naive_utc(),
    )
    .fetch_one(conn)
    .await?;
    Ok(match (row.deactivated, row.existing) {
        (Some(id), _) => Outcome::Deactivated(id),
        (None, Some(id)) => Outcome::AlreadyDeactivated(id),
        (None, None) => Outcome::DeletedBeforeSeen,
    })
}

/// Something a backfill says about one record: why it was rejected, or why its role was kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordNote {
    /// The record's position in the input (the caller's numbering).
    pub position: usize,
    /// Why.
    pub reason: String,
}

/// What a backfill did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackfillReport {
    /// Users created.
    pub created: usize,
    /// Users whose profile was updated.
    pub updated: usize,
    /// Users already as new or newer (including a record repeated in the input).
    pub unchanged: usize,
    /// Records not applied, with the reason.
    pub rejected: Vec<RecordNote>,
    /// Records applied with their stored role kept, and why.
    pub role_notes: Vec<RecordNote>,
}

impl BackfillReport {
    /// Adds another batch's counts to this one.
    pub fn merge(&mut self, other: BackfillReport) {
        self.created += other.created;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.rejected.extend(other.rejected);
        self.role_notes.extend(other.role_notes);
    }

    /// Every record counted once.
    pub fn total(&self) -> usize {
        self.created + self.updated + self.unchanged + self.rejected.len()
    }

    fn count(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Created(_) => self.created += 1,
            Outcome::Updated(_) => self.updated += 1,
            _ => self.unchanged += 1,
        }
    }
}

/// The default number of users a backfill applies per statement.
pub const DEFAULT_BATCH_SIZE: usize = 10_000;

/// Applies one batch of Clerk users (each with its position in the input, for the report) with the
/// same rules as [`apply_user`], in a few statements over `UNNEST`ed arrays instead of one per user.
///
/// Records that fail validation are rejected with the reason; a record whose email belongs to another
/// user is rejected as [`Error::EmailTaken`] would say; neither stops the others. Records that the bulk
/// statements cannot place (a username or email collision) are applied one by one.
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
        let mut conn = conn.acquire().await?;
        apply_batch_on(&mut conn, batch).await
    }
}

async fn apply_batch_on(
    conn: &mut PgConnection,
    batch: &[(usize, ClerkUser)],
) -> Result<BackfillReport, Error> {
    let mut report = BackfillReport::default();

    // Validate, and keep the newest record per subject (the others change nothing, as they would
    // delivered one by one after it).
    let mut newest: HashMap<String, (usize, ClerkProfile)> = HashMap::new();
    for (position, user) in batch {
        let profile = match user.to_profile() {
            Ok(p) => p,
            Err(e) => {
                report.rejected.push(RecordNote {
                    position: *position,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        if let Some(note) = profile.role_note() {
            report.role_notes.push(RecordNote {
                position: *position,
                reason: note,
            });
        }
        let key = profile.subject.as_str().to_owned();
        match newest.get(&key) {
            Some((_, kept)) if kept.updated_at >= profile.updated_at => report.unchanged += 1,
            Some(_) => {
                report.unchanged += 1;
                newest.insert(key, (*position, profile));
            }
            None => {
                newest.insert(key, (*position, profile));
            }
        }
    }
    let mut profiles: Vec<(usize, ClerkProfile)> = newest.into_values().collect();
    profiles.sort_by_key(|(position, _)| *position);
    if profiles.is_empty() {
        return Ok(report);
    }

    let mut tx = Connection::begin(&mut *conn).await?;
    // Which are new, which are stale, which need an update.
    let subjects: Vec<&str> = profiles.iter().map(|(_, p)| p.subject.as_str()).collect();
    // `= ANY` lets the planner probe the identity index once per subject.
    let known = sqlx::query!(
        r#"SELECT identity_sub AS "sub!", identity_updated_at, identity_role_updated_at FROM users
           WHERE identity_provider = 'clerk' AND identity_sub = ANY($1::varchar[])"#,
        &subjects as &[&str],
    )
    .fetch_all(&mut *tx)
    .await?;
    let known: HashMap<String, (Option<NaiveDateTime>, Option<NaiveDateTime>)> = known
        .into_iter()
        .map(|r| (r.sub, (r.identity_updated_at, r.identity_role_updated_at)))
        .collect();

    let mut to_update = Vec::new();
    let mut to_insert = Vec::new();
    for (position, profile) in profiles {
        let at = profile.updated_at.naive_utc();
        let newer = |stored: &Option<NaiveDateTime>| stored.is_none_or(|s| s < at);
        // Something to apply: a newer profile, or a valid role newer than the stored role.
        let applies = |(profile_at, role_at): &(Option<NaiveDateTime>, Option<NaiveDateTime>)| {
            newer(profile_at) || (profile.valid_role().is_some() && newer(role_at))
        };
        match known.get(profile.subject.as_str()) {
            Some(stored) if !applies(stored) => report.unchanged += 1,
            Some(_) => to_update.push((position, profile)),
            None => to_insert.push((position, profile)),
        }
    }

    let mut leftovers = Vec::new();
    let updated = bulk_update(&mut tx, &to_update).await?;
    for (position, profile) in to_update {
        if updated.contains(profile.subject.as_str()) {
            report.updated += 1;
        } else {
            leftovers.push((position, profile));
        }
    }
    let inserted = bulk_insert(&mut tx, &to_insert).await?;
    for (position, profile) in to_insert {
        if inserted.contains(profile.subject.as_str()) {
            report.created += 1;
        } else {
            leftovers.push((position, profile));
        }
    }

    // One by one, each in a savepoint: what the bulk statements left (collisions, races).
    for (position, profile) in leftovers {
        match apply_user_on(&mut tx, &profile).await {
            Ok(applied) => report.count(&applied.outcome),
            Err(e @ (Error::EmailTaken { .. } | Error::UsernameExhausted { .. })) => {
                report.rejected.push(RecordNote {
                    position,
                    reason: e.to_string(),
                });
            }
            Err(e) => return Err(e),
        }
    }
    tx.commit().await?;
    report.rejected.sort_by_key(|r| r.position);
    Ok(report)
}

type Subjects = std::collections::HashSet<String>;

/// Columns of a batch as arrays, for `UNNEST`.
struct Columns<'p> {
    subject: Vec<&'p str>,
    email: Vec<&'p str>,
    display_name: Vec<Option<&'p str>>,
    picture_url: Vec<Option<&'p str>>,
    role: Vec<Option<&'static str>>,
    last_login_at: Vec<Option<NaiveDateTime>>,
    updated_at: Vec<NaiveDateTime>,
}

impl<'p> Columns<'p> {
    fn of(profiles: &[&'p ClerkProfile]) -> Self {
        let ps = || profiles.iter().copied();
        Columns {
            subject: ps().map(|p| p.subject.as_str()).collect(),
            email: ps().map(|p| p.email.as_str()).collect(),
            display_name: ps()
                .map(|p| p.display_name.as_ref().map(|d| d.as_str()))
                .collect(),
            picture_url: ps()
                .map(|p| p.picture_url.as_ref().map(|u| u.as_str()))
                .collect(),
            role: ps().map(|p| p.valid_role().map(Role::as_str)).collect(),
            last_login_at: ps()
                .map(|p| p.last_sign_in_at.map(|t| t.naive_utc()))
                .collect(),
            updated_at: ps().map(|p| p.updated_at.naive_utc()).collect(),
        }
    }
}

/// Updates the known users whose profile is newer, skipping any whose new email another user holds.
/// A unique violation anyway (two users of the batch swapping addresses) rolls the statement back and
/// leaves them all to the one-by-one path.
async fn bulk_update(
    conn: &mut PgConnection,
    profiles: &[(usize, ClerkProfile)],
) -> Result<Subjects, Error> {
    if profiles.is_empty() {
        return Ok(Subjects::new());
    }
    let all: Vec<&ClerkProfile> = profiles.iter().map(|(_, p)| p).collect();
    let c = Columns::of(&all);
    let mut savepoint = Connection::begin(&mut *conn).await?;
    let result = sqlx::query_scalar!(
        r#"UPDATE users u
           SET email = CASE WHEN u.identity_updated_at IS NULL OR u.identity_updated_at < i.updated_at
                            THEN i.email ELSE u.email END,
               display_name = CASE WHEN u.identity_updated_at IS NULL OR u.identity_updated_at < i.updated_at
                                   THEN i.display_name ELSE u.display_name END,
               identity_picture_url = CASE WHEN u.identity_updated_at IS NULL
                                             OR u.identity_updated_at < i.updated_at
                                           THEN i.picture_url ELSE u.identity_picture_url END,
               identity_updated_at = greatest(u.identity_updated_at, i.updated_at),
               role = CASE WHEN i.role IS NOT NULL
                             AND (u.identity_role_updated_at IS NULL OR u.identity_role_updated_at < i.updated_at)
                           THEN i.role ELSE u.role END,
               identity_role_updated_at = CASE WHEN i.role IS NOT NULL
                                                 AND (u.identity_role_updated_at IS NULL
                                                      OR u.identity_role_updated_at < i.updated_at)
                                               THEN i.updated_at ELSE u.identity_role_updated_at END,
               last_login_at = greatest(u.last_login_at, i.last_login_at),
               updated_at = now() AT TIME ZONE 'UTC'
           FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::text[], $5::varchar[],
                       $6::timestamp[], $7::timestamp[])
                AS i(sub, email, display_name, picture_url, role, last_login_at, updated_at)
           WHERE u.identity_provider = 'clerk' AND u.identity_sub = i.sub
             AND (u.identity_updated_at IS NULL OR u.identity_updated_at < i.updated_at
                  OR (i.role IS NOT NULL
                      AND (u.identity_role_updated_at IS NULL OR u.identity_role_updated_at < i.updated_at)))
             AND (u.identity_updated_at >= i.updated_at
                  OR NOT EXISTS (SELECT 1 FROM users o WHERE o.email = i.email AND o.id <> u.id))
           RETURNING u.identity_sub AS "sub!""#,
        &c.subject as &[&str],
        &c.email as &[&str],
        &c.display_name as &[Option<&str>],
        &c.picture_url as &[Option<&str>],
        &c.role as &[Option<&str>],
        &c.last_login_at as &[Option<NaiveDateTime>],
        &c.updated_at,
    )
    .fetch_all(&mut *savepoint)
    .await;
    settle(savepoint, result).await
}

/// Inserts the new users in one plain `INSERT … SELECT FROM unnest(…)`. Those whose email is already
/// stored, or repeats an earlier one of the batch, are left out beforehand (the one-by-one path says
/// why); should the statement still hit a unique violation (a user created meanwhile), it is rolled
/// back and every record goes the one-by-one way.
async fn bulk_insert(
    conn: &mut PgConnection,
    profiles: &[(usize, ClerkProfile)],
) -> Result<Subjects, Error> {
    if profiles.is_empty() {
        return Ok(Subjects::new());
    }
    // Stored emails, and tombstones (a user Clerk deleted before we saw it is created inactive), in one
    // round trip of index look-ups.
    let emails: Vec<&str> = profiles.iter().map(|(_, p)| p.email.as_str()).collect();
    let subjects: Vec<&str> = profiles.iter().map(|(_, p)| p.subject.as_str()).collect();
    let found = sqlx::query!(
        r#"SELECT true AS "is_email!", email AS "value!" FROM users WHERE email = ANY($1::varchar[])
           UNION ALL
           SELECT false, identity_sub FROM identity_tombstones
           WHERE identity_provider = 'clerk' AND identity_sub = ANY($2::varchar[])"#,
        &emails as &[&str],
        &subjects as &[&str],
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut stored = Subjects::new();
    let mut deleted = Subjects::new();
    for row in found {
        if row.is_email {
            stored.insert(row.value);
        } else {
            deleted.insert(row.value);
        }
    }
    let mut seen = std::collections::HashSet::new();
    let profiles: Vec<&ClerkProfile> = profiles
        .iter()
        .map(|(_, p)| p)
        .filter(|p| !stored.contains(p.email.as_str()) && seen.insert(p.email.as_str()))
        .collect();
    if profiles.is_empty() {
        return Ok(Subjects::new());
    }
    let c = Columns::of(&profiles);
    let active: Vec<bool> = profiles
        .iter()
        .map(|p| !deleted.contains(p.subject.as_str()))
        .collect();
    // Usernames from the emails, free among the stored ones and unique within the batch; a user
    // created meanwhile can still take one, and that record falls through to the one-by-one path.
    let bases: Vec<String> = profiles
        .iter()
        .map(|p| username_from_email(&p.email))
        .collect();
    let mut need: HashMap<&str, usize> = HashMap::new();
    for base in &bases {
        *need.entry(base).or_default() += 1;
    }
    let wanted: Vec<(&str, usize)> = need.into_iter().collect();
    let mut free = free_usernames(&mut *conn, &wanted, 1).await?;
    let usernames: Vec<String> = bases
        .iter()
        .map(|base| {
            let names = free
                .get_mut(base.as_str())
                .filter(|names| !names.is_empty());
            names.map_or_else(|| base.clone(), |names| names.remove(0))
        })
        .collect();
    let mut savepoint = Connection::begin(&mut *conn).await?;
    let result = sqlx::query!(
        r#"INSERT INTO users (username, email, identity_provider, identity_sub, display_name,
                              identity_picture_url, role, last_login_at, identity_updated_at,
                              identity_role_updated_at, is_active)
           SELECT i.username, i.email, 'clerk', i.sub, i.display_name, i.picture_url,
                  coalesce(i.role, 'user'), i.last_login_at, i.updated_at,
                  CASE WHEN i.role IS NOT NULL THEN i.updated_at END, i.active
           FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::varchar[], $5::text[],
                       $6::varchar[], $7::timestamp[], $8::timestamp[], $9::bool[])
                AS i(username, email, sub, display_name, picture_url, role, last_login_at, updated_at,
                     active)"#,
        &usernames,
        &c.email as &[&str],
        &c.subject as &[&str],
        &c.display_name as &[Option<&str>],
        &c.picture_url as &[Option<&str>],
        &c.role as &[Option<&str>],
        &c.last_login_at as &[Option<NaiveDateTime>],
        &c.updated_at,
        &active,
    )
    .execute(&mut *savepoint)
    .await;
    // No ON CONFLICT: when the statement succeeds, every row went in.
    let placed = result.map(|_| c.subject.iter().map(|s| (*s).to_owned()).collect());
    settle(savepoint, placed).await
}

/// Commits a bulk statement's savepoint, or on a unique violation rolls it back and reports that
/// nothing was placed.
async fn settle(
    savepoint: sqlx::Transaction<'_, Postgres>,
    result: Result<Vec<String>, sqlx::Error>,
) -> Result<Subjects, Error> {
    match result {
        Ok(subjects) => {
            savepoint.commit().await?;
            Ok(subjects.into_iter().collect())
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            savepoint.rollback().await?;
            Ok(Subjects::new())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(json: serde_json::Value) -> ClerkUser {
        serde_json::from_value(json).expect("a Clerk user")
    }

    #[test]
    fn maps_a_clerk_user() {
        let u = user(serde_json::json!({
            "id": "user_2abc", "object": "user", "unknown_field": [1, 2],
            "email_addresses": [
                {"id": "idn_1", "email_address": "old@example.com"},
                {"id": "idn_2", "email_address": "ada@example.com"}
            ],
            "primary_email_address_id": "idn_2",
            "first_name": " Ada ", "last_name": "Lovelace", "username": "ada",
            "image_url": "https://img.clerk.com/x.png",
            "public_metadata": {"role": "admin"},
            "last_sign_in_at": 1700000000123_i64, "updated_at": 1700000001000_i64,
            "external_accounts": [{"provider": "oauth_google", "email_address": "ada@gmail.com"}]
        }));
        let p = u.to_profile().unwrap();
        assert_eq!(p.subject.as_str(), "user_2abc");
        assert_eq!(p.email.as_str(), "ada@example.com");
        assert_eq!(p.display_name.unwrap().as_str(), "Ada Lovelace");
        assert_eq!(
            p.picture_url.unwrap().as_str(),
            "https://img.clerk.com/x.png"
        );
        assert_eq!(p.role, MetadataRole::Valid(Role::Admin));
        assert_eq!(p.last_sign_in_at.unwrap().timestamp_millis(), 1700000000123);
        assert_eq!(p.updated_at.timestamp_millis(), 1700000001000);
    }

    #[test]
    fn falls_back_for_email_name_and_role() {
        let base = serde_json::json!({
            "id": "user_1", "updated_at": 1,
            "email_addresses": [{"id": "a", "email_address": "first@example.com"}],
            "primary_email_address_id": "missing", "username": "ada99",
            "public_metadata": {"role": "superuser"}
        });
        let p = user(base.clone()).to_profile().unwrap();
        assert_eq!(p.email.as_str(), "first@example.com");
        assert_eq!(p.display_name.unwrap().as_str(), "ada99");
        assert!(matches!(p.role, MetadataRole::Invalid(ref why) if why.contains("superuser")));

        let mut none = base.clone();
        none["username"] = serde_json::Value::Null;
        none["public_metadata"] = serde_json::json!({"role": 7});
        let p = user(none).to_profile().unwrap();
        assert_eq!(p.display_name, None);
        assert!(matches!(p.role, MetadataRole::Invalid(_)));

        let mut no_email = base;
        no_email["email_addresses"] = serde_json::json!([]);
        let err = user(no_email).to_profile().unwrap_err();
        assert!(
            matches!(err, Error::InvalidInput { field: "email", .. }),
            "{err:?}"
        );
    }
}
