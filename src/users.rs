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

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{Acquire, PgConnection, PgExecutor, Postgres};

use crate::error::Error;
use crate::input::{Email, Identity, Profile};
use crate::role::Role;
use crate::tx::attempt;

/// A user's id (`users.id`, a `serial`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type,
)]
#[sqlx(transparent)]
#[serde(transparent)]
pub struct UserId(pub i32);

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A row of `users`, every column typed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The primary key.
    pub id: UserId,
    /// Unique; derived from the email's local part for users created by [`sign_in`].
    pub username: String,
    /// Unique email address.
    pub email: String,
    /// `false` once [`deactivate`]d; the row and its identity stay.
    pub is_active: bool,
    /// When the row was created (UTC).
    pub created_at: DateTime<Utc>,
    /// When the row was last written (UTC).
    pub updated_at: DateTime<Utc>,
    /// The identity provider, e.g. `clerk`; `None` for a user without an external identity.
    pub identity_provider: Option<String>,
    /// The provider's id of the user; `None` exactly when `identity_provider` is.
    pub identity_sub: Option<String>,
    /// The name the provider gave.
    pub display_name: Option<String>,
    /// The picture the provider gave.
    pub identity_picture_url: Option<String>,
    /// What the user may do.
    pub role: Role,
    /// The last [`record_login`], or the provider's last sign-in when synced (UTC).
    pub last_login_at: Option<DateTime<Utc>>,
    /// The provider's `updated_at` of the last synced profile (UTC); `None` when never synced.
    pub identity_updated_at: Option<DateTime<Utc>>,
    /// The role's version (UTC): the provider's `updated_at` of the Clerk event that set it, or the
    /// database's clock when [`set_role`] set it.
    pub identity_role_updated_at: Option<DateTime<Utc>>,
    /// Who set the role last (see the [Clerk rules](crate::clerk)).
    pub role_source: RoleSource,
    /// The address a user deleted at Clerk held, released for a new sign-up (`email` then holds a
    /// `deleted+…@deleted.invalid` placeholder); `None` otherwise.
    pub released_email: Option<String>,
}

/// Who set a user's role last (`users.role_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "varchar", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum RoleSource {
    /// [`set_role`], or the default: a Clerk event without a role keeps it.
    #[default]
    Manual,
    /// A Clerk event: a newer Clerk event without a valid role revokes it to `user`.
    Clerk,
}

/// A `users` row as the database returns it: `timestamp` columns are naive, holding UTC.
struct UserRow {
    id: UserId,
    username: String,
    email: String,
    is_active: bool,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
    identity_provider: Option<String>,
    identity_sub: Option<String>,
    display_name: Option<String>,
    identity_picture_url: Option<String>,
    role: Role,
    last_login_at: Option<NaiveDateTime>,
    identity_updated_at: Option<NaiveDateTime>,
    identity_role_updated_at: Option<NaiveDateTime>,
    role_source: RoleSource,
    released_email: Option<String>,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> Self {
        User {
            id: r.id,
            username: r.username,
            email: r.email,
            is_active: r.is_active,
            created_at: r.created_at.and_utc(),
            updated_at: r.updated_at.and_utc(),
            identity_provider: r.identity_provider,
            identity_sub: r.identity_sub,
            display_name: r.display_name,
            identity_picture_url: r.identity_picture_url,
            role: r.role,
            last_login_at: r.last_login_at.map(|t| t.and_utc()),
            identity_updated_at: r.identity_updated_at.map(|t| t.and_utc()),
            identity_role_updated_at: r.identity_role_updated_at.map(|t| t.and_utc()),
            role_source: r.role_source,
            released_email: r.released_email,
        }
    }
}

/// What [`sign_in`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignIn {
    /// The user, as stored after the sign-in.
    pub user: User,
    /// `true` when this sign-in created the user, `false` when it updated an existing one.
    pub created: bool,
}

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

/// The most candidates [`sign_in`] tries for a new user's username before giving up with
/// [`Error::UsernameExhausted`].
pub const USERNAME_ATTEMPTS: u32 = 8;

const USERNAME_MAX_CHARS: usize = 50;

