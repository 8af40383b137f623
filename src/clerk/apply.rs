//! Applying Clerk records: the one place where the [rules](super) are written. A webhook event and a
//! backfill go through the same statements; one event is a batch of one.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::PgConnection;

use super::profile::ClerkProfile;
use crate::error::Error;
use crate::input::Subject;
use crate::role::Role;
use crate::tx::atomically;
use crate::users::{UserId, UsernameRetries, free_usernames, username_from_email};

/// What applying one record did, for the webhook handler's log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// A new user was created (inactive if Clerk had already deleted it).
    Created(UserId),
    /// The user's profile or role was updated.
    Updated(UserId),
    /// Nothing changed: the event is no newer than what is stored (a replay, or out of order).
    Stale(UserId),
    /// `user.deleted`: the user was deactivated and its address released.
    Deactivated(UserId),
    /// `user.deleted` for a user already deactivated: nothing changed but the address's release.
    AlreadyDeactivated(UserId),
    /// `user.deleted` for a user not seen yet: recorded, so a late `created` creates it inactive.
    DeletedBeforeSeen,
    /// A user not stored yet whose addresses are all unverified: not created (a later event with a
    /// verified address creates it).
    NoVerifiedEmail,
    /// An event type this sync does not handle.
    Ignored(String),
}

/// The result of applying one record ([`apply_event`](super::apply_event),
/// [`apply_user`](super::apply_user)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// What happened.
    pub outcome: Outcome,
    /// Why `public_metadata.role` was not taken as a role, when it was not (it then counts as no
    /// role: see the [rules](super)).
    pub role_note: Option<String>,
}

/// One record to apply: a profile (`user.created`, `user.updated`, a backfilled user) or a deletion.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    Profile(ClerkProfile),
    Deletion { subject: Subject, at: DateTime<Utc> },
}

impl Change {
    fn subject(&self) -> &str {
        match self {
            Change::Profile(p) => p.subject.as_str(),
            Change::Deletion { subject, .. } => subject.as_str(),
        }
    }

    fn role_note(&self) -> Option<String> {
        match self {
            Change::Profile(p) => p.role_note(),
            Change::Deletion { .. } => None,
        }
    }
}

/// A record's result: applied, or why not. Only errors that belong to the record (its data, an
/// address held by another user) are here; anything else stops the whole call.
pub(crate) type RecordResult = Result<Applied, Error>;

/// Applies records in input order, in one transaction (a savepoint inside a caller's) that first
/// takes every identity's advisory lock, in a fixed order. Any other writer of the same identities
/// (another webhook, another backfill) waits for that transaction; writers of other identities do not.
pub(crate) async fn apply_records(
    conn: &mut PgConnection,
    records: Vec<(usize, Change)>,
) -> Result<Vec<(usize, RecordResult)>, Error> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let subjects: Vec<String> = records
        .iter()
        .map(|(_, c)| c.subject().to_owned())
        .collect();

    // Round k holds the k-th record of each identity, so that each statement sees at most one record
    // per identity and each identity's records apply in input order.
    let mut rounds: Vec<Vec<(usize, Change)>> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (position, change) in records {
        let k = seen.entry(change.subject().to_owned()).or_default();
        if rounds.len() <= *k {
            rounds.push(Vec::new());
        }
        rounds[*k].push((position, change));
        *k += 1;
    }
    let mut results = atomically(conn, async |tx| {
        lock_identities(tx, &subjects).await?;
        let mut results = Vec::new();
        for round in rounds {
            results.extend(apply_round(tx, round).await?);
        }
        Ok::<_, Error>(results)
    })
    .await??;
    results.sort_by_key(|(position, _)| *position);
    Ok(results)
}

