use crate::id::UserId;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A string that is not one of the [`Role`](crate::Role) spellings.
    #[error("invalid role {value:?}; valid roles are: {valid}")]
    InvalidRole {
        /// The rejected value (cut to 64 characters).
        value: String,
        /// The valid spellings, comma-separated.
        valid: &'static str,
    },

    /// An input failed validation before any SQL ran.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// Which input: `provider`, `subject`, `email`, `display_name`, `picture_url`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The email address belongs to a different user (`users_email_unique`). Nothing was written: an
    /// existing account is linked to an identity only by an explicit
    /// [`link_identity`](crate::link_identity). The message leaves the address out of logs.
    #[error("the email address is already used by another user")]
    EmailTaken {
        /// The address that is taken.
        email: String,
    },

    /// The identity (provider and subject) already belongs to another user
    /// (`users_identity_provider_sub_idx`).
    #[error("the {provider} identity is already linked to another user")]
    IdentityTaken {
        /// The identity's provider.
        provider: String,
        /// The identity's subject.
        subject: String,
    },

    /// The identity was deleted at its provider (Clerk's `user.deleted` left a tombstone): it never
    /// signs in again, and nothing was written. A new account at the provider is a new identity.
    #[error("the {provider} identity was deleted at the provider and cannot sign in")]
    IdentityDeleted {
        /// The identity's provider.
        provider: String,
        /// The identity's subject.
        subject: String,
    },

    /// The user is already linked to a different identity; it is never replaced silently.
    #[error("user {user_id} is already linked to a different identity")]
    AlreadyLinked {
        /// The user.
        user_id: UserId,
    },

    /// No user has this id.
    #[error("no user with id {user_id}")]
    UserNotFound {
        /// The id looked up.
        user_id: UserId,
    },

    /// Every username tried for a new user was taken, even with suffixes.
    #[error("no free username derived from {base:?} after {attempts} attempts")]
    UsernameExhausted {
        /// The username derived from the email's local part.
        base: String,
        /// How many candidates were tried.
        attempts: u32,
    },

    /// An identity look-up through [`Db`](crate::Db) that was sent in one statement with others
    /// failed: every call the statement carried gets this, sharing the statement's error.
    #[error("identity look-up failed: {0}")]
    Lookup(#[source] std::sync::Arc<sqlx::Error>),

    /// A call through [`Db`](crate::Db) did not finish within its deadline
    /// ([`DbBuilder::call_timeout`](crate::DbBuilder::call_timeout)); whatever it had open was
    /// rolled back.
    #[error("the call did not finish within {0:?}")]
    Timeout(std::time::Duration),

    /// A pending migration cannot run until an operator acts on the database; the reason says how.
    #[error("migrating is blocked: {reason}")]
    MigrationBlocked {
        /// What is in the way and what to do.
        reason: String,
    },

    /// A migration could not be applied, reverted or verified.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// Any other database error: connection, I/O, protocol, or a server error not mapped above.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// A user-supplied value as shown in an error message: at most `max` characters, never split inside
/// a UTF-8 character, with `…` where it was cut.
pub(crate) fn shown(value: &str, max: usize) -> String {
    match value.char_indices().nth(max) {
        None => value.to_owned(),
        Some((cut, _)) => {
            let mut s = String::from(&value[..cut]);
            s.push('…');
            s
        }
    }
}
