//! The `users` table: look-ups, the sign-in upsert, linking, logins, roles, deactivation.
//!
//! Every function takes an executor (`&PgPool`, `&mut PgConnection`, `&mut *transaction`) or, where it
//! needs more than one statement, something to [`Acquire`] a connection from, so callers can compose them
//! inside their own transactions. Functions that may fail on a constraint run inside a savepoint when
//! given a transaction, so an error from them leaves the caller's transaction usable.
//!
//! Times are UTC. The columns are `timestamp` (no zone) holding UTC wall-clock time; this crate writes
//! them as `now() AT TIME ZONE 'UTC'` (and the table's defaults do the same), so neither the server's nor
//! the session's `TimeZone` shifts them, and it reads them back as [`DateTime<Utc>`].

mod row;
mod username;

use std::future::Future;

use sqlx::{Acquire, PgConnection, PgExecutor, Postgres};

use crate::error::Error;
pub use crate::id::UserId;
use crate::input::{Email, Identity, Profile};
use crate::role::Role;
use crate::tx::attempt;
pub use row::{RoleSource, SignIn, User};
pub(crate) use row::{UserRow, found};
pub use username::{USERNAME_ATTEMPTS, username_from_email};
pub(crate) use username::{UsernameRetries, free_usernames, unique_violation};

/// Finds the user holding an identity; `Ok(None)` when there is none.
///
/// # Examples
///
/// ```no_run
/// # async fn f(pool: &sqlx::PgPool) -> Result<(), livermore_db::Error> {
/// use livermore_db::{Identity, find_by_identity};
///
/// let identity = Identity::parse("clerk", "user_2NNEqL2nrIRdJ194ndJqAHwEfxC")?;
/// match find_by_identity(pool, &identity).await? {
///     Some(user) => println!("{} is user {}", user.username, user.id),
///     None => println!("not signed up yet"),
/// }
/// # Ok(())
/// # }
/// ```
pub async fn find_by_identity(
    executor: impl PgExecutor<'_>,
    identity: &Identity,
) -> Result<Option<User>, Error> {
    let row = sqlx::query_as!(
        UserRow,
        r#"SELECT id, username, email, is_active, created_at, updated_at, identity_provider,
                  identity_sub, display_name, identity_picture_url, role, last_login_at,
                  identity_updated_at, identity_role_updated_at, role_source, released_email
           FROM users
           WHERE identity_provider = $1 AND identity_sub = $2"#,
        identity.provider.as_str(),
        identity.subject.as_str(),
    )
    .fetch_optional(executor)
    .await?;
    Ok(row.map(User::from))
}

/// Finds the users holding several identities in one statement: the answer has one entry per input,
/// in input order (`None` where no user holds it; a repeated identity is answered each time).
///
/// ```no_run
/// # async fn f(pool: &sqlx::PgPool) -> Result<(), livermore_db::Error> {
/// use livermore_db::{Identity, find_by_identities};
///
/// let wanted = [Identity::parse("clerk", "user_a")?, Identity::parse("google", "1234")?];
/// let found = find_by_identities(pool, &wanted).await?;
/// assert_eq!(found.len(), 2);
/// # Ok(())
/// # }
/// ```
pub async fn find_by_identities(
    executor: impl PgExecutor<'_>,
    identities: &[Identity],
) -> Result<Vec<Option<User>>, Error> {
    let identities: Vec<&Identity> = identities.iter().collect();
    find_identities(executor, &identities).await
}