/// Serializes the writers of each identity: a transaction-scoped advisory lock per identity (in the
/// two-key space, under a class id of this crate's, so it meets no bigint-keyed lock such as sqlx's
/// migrator's), taken in key order so that two batches never wait on each other in a cycle.
async fn lock_identities(conn: &mut PgConnection, subjects: &[String]) -> Result<(), Error> {
    sqlx::query_scalar!(
        r#"SELECT count(pg_advisory_xact_lock(1281456210, k)) AS "locked!"
           FROM (SELECT DISTINCT hashtext('clerk:' || s) AS k
                 FROM unnest($1::varchar[]) AS s ORDER BY k) AS keys"#,
        subjects,
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(())
}

/// What is stored for an identity, read under its lock.
struct Stored {
    id: Option<UserId>,
    active: bool,
    released: bool,
    tombstoned: bool,
}

async fn apply_round(
    conn: &mut PgConnection,
    round: Vec<(usize, Change)>,
) -> Result<Vec<(usize, RecordResult)>, Error> {
    let subjects: Vec<&str> = round.iter().map(|(_, c)| c.subject()).collect();
    let stored: HashMap<String, Stored> = sqlx::query!(
        r#"SELECT s.sub AS "sub!", u.id AS "id?: UserId", u.is_active AS "active?",
                  u.released_email IS NOT NULL AS "released!",
                  t.identity_sub IS NOT NULL AS "tombstoned!"
           FROM unnest($1::varchar[]) AS s(sub)
           LEFT JOIN users u ON u.identity_provider = 'clerk' AND u.identity_sub = s.sub
           LEFT JOIN identity_tombstones t
                  ON t.identity_provider = 'clerk' AND t.identity_sub = s.sub"#,
        &subjects as &[&str],
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|r| {
        let stored = Stored {
            id: r.id,
            active: r.active.unwrap_or(false),
            released: r.released,
            tombstoned: r.tombstoned,
        };
        (r.sub, stored)
    })
    .collect();
    let state = |c: &Change| &stored[c.subject()];

    let mut results: Vec<(usize, RecordResult)> = Vec::new();
    let done = |position: usize, change: &Change, outcome: Outcome| {
        let applied = Applied {
            outcome,
            role_note: change.role_note(),
        };
        (position, Ok(applied))
    };

    // Deletions: one statement for all of them.
    let deletions: Vec<(usize, &Change)> = round
        .iter()
        .filter(|(_, c)| matches!(c, Change::Deletion { .. }))
        .map(|(p, c)| (*p, c))
        .collect();
    if !deletions.is_empty() {
        let (subs, ats): (Vec<&str>, Vec<NaiveDateTime>) = deletions
            .iter()
            .map(|(_, c)| match c {
                Change::Deletion { subject, at } => (subject.as_str(), at.naive_utc()),
                Change::Profile(_) => unreachable!("filtered to deletions"),
            })
            .unzip();
        delete(conn, &subs, &ats).await?;
        for (position, change) in deletions {
            let s = state(change);
            let outcome = match s.id {
                Some(id) if s.active => Outcome::Deactivated(id),
                Some(id) => Outcome::AlreadyDeactivated(id),
                None => Outcome::DeletedBeforeSeen,
            };
            results.push(done(position, change, outcome));
        }
    }

    // Profiles: known identities are updated, new ones inserted; a new one with no verified address
    // is not created. Records that would take an address another user holds, or that a bulk
    // statement cannot place, go one by one, where the error belongs to the record alone.
    let mut updates: Vec<(usize, &ClerkProfile, UserId)> = Vec::new();
    let mut inserts: Vec<(usize, &ClerkProfile)> = Vec::new();
    for (position, change) in &round {
        let Change::Profile(p) = change else { continue };
        match (state(change).id, &p.email) {
            (Some(id), _) => updates.push((*position, p, id)),
            (None, Some(_)) => inserts.push((*position, p)),
            (None, None) => results.push(done(*position, change, Outcome::NoVerifiedEmail)),
        }
    }
    // Two records of this round claiming one address: the later one goes one by one.
    let mut taken_here: HashSet<String> = HashSet::new();
    let mut first_claim = |p: &ClerkProfile| {
        claimed_address(&stored, p).is_none_or(|email| taken_here.insert(email.to_owned()))
    };
    let (mut bulk_updates, mut one_by_one_updates): (Vec<_>, Vec<_>) =
        updates.into_iter().partition(|(_, p, _)| first_claim(p));
    let (mut bulk_inserts, mut one_by_one_inserts): (Vec<_>, Vec<_>) =
        inserts.into_iter().partition(|(_, p)| first_claim(p));

    // Optimistic: a backfill's addresses are almost never held by another user, so the holders are
    // looked up only when a bulk statement hits a unique violation; the records whose address another
    // user holds then go one by one, and the rest are tried in bulk once more.
    let mut checked = false;
    while !bulk_updates.is_empty() {
        let profiles: Vec<&ClerkProfile> = bulk_updates.iter().map(|(_, p, _)| *p).collect();
        match atomically(conn, async |c| update(c, &profiles).await).await? {
            Ok(written) => {
                for (position, p, id) in std::mem::take(&mut bulk_updates) {
                    let outcome = if written.contains(p.subject.as_str()) {
                        Outcome::Updated(id)
                    } else {
                        Outcome::Stale(id)
                    };
                    results.push(done_profile(position, p, outcome));
                }
            }
            Err(e) if !checked && is_unique_violation(&e) => {
                checked = true;
                let held = held_elsewhere(conn, &stored, &profiles).await?;
                let (free, held): (Vec<_>, Vec<_>) = std::mem::take(&mut bulk_updates)
                    .into_iter()
                    .partition(|(_, p, _)| !held.contains(p.subject.as_str()));
                one_by_one_updates.extend(held);
                bulk_updates = free;
            }
            Err(_) => one_by_one_updates.append(&mut bulk_updates),
        }
    }
    // Optimistic too: each new user first tries the username its address gives (no look-up; a
    // backfill's are mostly free); those whose username is taken (skipped by the statement) are tried
    // once more in bulk with free usernames looked up, then one by one.
    let mut checked = false;
    let mut looked_up = false;
    while !bulk_inserts.is_empty() {
        let profiles: Vec<&ClerkProfile> = bulk_inserts.iter().map(|(_, p)| *p).collect();
        let usernames = if looked_up {
            usernames_for(conn, &profiles).await?
        } else {
            base_usernames(&profiles)
        };
        match atomically(conn, async |c| insert(c, &profiles, &usernames).await).await? {
            Ok(created) => {
                let mut skipped = Vec::new();
                for (position, p) in std::mem::take(&mut bulk_inserts) {
                    match created.get(p.subject.as_str()) {
                        Some(id) => results.push(done_profile(position, p, Outcome::Created(*id))),
                        None => skipped.push((position, p)),
                    }
                }
                if looked_up {
                    one_by_one_inserts.extend(skipped);
                } else {
                    looked_up = true;
                    bulk_inserts = skipped;
                }
            }
            Err(e) if !checked && is_unique_violation(&e) => {
                checked = true;
                let held = held_elsewhere(conn, &stored, &profiles).await?;
                let (free, held): (Vec<_>, Vec<_>) = std::mem::take(&mut bulk_inserts)
                    .into_iter()
                    .partition(|(_, p)| !held.contains(p.subject.as_str()));
                one_by_one_inserts.extend(held);
                bulk_inserts = free;
            }
            Err(_) => one_by_one_inserts.append(&mut bulk_inserts),
        }
    }

    for (position, p, id) in one_by_one_updates {
        let outcome = match atomically(conn, async |c| update(c, &[p]).await).await? {
            Ok(written) if written.is_empty() => Ok(Outcome::Stale(id)),
            Ok(_) => Ok(Outcome::Updated(id)),
            Err(e) => Err(record_error(e, p)?),
        };
        results.push(with_note(position, p, outcome));
    }
    for (position, p) in one_by_one_inserts {
        let outcome = insert_one(conn, p).await?.map(Outcome::Created);
        results.push(with_note(position, p, outcome));
    }
    Ok(results)
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// The identities among `profiles` whose claimed address another user holds.
async fn held_elsewhere(
    conn: &mut PgConnection,
    stored: &HashMap<String, Stored>,
    profiles: &[&ClerkProfile],
) -> Result<HashSet<String>, Error> {
    let claimed: Vec<&str> = profiles
        .iter()
        .filter_map(|p| claimed_address(stored, p))
        .collect();
    let holders: HashMap<String, Option<String>> = sqlx::query!(
        r#"SELECT email,
                  CASE WHEN identity_provider = 'clerk' THEN identity_sub END AS clerk_sub
           FROM users WHERE email = ANY($1::varchar[])"#,
        &claimed as &[&str],
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|r| (r.email, r.clerk_sub))
    .collect();
    Ok(profiles
        .iter()
        .filter(|p| {
            claimed_address(stored, p).is_some_and(|email| {
                holders
                    .get(email)
                    .is_some_and(|holder| holder.as_deref() != Some(p.subject.as_str()))
            })
        })
        .map(|p| p.subject.as_str().to_owned())
        .collect())
}

/// The address a record would put in `users.email`, if any: a deleted user's goes to
/// `released_email` instead, which is not unique.
fn claimed_address<'p>(stored: &HashMap<String, Stored>, p: &'p ClerkProfile) -> Option<&'p str> {
    let s = &stored[p.subject.as_str()];
    let releases = if s.id.is_some() {
        s.released
    } else {
        s.tombstoned
    };
    p.email.as_ref().filter(|_| !releases).map(|e| e.as_str())
}