/// The username a new user gets from an email's local part (without a `+tag`): lower-cased, only `a-z`, `0-9`, `.`, `_`
/// and `-` kept, at most 50 characters; `user` when nothing is left.
pub fn username_from_email(email: &Email) -> String {
    let local = email.local_part();
    // Sub-addressing (`ada+trading@…`) is the same person: drop the tag.
    let local = local.split_once('+').map_or(local, |(name, _)| name);
    let mut name: String = local
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        .take(USERNAME_MAX_CHARS)
        .collect();
    if name.is_empty() {
        name.push_str("user");
    }
    name
}

/// `base` cut so that `base_suffix` fits the username column (the base is ASCII).
fn with_suffix(base: &str, suffix: &str) -> String {
    let keep = USERNAME_MAX_CHARS
        .saturating_sub(suffix.len() + 1)
        .min(base.len());
    format!("{}_{suffix}", &base[..keep])
}

/// A random 6-digit suffix, from the standard library's per-process random hasher keys.
fn random_suffix() -> String {
    let n = RandomState::new().hash_one(std::time::SystemTime::now()) % 1_000_000;
    format!("{n:06}")
}

/// The `constraint` of a unique violation, if `e` is one.
fn unique_violation(e: &sqlx::Error) -> Option<&str> {
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => db.constraint(),
        _ => None,
    }
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
            Ok(done) => return Ok(done),
            Err(e) => retries.after(conn, e).await?,
        }
    }
}

/// The username candidates for a new user and what to do after each failed insert: the email's
/// [`username_from_email`], then `base_N` for the first free N, then random suffixes, at most
/// [`USERNAME_ATTEMPTS`] in all. A unique violation on the email is retried once (a concurrent insert of
/// the same identity can collide there before it sees the identity), then it is [`Error::EmailTaken`].
pub(crate) struct UsernameRetries<'e> {
    email: &'e Email,
    base: String,
    username: String,
    attempts: u32,
    email_retried: bool,
}

impl<'e> UsernameRetries<'e> {
    pub(crate) fn new(email: &'e Email) -> Self {
        let base = username_from_email(email);
        UsernameRetries {
            email,
            username: base.clone(),
            base,
            attempts: 1,
            email_retried: false,
        }
    }

    /// The username to try now.
    pub(crate) fn username(&self) -> &str {
        &self.username
    }

    /// After a failed attempt: `Ok(())` to try again (with the next username), or the final error.
    pub(crate) async fn after(
        &mut self,
        conn: &mut PgConnection,
        e: sqlx::Error,
    ) -> Result<(), Error> {
        match unique_violation(&e) {
            Some("users_username_unique") if self.attempts < USERNAME_ATTEMPTS => {
                self.username = if self.attempts == 1 {
                    first_free_numbered(conn, &self.base).await?
                } else {
                    with_suffix(&self.base, &random_suffix())
                };
                self.attempts += 1;
                Ok(())
            }
            Some("users_username_unique") => Err(Error::UsernameExhausted {
                base: self.base.clone(),
                attempts: self.attempts,
            }),
            Some("users_email_unique") if !self.email_retried => {
                self.email_retried = true;
                Ok(())
            }
            Some("users_email_unique") => Err(Error::EmailTaken {
                email: self.email.as_str().to_owned(),
            }),
            _ => Err(e.into()),
        }
    }
}

async fn upsert_identity(
    conn: &mut PgConnection,
    profile: &Profile,
    username: &str,
) -> Result<SignIn, sqlx::Error> {
    let row = sqlx::query!(
        r#"INSERT INTO users (username, email, identity_provider, identity_sub, display_name,
                              identity_picture_url)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (identity_provider, identity_sub) WHERE identity_provider IS NOT NULL
           DO UPDATE SET email = EXCLUDED.email,
                         display_name = EXCLUDED.display_name,
                         identity_picture_url = EXCLUDED.identity_picture_url,
                         updated_at = now() AT TIME ZONE 'UTC'
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
    .fetch_one(conn)
    .await?;
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
    Ok(SignIn {
        user,
        created: row.created,
    })
}

/// `base_N` for the smallest N ≥ 2 that no user has, as the database sees it now.
async fn first_free_numbered(conn: &mut PgConnection, base: &str) -> Result<String, Error> {
    let mut free = free_usernames(conn, &[(base, 1)], 2).await?;
    Ok(free
        .remove(base)
        .and_then(|names| names.into_iter().next())
        .unwrap_or_else(|| with_suffix(base, &random_suffix())))
}