/// [`find_by_identities`] over borrowed identities (the look-up handle's requests own theirs).
pub(crate) async fn find_identities(
    executor: impl PgExecutor<'_>,
    identities: &[&Identity],
) -> Result<Vec<Option<User>>, Error> {
    if identities.is_empty() {
        return Ok(Vec::new());
    }
    let providers: Vec<&str> = identities.iter().map(|i| i.provider.as_str()).collect();
    let subjects: Vec<&str> = identities.iter().map(|i| i.subject.as_str()).collect();
    // One row per input found, numbered by its place among the inputs (a repeated identity is
    // answered once for each place): no map from identities back to places, nothing cloned.
    let rows = sqlx::query!(
        r#"SELECT i.n AS "n!", u.id, u.username, u.email, u.is_active, u.created_at, u.updated_at,
                  u.identity_provider, u.identity_sub, u.display_name, u.identity_picture_url,
                  u.role, u.last_login_at, u.identity_updated_at, u.identity_role_updated_at,
                  u.role_source, u.released_email
           FROM unnest($1::varchar[], $2::varchar[]) WITH ORDINALITY AS i(provider, sub, n)
           JOIN users u ON u.identity_provider = i.provider AND u.identity_sub = i.sub"#,
        &providers as &[&str],
        &subjects as &[&str],
    )
    .fetch_all(executor)
    .await?;
    let mut found: Vec<Option<User>> = Vec::new();
    found.resize_with(identities.len(), || None);
    for r in rows {
        let place = usize::try_from(r.n).ok().and_then(|n| n.checked_sub(1));
        let Some(slot) = place.and_then(|i| found.get_mut(i)) else {
            continue;
        };
        *slot = Some(User::from(UserRow {
            id: r.id,
            username: r.username,
            email: r.email,
            is_active: r.is_active,
            created_at: r.created_at,
            updated_at: r.updated_at,
            identity_provider: r.identity_provider,
            identity_sub: r.identity_sub,
            display_name: r.display_name,
            identity_picture_url: r.identity_picture_url,
            role: r.role,
            last_login_at: r.last_login_at,
            identity_updated_at: r.identity_updated_at,
            identity_role_updated_at: r.identity_role_updated_at,
            role_source: r.role_source,
            released_email: r.released_email,
        }));
    }
    Ok(found)
}

/// Finds a user by id; `Ok(None)` when there is none.
pub async fn find_by_id(executor: impl PgExecutor<'_>, id: UserId) -> Result<Option<User>, Error> {
    let row = sqlx::query_as!(
        UserRow,
        r#"SELECT id, username, email, is_active, created_at, updated_at, identity_provider,
                  identity_sub, display_name, identity_picture_url, role, last_login_at,
                  identity_updated_at, identity_role_updated_at, role_source, released_email
           FROM users
           WHERE id = $1"#,
        id.0,
    )
    .fetch_optional(executor)
    .await?;
    Ok(row.map(User::from))
}

/// Finds a user by email address (an exact, case-sensitive match, as `users_email_unique` compares);
/// `Ok(None)` when there is none.
pub async fn find_by_email(
    executor: impl PgExecutor<'_>,
    email: &Email,
) -> Result<Option<User>, Error> {
    let row = sqlx::query_as!(
        UserRow,
        r#"SELECT id, username, email, is_active, created_at, updated_at, identity_provider,
                  identity_sub, display_name, identity_picture_url, role, last_login_at,
                  identity_updated_at, identity_role_updated_at, role_source, released_email
           FROM users
           WHERE email = $1"#,
        email.as_str(),
    )
    .fetch_optional(executor)
    .await?;
    Ok(row.map(User::from))
}