fn done_profile(position: usize, p: &ClerkProfile, outcome: Outcome) -> (usize, RecordResult) {
    with_note(position, p, Ok(outcome))
}

fn with_note(
    position: usize,
    p: &ClerkProfile,
    outcome: Result<Outcome, Error>,
) -> (usize, RecordResult) {
    let applied = outcome.map(|outcome| Applied {
        outcome,
        role_note: p.role_note(),
    });
    (position, applied)
}

/// A statement's error as the record's own error, or `Err` when it is not the record's fault (a lost
/// connection, a deadlock, a server shutting down: the whole call fails and can be retried).
fn record_error(e: sqlx::Error, p: &ClerkProfile) -> Result<Error, Error> {
    let sqlx::Error::Database(db) = &e else {
        return Err(e.into());
    };
    if db.is_unique_violation() && db.constraint() == Some("users_email_unique") {
        return Ok(Error::EmailTaken {
            email: p
                .email
                .as_ref()
                .map_or_else(String::new, |e| e.as_str().to_owned()),
        });
    }
    // Class 22 (data exception) and 23 (integrity constraint violation): the record's values.
    match db.code().as_deref().map(|c| &c[..2.min(c.len())]) {
        Some("22") | Some("23") => Ok(Error::InvalidInput {
            field: "clerk record",
            reason: db.message().to_owned(),
        }),
        _ => Err(e.into()),
    }
}

