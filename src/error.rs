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
