//! A `users` row: the public [`User`], the row as the database returns it, and what functions return.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::id::UserId;
use crate::role::Role;

/// A row of `users`, every column typed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The primary key.
    pub id: UserId,
    /// Unique; derived from the email's local part for users created by [`sign_in`](crate::sign_in).
    pub username: String,
    /// Unique email address.
    pub email: String,
    /// `false` once [`deactivate`](crate::deactivate)d; the row and its identity stay.
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
    /// The last [`record_login`](crate::record_login), or the provider's last sign-in when synced (UTC).
    pub last_login_at: Option<DateTime<Utc>>,
    /// The provider's `updated_at` of the last synced profile (UTC); `None` when never synced.
    pub identity_updated_at: Option<DateTime<Utc>>,
    /// The role's version (UTC): the provider's `updated_at` of the Clerk event that set it, or the
    /// database's clock when [`set_role`](crate::set_role) set it.
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
    /// [`set_role`](crate::set_role), or the default: a Clerk event without a role keeps it.
    #[default]
    Manual,
    /// A Clerk event: a newer Clerk event without a valid role revokes it to `user`.
    Clerk,
}

/// A `users` row as the database returns it: `timestamp` columns are naive, holding UTC.
pub(crate) struct UserRow {
    pub(crate) id: UserId,
    pub(crate) username: String,
    pub(crate) email: String,
    pub(crate) is_active: bool,
    pub(crate) created_at: NaiveDateTime,
    pub(crate) updated_at: NaiveDateTime,
    pub(crate) identity_provider: Option<String>,
    pub(crate) identity_sub: Option<String>,
    pub(crate) display_name: Option<String>,
    pub(crate) identity_picture_url: Option<String>,
    pub(crate) role: Role,
    pub(crate) last_login_at: Option<NaiveDateTime>,
    pub(crate) identity_updated_at: Option<NaiveDateTime>,
    pub(crate) identity_role_updated_at: Option<NaiveDateTime>,
    pub(crate) role_source: RoleSource,
    pub(crate) released_email: Option<String>,
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

/// What [`sign_in`](crate::sign_in) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignIn {
    /// The user, as stored after the sign-in.
    pub user: User,
    /// `true` when this sign-in created the user, `false` when it updated an existing one.
    pub created: bool,
}

/// The user an `UPDATE … WHERE id = $1 RETURNING …` wrote, or [`Error::UserNotFound`].
pub(crate) fn found(row: Option<UserRow>, id: UserId) -> Result<User, Error> {
    row.map(User::from)
        .ok_or(Error::UserNotFound { user_id: id })
}