/// Inserts one new user, retrying taken usernames ([`UsernameRetries`]).
async fn insert_one(
    conn: &mut PgConnection,
    p: &ClerkProfile,
) -> Result<Result<UserId, Error>, Error> {
    let Some(email) = &p.email else {
        unreachable!("only profiles with an address are inserted")
    };
    let mut retries = UsernameRetries::new(email);
    loop {
        let username = [retries.username().to_owned()];
        match atomically(conn, async |c| insert(c, &[p], &username).await).await? {
            Ok(created) => match created.into_values().next() {
                Some(id) => return Ok(Ok(id)),
                // Skipped: the username is taken (`ON CONFLICT (username) DO NOTHING`).
                None => match retries.username_taken(conn).await {
                    Ok(()) => continue,
                    Err(Error::Database(e)) => return record_error(e, p).map(Err),
                    Err(e) => return Ok(Err(e)),
                },
            },
            Err(e) => match retries.after(conn, e).await {
                Ok(()) => continue,
                Err(Error::Database(e)) => return record_error(e, p).map(Err),
                Err(e) => return Ok(Err(e)),
            },
        }
    }
}

/// The username each new user's address gives, taken or not.
fn base_usernames(profiles: &[&ClerkProfile]) -> Vec<String> {
    profiles
        .iter()
        .filter_map(|p| p.email.as_ref().map(username_from_email))
        .collect()
}

/// Usernames for new users: from the addresses, free among the stored ones and unique in the batch.
async fn usernames_for(
    conn: &mut PgConnection,
    profiles: &[&ClerkProfile],
) -> Result<Vec<String>, Error> {
    let bases: Vec<String> = profiles
        .iter()
        .filter_map(|p| p.email.as_ref().map(username_from_email))
        .collect();
    let mut need: HashMap<&str, usize> = HashMap::new();
    for base in &bases {
        *need.entry(base).or_default() += 1;
    }
    let wanted: Vec<(&str, usize)> = need.into_iter().collect();
    let mut free = free_usernames(&mut *conn, &wanted, 1).await?;
    Ok(bases
        .iter()
        .map(|base| {
            let names = free.get_mut(base.as_str()).filter(|n| !n.is_empty());
            names.map_or_else(|| base.clone(), |names| names.remove(0))
        })
        .collect())
}