/// Signs a user in from a provider profile: creates the user holding that identity, or updates the
/// profile fields (email, display name, picture) of the user already holding it, in one atomic
/// `INSERT … ON CONFLICT … DO UPDATE`, and returns the stored user.
///
/// - A new user's username comes from [`username_from_email`]; when taken, it is retried with a
///   suffix (`ada_2`, then random ones), at most [`USERNAME_ATTEMPTS`] times, then
///   [`Error::UsernameExhausted`].
/// - An email address held by a different user is [`Error::EmailTaken`] and nothing is written: to
///   attach an identity to an existing account, call [`link_identity`].
/// - Concurrent sign-ins of the same identity all return the same user; exactly one creates it.
/// - A deactivated user is signed in like any other (`is_active` stays `false`): the caller decides.
/// - An identity its provider deleted (a Clerk `user.deleted`: a tombstone, the user's address
///   released) never signs in again: [`Error::IdentityDeleted`], and nothing is written (no new
///   active user, no address given back to the deleted user).
/// - `last_login_at` is not touched: call [`record_login`].
///
/// Given a transaction, each attempt runs in a savepoint, so an error leaves the transaction usable.
///
/// # Examples
///
/// ```no_run
/// # async fn f(pool: &sqlx::PgPool) -> Result<(), livermore_db::Error> {
/// use livermore_db::{Profile, sign_in};
///
/// let profile = Profile::parse(
///     "clerk",
///     "user_2NNEqL2nrIRdJ194ndJqAHwEfxC",
///     "ada@example.com",
///     Some("Ada Lovelace"),
///     Some("https://img.clerk.com/ada.png"),
/// )?;
/// let signed_in = sign_in(pool, &profile).await?;
/// println!("user {} (new: {})", signed_in.user.id, signed_in.created);
///
/// // Or inside your own transaction:
/// let mut tx = pool.begin().await?;
/// let again = sign_in(&mut *tx, &profile).await?;
/// tx.commit().await?;
/// assert_eq!(again.user.id, signed_in.user.id);
/// # Ok(())
/// # }
/// ```
#[expect(
    clippy::manual_async_fn,
    reason = "the `Send` bound in the signature lets callers spawn it (an `async fn` generic over `Acquire` is not provably `Send`)"
)]
pub fn sign_in<'a, 'c, A>(
    conn: A,
    profile: &'a Profile,
) -> impl Future<Output = Result<SignIn, Error>> + Send + 'a
where
    A: Acquire<'c, Database = Postgres> + Send + 'a,
{
    async move {
        let mut conn = conn.acquire().await?;
        sign_in_on(&mut conn, profile).await
    }
}

async fn sign_in_on(conn: &mut PgConnection, profile: &Profile) -> Result<SignIn, Error> {
    let mut retries = UsernameRetries::new(&profile.email);
    loop {
        let username = retries.username().to_owned();
        let result = attempt(conn, async |c| upsert_identity(c, profile, &username).await).await?;
        match result {
            Ok(Some(done)) => return Ok(done),
            Ok(None) => {
                return Err(Error::IdentityDeleted {
                    provider: profile.identity.provider.as_str().to_owned(),
                    subject: profile.identity.subject.as_str().to_owned(),
                });
            }
            Err(e) => retries.after(conn, e).await?,
        }
    }
}

async fn upsert_identity(
    conn: &mut PgConnection,
    profile: &Profile,
    username: &str,
) -> Result<Option<SignIn>, sqlx::Error> {
    let row = sqlx::query!(
        r#"INSERT INTO users (username, email, identity_provider, identity_sub, display_name,
                              identity_picture_url)
           SELECT $1::varchar, $2::varchar, $3::varchar, $4::varchar, $5::varchar, $6::text
           WHERE NOT EXISTS (SELECT 1 FROM identity_tombstones t
                             WHERE t.identity_provider = $3 AND t.identity_sub = $4)
           ON CONFLICT (identity_provider, identity_sub) WHERE identity_provider IS NOT NULL
           DO UPDATE SET email = EXCLUDED.email,
                         display_name = EXCLUDED.display_name,
                         identity_picture_url = EXCLUDED.identity_picture_url,
                         updated_at = now() AT TIME ZONE 'UTC'
           WHERE users.released_email IS NULL
           RETURNING id, username, email, is_active, created_at, updated_at, identity_provider,
                     identity_sub, display_name, identity_picture_url, role, last_login_at,
                     identity_updated_at, identity_role_updated_at, role_source, released_email,
                     (xmax = 0) AS "created!""#,
        username,
        profile.email.as_str(),
        profile.identity.provider.as_str(),
        profile.identity.subject.as_str(),
        profile.display_name.as_ref().map(|d| d.as_str()),
        profile.picture_url.as_ref().map(|p| p.as_str()),
    )
    .fetch_optional(conn)
    .await?;
    // No row: the identity was deleted at its provider (a tombstone; or, for a user deleted while
    // this statement ran, its released address, re-checked on the row's latest version).
    let Some(row) = row else {
        return Ok(None);
    };
    let user = User::from(UserRow {
        id: row.id,
        username: row.username,
        email: row.email,
        is_active: row.is_active,
        created_at: row.created_at,
        updated_at: row.updated_at,
        identity_provider: row.identity_provider,
        identity_sub: row.identity_sub,
        display_name: row.display_name,
        identity_picture_url: row.identity_picture_url,
        role: row.role,
        last_login_at: row.last_login_at,
        identity_updated_at: row.identity_updated_at,
        identity_role_updated_at: row.identity_role_updated_at,
        role_source: row.role_source,
        released_email: row.released_email,
    });
    Ok(Some(SignIn {
        user,
        created: row.created,
    }))
}

