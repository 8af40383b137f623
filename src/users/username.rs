//! Usernames for new users: derived from the address, then numbered, then random suffixes.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};

use sqlx::PgConnection;

use crate::error::Error;
use crate::input::Email;

/// The most candidates [`sign_in`](crate::sign_in) tries for a new user's username before giving up with
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
pub(crate) fn unique_violation(e: &sqlx::Error) -> Option<&str> {
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => db.constraint(),
        _ => None,
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

    /// After the username was found taken: `Ok(())` to try again with the next one, or
    /// [`Error::UsernameExhausted`].
    pub(crate) async fn username_taken(&mut self, conn: &mut PgConnection) -> Result<(), Error> {
        if self.attempts >= USERNAME_ATTEMPTS {
            return Err(Error::UsernameExhausted {
                base: self.base.clone(),
                attempts: self.attempts,
            });
        }
        self.username = if self.attempts == 1 {
            first_free_numbered(conn, &self.base).await?
        } else {
            with_suffix(&self.base, &random_suffix())
        };
        self.attempts += 1;
        Ok(())
    }

    /// After a failed attempt: `Ok(())` to try again (with the next username), or the final error.
    pub(crate) async fn after(
        &mut self,
        conn: &mut PgConnection,
        e: sqlx::Error,
    ) -> Result<(), Error> {
        match self.next_after(unique_violation(&e)) {
            Next::OtherUsername => self.username_taken(conn).await,
            Next::Again => Ok(()),
            Next::EmailTaken => Err(Error::EmailTaken {
                email: self.email.as_str().to_owned(),
            }),
            Next::Fail => Err(e.into()),
        }
    }

    /// The decision after an attempt failed on `constraint` (a unique violation's, or none): the
    /// first collision on the e-mail index is retried as it is (a concurrent first sign-in of the
    /// same identity commits its row, and the retry then finds it by identity); a second one is
    /// another user's address.
    fn next_after(&mut self, constraint: Option<&str>) -> Next {
        match constraint {
            Some("users_username_unique") => Next::OtherUsername,
            Some("users_email_unique") if !self.email_retried => {
                self.email_retried = true;
                Next::Again
            }
            Some("users_email_unique") => Next::EmailTaken,
            _ => Next::Fail,
        }
    }
}

/// What [`UsernameRetries::after`] does next.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Try the next username.
    OtherUsername,
    /// Try the same statement again.
    Again,
    /// Give up: the address is another user's.
    EmailTaken,
    /// Give up with the error itself.
    Fail,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a unique violation names the constraint the retries decide by: a check violation
    /// names its constraint too, and is not one. Real errors, from PostgreSQL (`DATABASE_URL`, as
    /// every test has it).
    #[tokio::test]
    #[allow(clippy::disallowed_methods)] // fixed statements that must fail, as in tests/it
    async fn only_unique_violations_name_their_constraint() {
        use sqlx::{Connection, Executor};
        let url = std::env::var("DATABASE_URL")
            .expect("DATABASE_URL: this test needs PostgreSQL's own errors (make test sets it)");
        let mut conn = PgConnection::connect(&url).await.unwrap();
        conn.execute(
            "CREATE TEMP TABLE t (a int CONSTRAINT t_a_unique UNIQUE, \
                                  b int CONSTRAINT t_b_positive CHECK (b > 0))",
        )
        .await
        .unwrap();
        conn.execute("INSERT INTO t (a) VALUES (1)").await.unwrap();
        let unique = conn
            .execute("INSERT INTO t (a) VALUES (1)")
            .await
            .unwrap_err();
        let check = conn
            .execute("INSERT INTO t (b) VALUES (0)")
            .await
            .unwrap_err();
        assert_eq!(unique_violation(&unique), Some("t_a_unique"), "{unique:?}");
        let named = check.as_database_error().and_then(|db| db.constraint());
        assert_eq!(
            named,
            Some("t_b_positive"),
            "the check names its constraint"
        );
        assert_eq!(unique_violation(&check), None, "{check:?}");
        assert_eq!(unique_violation(&sqlx::Error::RowNotFound), None);
    }

    /// A concurrent first sign-in of the same identity can collide on the e-mail index before its
    /// row is visible: the first such collision is retried (the retry finds the row by identity),
    /// only a second one is `EmailTaken`; a username collision moves to the next name; anything
    /// else fails as it is.
    #[test]
    fn the_first_email_collision_is_retried_and_the_second_is_final() {
        let email = Email::parse("ada@example.com").unwrap();
        let mut retries = UsernameRetries::new(&email);
        assert_eq!(retries.next_after(Some("users_email_unique")), Next::Again);
        assert_eq!(
            retries.next_after(Some("users_email_unique")),
            Next::EmailTaken
        );
        assert_eq!(
            retries.next_after(Some("users_email_unique")),
            Next::EmailTaken
        );
        let mut retries = UsernameRetries::new(&email);
        assert_eq!(
            retries.next_after(Some("users_username_unique")),
            Next::OtherUsername
        );
        assert_eq!(
            retries.next_after(Some("users_username_unique")),
            Next::OtherUsername
        );
        assert_eq!(retries.next_after(Some("users_email_unique")), Next::Again);
        assert_eq!(retries.next_after(Some("users_pkey")), Next::Fail);
        assert_eq!(retries.next_after(None), Next::Fail);
    }

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