/// Columns of profiles as arrays, for `UNNEST`.
struct Columns<'p> {
    subject: Vec<&'p str>,
    email: Vec<Option<&'p str>>,
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
            email: ps().map(|p| p.email.as_ref().map(|e| e.as_str())).collect(),
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

/// THE RULES for a stored user (see the module docs' table): the profile when the record is newer
/// than the stored profile; the role when it is newer than the stored role's version; an address
/// only when verified (`NULL` keeps the stored one), into `released_email` for a deleted user;
/// `last_login_at` the latest of all records seen, stale ones included (so it cannot depend on order).
/// Returns the identities it changed; the others were stale.
async fn update(
    conn: &mut PgConnection,
    profiles: &[&ClerkProfile],
) -> Result<HashSet<String>, sqlx::Error> {
    let c = Columns::of(profiles);
    let rows = sqlx::query_scalar!(
        r#"UPDATE users u
           SET email = CASE WHEN (u.identity_updated_at IS NULL OR u.identity_updated_at < i.updated_at)
                             AND i.email IS NOT NULL AND u.released_email IS NULL
                            THEN i.email ELSE u.email END,
               released_email = CASE WHEN (u.identity_updated_at IS NULL
                                           OR u.identity_updated_at < i.updated_at)
                                      AND i.email IS NOT NULL AND u.released_email IS NOT NULL
                                     THEN i.email ELSE u.released_email END,
               display_name = CASE WHEN u.identity_updated_at IS NULL
                                     OR u.identity_updated_at < i.updated_at
                                   THEN i.display_name ELSE u.display_name END,
               identity_picture_url = CASE WHEN u.identity_updated_at IS NULL
                                             OR u.identity_updated_at < i.updated_at
                                           THEN i.picture_url ELSE u.identity_picture_url END,
               identity_updated_at = greatest(u.identity_updated_at, i.updated_at),
               -- The role: `takes` when the record is newer than the role's version and either Clerk
               -- set the role, or the record's role differs from the last one Clerk gave (a role set
               -- by hand holds until Clerk's role itself changes). What it takes is the role of the
               -- newest record seen: this one's, or, when a newer one is stored already (it arrived
               -- first and carried the last role Clerk gave, or it would have taken), that one's.
               (role, clerk_role, role_source, identity_role_updated_at) = (
                   SELECT CASE WHEN d.takes THEN d.newest_role ELSE u.role END,
                          CASE WHEN d.takes THEN d.newest_role ELSE u.clerk_role END,
                          CASE WHEN d.takes THEN 'clerk' ELSE u.role_source END,
                          CASE WHEN d.takes THEN d.newest_at ELSE u.identity_role_updated_at END
                   FROM (SELECT (u.identity_role_updated_at IS NULL
                                 OR u.identity_role_updated_at < i.updated_at)
                                AND (u.role_source = 'clerk'
                                     OR coalesce(i.role, 'user') <> coalesce(u.clerk_role, 'user'))
                                  AS takes,
                                CASE WHEN f.this_is_newest THEN coalesce(i.role, 'user')
                                     ELSE coalesce(u.clerk_role, 'user') END AS newest_role,
                                CASE WHEN f.this_is_newest THEN i.updated_at
                                     ELSE u.identity_updated_at END AS newest_at
                         FROM (SELECT u.role_source = 'clerk' OR u.identity_updated_at IS NULL
                                      OR u.identity_updated_at <= i.updated_at AS this_is_newest) AS f
                        ) AS d),
               last_login_at = greatest(u.last_login_at, i.last_login_at),
               updated_at = now() AT TIME ZONE 'UTC'
           FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::text[], $5::varchar[],
                       $6::timestamp[], $7::timestamp[])
                AS i(sub, email, display_name, picture_url, role, last_login_at, updated_at)
           WHERE u.identity_provider = 'clerk' AND u.identity_sub = i.sub
             AND (u.identity_updated_at IS NULL OR u.identity_updated_at < i.updated_at
                  OR ((u.identity_role_updated_at IS NULL OR u.identity_role_updated_at < i.updated_at)
                         AND (u.role_source = 'clerk'
                              OR coalesce(i.role, 'user') <> coalesce(u.clerk_role, 'user')))
                  OR i.last_login_at > coalesce(u.last_login_at, '-infinity'))
           RETURNING u.identity_sub AS "sub!""#,
        &c.subject as &[&str],
        &c.email as &[Option<&str>],
        &c.display_name as &[Option<&str>],
        &c.picture_url as &[Option<&str>],
        &c.role as &[Option<&str>],
        &c.last_login_at as &[Option<NaiveDateTime>],
        &c.updated_at,
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// THE RULES for a new user: created with the record's profile, the record's valid role or `user`
/// (set by Clerk, so a later event without a role keeps it `user`), inactive and with its address
/// released when Clerk has already deleted it. A row whose username is taken (by a stored user or an
/// earlier row of the statement) is skipped, not an error. Returns the ids by identity.
async fn insert(
    conn: &mut PgConnection,
    profiles: &[&ClerkProfile],
    usernames: &[String],
) -> Result<HashMap<String, UserId>, sqlx::Error> {
    let c = Columns::of(profiles);
    let rows = sqlx::query!(
        r#"INSERT INTO users (username, email, released_email, identity_provider, identity_sub,
                              display_name, identity_picture_url, role, role_source, clerk_role,
                              last_login_at, identity_updated_at, identity_role_updated_at,
                              is_active)
           SELECT i.username,
                  CASE WHEN t.identity_sub IS NULL THEN i.email
                       ELSE 'deleted+' || md5('clerk:' || i.sub) || '@deleted.invalid' END,
                  CASE WHEN t.identity_sub IS NOT NULL THEN i.email END,
                  'clerk', i.sub, i.display_name, i.picture_url, coalesce(i.role, 'user'), 'clerk',
                  coalesce(i.role, 'user'), i.last_login_at, i.updated_at, i.updated_at, t.identity_sub IS NULL
           FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::varchar[], $5::text[],
                       $6::varchar[], $7::timestamp[], $8::timestamp[])
                AS i(username, email, sub, display_name, picture_url, role, last_login_at, updated_at)
           LEFT JOIN identity_tombstones t
                  ON t.identity_provider = 'clerk' AND t.identity_sub = i.sub
           ON CONFLICT (username) DO NOTHING
           RETURNING id, identity_sub AS "sub!""#,
        usernames,
        &c.email as &[Option<&str>],
        &c.subject as &[&str],
        &c.display_name as &[Option<&str>],
        &c.picture_url as &[Option<&str>],
        &c.role as &[Option<&str>],
        &c.last_login_at as &[Option<NaiveDateTime>],
        &c.updated_at,
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.sub, r.id)).collect())
}