/// Links an existing user (say, one created before identity sign-in) to an identity, and returns the
/// user.
///
/// Refuses with [`Error::IdentityTaken`] when another user holds the identity, with
/// [`Error::AlreadyLinked`] when this user holds a different identity (never replaced silently), and
/// with [`Error::UserNotFound`]; an identity its provider deleted (a tombstone) is never linked:
/// [`Error::IdentityDeleted`]. Linking a user to the identity it already holds changes nothing but
/// `updated_at`. Given a transaction, it runs in a savepoint, so an error leaves it usable.
#[expect(
    clippy::manual_async_fn,
    reason = "the `Send` bound in the signature lets callers spawn it (an `async fn` generic over `Acquire` is not provably `Send`)"
)]
pub fn link_identity<'a, 'c, A>(
    conn: A,
    id: UserId,
    identity: &'a Identity,
) -> impl Future<Output = Result<User, Error>> + Send + 'a
where
    A: Acquire<'c, Database = Postgres> + Send + 'a,
{
    async move {
        let mut conn = conn.acquire().await?;
        link_identity_on(&mut conn, id, identity).await
    }
}

async fn link_identity_on(
    conn: &mut PgConnection,
    id: UserId,
    identity: &Identity,
) -> Result<User, Error> {
    let updated = attempt(conn, async |c| {
        sqlx::query_as!(
            UserRow,
            r#"UPDATE users
               SET identity_provider = $2, identity_sub = $3, updated_at = now() AT TIME ZONE 'UTC'
               WHERE id = $1
                 AND (identity_provider IS NULL OR (identity_provider = $2 AND identity_sub = $3))
                 AND NOT EXISTS (SELECT 1 FROM identity_tombstones t
                                 WHERE t.identity_provider = $2 AND t.identity_sub = $3)
               RETURNING id, username, email, is_active, created_at, updated_at, identity_provider,
                         identity_sub, display_name, identity_picture_url, role, last_login_at,
                         identity_updated_at, identity_role_updated_at, role_source, released_email"#,
            id.0,
            identity.provider.as_str(),
            identity.subject.as_str(),
        )
        .fetch_optional(c)
        .await
    })
    .await?;
    match updated {
        Ok(Some(row)) => Ok(User::from(row)),
        Ok(None) if is_tombstoned(&mut *conn, identity).await? => Err(Error::IdentityDeleted {
            provider: identity.provider.as_str().to_owned(),
            subject: identity.subject.as_str().to_owned(),
        }),
        Ok(None) => match find_by_id(&mut *conn, id).await? {
            Some(_) => Err(Error::AlreadyLinked { user_id: id }),
            None => Err(Error::UserNotFound { user_id: id }),
        },
        Err(e) if unique_violation(&e) == Some("users_identity_provider_sub_idx") => {
            Err(Error::IdentityTaken {
                provider: identity.provider.as_str().to_owned(),
                subject: identity.subject.as_str().to_owned(),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether the identity's provider deleted it (a tombstone).
async fn is_tombstoned(conn: &mut PgConnection, identity: &Identity) -> Result<bool, Error> {
    let found = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM identity_tombstones
                          WHERE identity_provider = $1 AND identity_sub = $2) AS "found!""#,
        identity.provider.as_str(),
        identity.subject.as_str(),
    )
    .fetch_one(conn)
    .await?;
    Ok(found)
}

/// Records a login now (`last_login_at`, UTC) and returns the user; [`Error::UserNotFound`] when there
/// is no such user.
pub async fn record_login(executor: impl PgExecutor<'_>, id: UserId) -> Result<User, Error> {
    let row = sqlx::query_as!(
        UserRow,
        r#"UPDATE users
           SET last_login_at = now() AT TIME ZONE 'UTC', updated_at = now() AT TIME ZONE 'UTC'
           WHERE id = $1
           RETURNING id, username, email, is_active, created_at, updated_at, identity_provider,
                     identity_sub, display_name, identity_picture_url, role, last_login_at,
                     identity_updated_at, identity_role_updated_at, role_source, released_email"#,
        id.0,
    )
    .fetch_optional(executor)
    .await?;
    found(row, id)
}

/// Sets a user's role by hand and returns the user; [`Error::UserNotFound`] when there is no such
/// user.
///
/// The role is recorded as set by hand, versioned with the database's clock, and holds until Clerk's
/// role itself changes: a Clerk record replaces it only when it is newer than this change and carries
/// a role other than the last one Clerk gave (see the [Clerk rules](crate::clerk)). So a user demoted
/// here stays demoted when Clerk re-sends the user with the old role (after they edit their name,
/// say).
pub async fn set_role(
    executor: impl PgExecutor<'_>,
    id: UserId,
    role: Role,
) -> Result<User, Error> {
    let row = sqlx::query_as!(
        UserRow,
        r#"UPDATE users
           SET role = $2, role_source = 'manual',
               clerk_role = CASE WHEN role_source = 'clerk' THEN role ELSE clerk_role END,
               identity_role_updated_at = now() AT TIME ZONE 'UTC',
               updated_at = now() AT TIME ZONE 'UTC'
           WHERE id = $1
           RETURNING id, username, email, is_active, created_at, updated_at, identity_provider,
                     identity_sub, display_name, identity_picture_url, role, last_login_at,
                     identity_updated_at, identity_role_updated_at, role_source, released_email"#,
        id.0,
        role as Role,
    )
    .fetch_optional(executor)
    .await?;
    found(row, id)
}

/// Deactivates a user (`is_active = false`), keeping the row and its identity, and returns the user;
/// [`Error::UserNotFound`] when there is no such user.
pub async fn deactivate(executor: impl PgExecutor<'_>, id: UserId) -> Result<User, Error> {
    let row = sqlx::query_as!(
        UserRow,
        r#"UPDATE users SET is_active = false, updated_at = now() AT TIME ZONE 'UTC'
           WHERE id = $1
           RETURNING id, username, email, is_active, created_at, updated_at, identity_provider,
                     identity_sub, display_name, identity_picture_url, role, last_login_at,
                     identity_updated_at, identity_role_updated_at, role_source, released_email"#,
        id.0,
    )
    .fetch_optional(executor)
    .await?;
    found(row, id)
}

/// Lists the users with a role, by id, a page at a time: at most `limit` users with an id greater than
/// `after` (`None` for the first page; then the last id of the previous page).
///
/// ```no_run
/// # async fn f(pool: &sqlx::PgPool) -> Result<(), livermore_db::Error> {
/// use livermore_db::{Role, list_by_role};
///
/// let mut after = None;
/// loop {
///     let page = list_by_role(pool, Role::Admin, after, 500).await?;
///     let Some(last) = page.last() else { break };
///     after = Some(last.id);
///     for admin in &page {
///         println!("{}", admin.username);
///     }
/// }
/// # Ok(())
/// # }
/// ```
pub async fn list_by_role(
    executor: impl PgExecutor<'_>,
    role: Role,
    after: Option<UserId>,
    limit: u32,
) -> Result<Vec<User>, Error> {
    let rows = sqlx::query_as!(
        UserRow,
        r#"SELECT id, username, email, is_active, created_at, updated_at, identity_provider,
                  identity_sub, display_name, identity_picture_url, role, last_login_at,
                  identity_updated_at, identity_role_updated_at, role_source, released_email
           FROM users
           WHERE role = $1 AND id > $2
           ORDER BY id
           LIMIT $3"#,
        role as Role,
        after.map_or(0, |id| id.0),
        i64::from(limit),
    )
    .fetch_all(executor)
    .await?;
    Ok(rows.into_iter().map(User::from).collect())
}