/// For each `(base, need)`, the first `need` usernames in the order `base` (when `from` is 1),
/// `base_2`, `base_3`, … that no stored user has. Each round is one index look-up of all candidates
/// (`username = ANY(…)`); a base whose candidates were all taken gets twice as many the next round.
pub(crate) async fn free_usernames(
    conn: &mut PgConnection,
    wanted: &[(&str, usize)],
    from: u32,
) -> Result<HashMap<String, Vec<String>>, sqlx::Error> {
    let name = |base: &str, n: u32| {
        if n <= 1 {
            base.to_owned()
        } else {
            with_suffix(base, &n.to_string())
        }
    };
    let mut free: HashMap<String, Vec<String>> = HashMap::new();
    // (base, still needed, next n to try, how many to try this round)
    let mut open: Vec<(&str, usize, u32, u32)> = wanted
        .iter()
        .filter(|(_, need)| *need > 0)
        .map(|&(base, need)| (base, need, from.max(1), need as u32))
        .collect();
    while !open.is_empty() {
        let candidates: Vec<String> = open
            .iter()
            .flat_map(|&(base, _, next, span)| {
                (next..next.saturating_add(span)).map(move |n| name(base, n))
            })
            .collect();
        let taken: HashSet<String> = sqlx::query_scalar!(
            r#"SELECT username FROM users WHERE username = ANY($1::varchar[])"#,
            &candidates,
        )
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect();
        open = open
            .into_iter()
            .filter_map(|(base, need, next, span)| {
                let got = free.entry(base.to_owned()).or_default();
                let mut still = need;
                for n in next..next.saturating_add(span) {
                    let candidate = name(base, n);
                    if still > 0 && !taken.contains(&candidate) {
                        got.push(candidate);
                        still -= 1;
                    }
                }
                (still > 0 && next < 1_000_000)
                    .then(|| (base, still, next + span, span.saturating_mul(2)))
            })
            .collect();
    }
    Ok(free)
}

/// Links an existing user (say, one created before identity sign-in) to an identity, and returns the
/// user.
///
/// Refuses with [`Error::IdentityTaken`] when another user holds the identity, with
/// [`Error::AlreadyLinked`] when this user holds a different identity (never replaced silently), and
/// with [`Error::UserNotFound`]. Linking a user to the identity it already holds changes nothing but
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
        Ok(None) => match find_by_id(&mut *conn, id).await? {
            Some(_) => Err(Error::AlreadyLinked { user_id: id.0 }),
            None => Err(Error::UserNotFound { user_id: id.0 }),
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

/// The user an `UPDATE … WHERE id = $1 RETURNING …` wrote, or [`Error::UserNotFound`].
fn found(row: Option<UserRow>, id: UserId) -> Result<User, Error> {
    row.map(User::from)
        .ok_or(Error::UserNotFound { user_id: id.0 })
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
/// The role is recorded as set by hand, versioned with the database's clock: a later Clerk event
/// without a valid role keeps it, and only a Clerk event newer than this change with a valid role
/// replaces it (see the [Clerk rules](crate::clerk)).
pub async fn set_role(
    executor: impl PgExecutor<'_>,
    id: UserId,
    role: Role,
) -> Result<User, Error> {
    let row = sqlx::query_as!(
        UserRow,
        r#"UPDATE users
           SET role = $2, role_source = 'manual',
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_come_from_the_local_part_and_fit() {
        let u = |e: &str| username_from_email(&Email::parse(e).unwrap());
        assert_eq!(u("Ada.Lovelace+Trading@example.com"), "ada.lovelace");
        assert_eq!(u("o'brien@example.com"), "obrien");
        assert_eq!(u("日本@example.com"), "user");
        assert_eq!(u(&format!("{}@x.y", "a".repeat(80))).len(), 50);
    }

    #[test]
    fn suffixed_usernames_fit_the_column() {
        let base = "a".repeat(50);
        assert_eq!(with_suffix(&base, "2"), format!("{}_2", "a".repeat(48)));
        assert_eq!(with_suffix(&base, "123456").len(), 50);
        assert_eq!(with_suffix("ada", "2"), "ada_2");
        assert_eq!(random_suffix().len(), 6);
    }
}