/// THE RULES for `user.deleted`: a permanent tombstone (the earliest deletion time kept), the user
/// deactivated, and its address released: moved to `released_email`, `email` holding a placeholder
/// under the reserved `.invalid` domain, unique per identity.
async fn delete(
    conn: &mut PgConnection,
    subjects: &[&str],
    at: &[NaiveDateTime],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"WITH i AS (SELECT * FROM unnest($1::varchar[], $2::timestamp[]) AS i(sub, deleted_at)),
           tombstones AS (
               INSERT INTO identity_tombstones (identity_provider, identity_sub, deleted_at)
               SELECT 'clerk', sub, deleted_at FROM i
               ON CONFLICT (identity_provider, identity_sub)
               DO UPDATE SET deleted_at = least(identity_tombstones.deleted_at, EXCLUDED.deleted_at)
           )
           UPDATE users u
           SET is_active = false,
               released_email = coalesce(u.released_email, u.email),
               email = CASE WHEN u.released_email IS NULL
                            THEN 'deleted+' || md5('clerk:' || u.identity_sub) || '@deleted.invalid'
                            ELSE u.email END,
               updated_at = now() AT TIME ZONE 'UTC'
           FROM i
           WHERE u.identity_provider = 'clerk' AND u.identity_sub = i.sub
             AND (u.is_active OR u.released_email IS NULL)"#,
        subjects as &[&str],
        at,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}
