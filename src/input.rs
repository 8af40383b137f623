//! Validated inputs: each type can only hold a value that fits its column and rules, so the functions
//! that take them never send bad input to the database ("parse, don't validate").
//!
//! Every constructor rejects NUL characters, which PostgreSQL text cannot hold.

use std::fmt;

use crate::error::Error;

fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidInput {
        field,
        reason: reason.into(),
    }
}

/// Rejects what no column can store, and values longer than `max` characters (PostgreSQL's
/// `varchar(n)` counts characters, not bytes).
fn check_common(field: &'static str, value: &str, max: Option<usize>) -> Result<(), Error> {
    if value.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.contains('\0') {
        return Err(invalid(field, "must not contain NUL characters"));
    }
    if let Some(max) = max {
        let chars = value.chars().count();
        if chars > max {
            return Err(invalid(
                field,
                format!("must be at most {max} characters, got {chars}"),
            ));
        }
    }
    Ok(())
}

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The validated value.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The validated value, owned.
            pub fn into_inner(self) -> String {
                self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self, Error> {
                Self::parse(s)
            }
        }
    };
}

string_newtype! {
    /// An identity provider's name, such as `clerk` or `google`: trimmed and lower-cased, 1 to 20
    /// characters of `a-z`, `0-9`, `_` and `-`.
    ///
    /// ```
    /// use livermore_db::Provider;
    ///
    /// assert_eq!(Provider::parse(" Clerk ").unwrap().as_str(), "clerk");
    /// assert!(Provider::parse("").is_err());
    /// assert!(Provider::parse("my provider").is_err());
    /// ```
    Provider
}

impl Provider {
    /// The longest provider name `users.identity_provider` holds.
    pub const MAX_CHARS: usize = 20;

    /// Parses a provider name (see the type's docs).
    pub fn parse(s: &str) -> Result<Self, Error> {
        let s = s.trim().to_ascii_lowercase();
        check_common("provider", &s, Some(Self::MAX_CHARS))?;
        if let Some(bad) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
        {
            return Err(invalid(
                "provider",
                format!("may hold only a-z, 0-9, '_' and '-', found {bad:?}"),
            ));
        }
        Ok(Provider(s))
    }
}

string_newtype! {
    /// The provider's identifier of a user (OIDC `sub`, Clerk's `user_…` id): 1 to 255 characters,
    /// kept exactly as given (it is opaque; not even trimmed).
    Subject
}

impl Subject {
    /// The longest subject `users.identity_sub` holds.
    pub const MAX_CHARS: usize = 255;

    /// Parses a subject (see the type's docs).
    pub fn parse(s: &str) -> Result<Self, Error> {
        check_common("subject", s, Some(Self::MAX_CHARS))?;
        Ok(Subject(s.to_owned()))
    }
}

string_newtype! {
    /// An email address: trimmed, 1 to 255 characters, with a non-empty part before and after its
    /// last `@`. Its case is kept as given.
    ///
    /// ```
    /// use livermore_db::Email;
    ///
    /// let email = Email::parse("  Ada.Lovelace+trading@example.com ").unwrap();
    /// assert_eq!(email.as_str(), "Ada.Lovelace+trading@example.com");
    /// assert_eq!(email.local_part(), "Ada.Lovelace+trading");
    /// assert!(Email::parse("no-at-sign").is_err());
    /// ```
    Email
}

impl Email {
    /// The longest address `users.email` holds.
    pub const MAX_CHARS: usize = 255;

    /// Parses an email address (see the type's docs).
    pub fn parse(s: &str) -> Result<Self, Error> {
        let s = s.trim();
        check_common("email", s, Some(Self::MAX_CHARS))?;
        match s.rsplit_once('@') {
            Some((local, domain)) if !local.is_empty() && !domain.is_empty() => {
                Ok(Email(s.to_owned()))
            }
            Some(_) => Err(invalid(
                "email",
                "needs a non-empty part before and after '@'",
            )),
            None => Err(invalid("email", "must contain '@'")),
        }
    }

    /// The part before the last `@`.
    pub fn local_part(&self) -> &str {
        self.0.rsplit_once('@').map_or(&self.0, |(local, _)| local)
    }
}

string_newtype! {
    /// A display name: trimmed, and cut to 100 characters (never inside a UTF-8 character) when
    /// longer, because a provider's profile name is not the user's fault. Empty is rejected: pass
    /// `None` where there is no name.
    ///
    /// ```
    /// use livermore_db::DisplayName;
    ///
    /// let long = "é".repeat(150);
    /// assert_eq!(DisplayName::parse(&long).unwrap().as_str().chars().count(), 100);
    /// ```
    DisplayName
}

impl DisplayName {
    /// The longest name `users.display_name` holds; longer ones are cut to this.
    pub const MAX_CHARS: usize = 100;

    /// Parses a display name (see the type's docs).
    pub fn parse(s: &str) -> Result<Self, Error> {
        let s = s.trim();
        check_common("display_name", s, None)?;
        let cut = s
            .char_indices()
            .nth(Self::MAX_CHARS)
            .map_or(s.len(), |(i, _)| i);
        Ok(DisplayName(s[..cut].trim_end().to_owned()))
    }
}

string_newtype! {
    /// A picture URL: `http://` or `https://` (any case) followed by a host, with no whitespace or
    /// control characters; at most 2048 characters. Kept as given.
    ///
    /// ```
    /// use livermore_db::PictureUrl;
    ///
    /// assert!(PictureUrl::parse("https://img.clerk.com/abc.png").is_ok());
    /// assert!(PictureUrl::parse("javascript:alert(1)").is_err());
    /// ```
    PictureUrl
}

impl PictureUrl {
    /// The longest URL accepted.
    pub const MAX_CHARS: usize = 2048;

    /// Parses a picture URL (see the type's docs).
    pub fn parse(s: &str) -> Result<Self, Error> {
        let s = s.trim();
        check_common("picture_url", s, Some(Self::MAX_CHARS))?;
        let rest = s
            .split_once("://")
            .filter(|(scheme, _)| {
                scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")
            })
            .map(|(_, rest)| rest)
            .ok_or_else(|| invalid("picture_url", "must start with http:// or https://"))?;
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        if host.is_empty() {
            return Err(invalid("picture_url", "has no host"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                "picture_url",
                "must not contain whitespace or control characters",
            ));
        }
        Ok(PictureUrl(s.to_owned()))
    }
}

/// An identity at a provider: who the provider says the user is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The provider, e.g. `clerk`.
    pub provider: Provider,
    /// The provider's id of the user.
    pub subject: Subject,
}

impl Identity {
    /// Parses both parts.
    ///
    /// ```
    /// use livermore_db::Identity;
    ///
    /// let id = Identity::parse("clerk", "user_2NNEqL2nrIRdJ194ndJqAHwEfxC").unwrap();
    /// assert_eq!(id.provider.as_str(), "clerk");
    /// ```
    pub fn parse(provider: &str, subject: &str) -> Result<Self, Error> {
        Ok(Identity {
            provider: Provider::parse(provider)?,
            subject: Subject::parse(subject)?,
        })
    }
}

/// What a provider says about a user at sign-in: the input of [`sign_in`](crate::sign_in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Who the user is at the provider.
    pub identity: Identity,
    /// The user's email address.
    pub email: Email,
    /// The user's name, if the provider has one.
    pub display_name: Option<DisplayName>,
    /// The user's picture, if the provider has one.
    pub picture_url: Option<PictureUrl>,
}

impl Profile {
    /// Parses a provider profile from raw strings, failing on the first bad field with
    /// [`Error::InvalidInput`] naming it. An empty or all-blank display name or picture URL counts as
    /// none.
    ///
    /// ```
    /// use livermore_db::Profile;
    ///
    /// let p = Profile::parse("google", "1076915035", "ada@example.com", Some("Ada"), Some("")).unwrap();
    /// assert_eq!(p.display_name.unwrap().as_str(), "Ada");
    /// assert!(p.picture_url.is_none());
    /// ```
    pub fn parse(
        provider: &str,
        subject: &str,
        email: &str,
        display_name: Option<&str>,
        picture_url: Option<&str>,
    ) -> Result<Self, Error> {
        fn present(s: Option<&str>) -> Option<&str> {
            s.filter(|s| !s.trim().is_empty())
        }
        Ok(Profile {
            identity: Identity::parse(provider, subject)?,
            email: Email::parse(email)?,
            display_name: present(display_name).map(DisplayName::parse).transpose()?,
            picture_url: present(picture_url).map(PictureUrl::parse).transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(r: Result<impl fmt::Debug, Error>) -> &'static str {
        match r {
            Err(Error::InvalidInput { field, .. }) => field,
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    #[test]
    fn provider_is_trimmed_lowercased_and_bounded() {
        assert_eq!(Provider::parse("  GOOGLE\t").unwrap().as_str(), "google");
        assert_eq!(Provider::parse(&"a".repeat(20)).unwrap().as_str().len(), 20);
        // Digits, '_' and '-' are allowed anywhere.
        for good in ["oidc2", "my_idp", "azure-ad", "2-a_b"] {
            assert_eq!(Provider::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            "   ",
            &"a".repeat(21),
            "clerk\0",
            "o'brien",
            "a b",
            "clérk",
        ] {
            assert_eq!(field_of(Provider::parse(bad)), "provider", "{bad:?}");
        }
    }

    #[test]
    fn subject_is_kept_verbatim_and_bounded_in_characters() {
        assert_eq!(Subject::parse(" x ").unwrap().as_str(), " x ");
        assert!(
            Subject::parse(&"é".repeat(255)).is_ok(),
            "255 two-byte characters fit"
        );
        for bad in ["", "a\0b", &"a".repeat(256)] {
            assert_eq!(field_of(Subject::parse(bad)), "subject");
        }
    }

    #[test]
    fn email_needs_both_parts() {
        assert_eq!(Email::parse("a@b").unwrap().local_part(), "a");
        assert_eq!(Email::parse("\"a@b\"@c.d").unwrap().local_part(), "\"a@b\"");
        let too_long = format!("{}@example.com", "a".repeat(250));
        for bad in ["", "a", "@b", "a@", "a@b\0", too_long.as_str()] {
            assert_eq!(field_of(Email::parse(bad)), "email", "{bad:?}");
        }
    }

    #[test]
    fn display_name_is_cut_at_a_character_boundary() {
        let name = format!("{}{}", "a".repeat(99), "😀😀");
        let cut = DisplayName::parse(&name).unwrap();
        assert_eq!(cut.as_str().chars().count(), 100);
        assert!(cut.as_str().ends_with('😀'));
        assert_eq!(DisplayName::parse(" Ada ").unwrap().as_str(), "Ada");
        assert_eq!(field_of(DisplayName::parse("  ")), "display_name");
        assert_eq!(field_of(DisplayName::parse("a\0")), "display_name");
    }

    #[test]
    fn picture_url_is_http_or_https_with_a_host() {
        for good in ["https://a.b/c.png", "HTTP://a", "https://a.b?x=1#y"] {
            assert!(PictureUrl::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "ftp://a.b/c",
            "javascript:alert(1)",
            "https://",
            "https:///path",
            "https://a b",
            "data:image/png;base64,AAAA",
            "//a.b/c",
        ] {
            assert_eq!(field_of(PictureUrl::parse(bad)), "picture_url", "{bad:?}");
        }
    }

    /// Each length limit holds exactly at its boundary, counted in characters (not bytes): the
    /// longest value the column takes passes, one character more is `InvalidInput` on that field.
    #[test]
    fn every_length_limit_is_exact_at_its_boundary() {
        let url =
            |chars: usize| format!("https://a.b/{}", "é".repeat(chars - "https://a.b/".len()));
        assert!(PictureUrl::parse(&url(PictureUrl::MAX_CHARS)).is_ok());
        assert_eq!(
            field_of(PictureUrl::parse(&url(PictureUrl::MAX_CHARS + 1))),
            "picture_url"
        );
        let email = |chars: usize| format!("{}@b", "é".repeat(chars - 2));
        assert!(Email::parse(&email(Email::MAX_CHARS)).is_ok());
        assert_eq!(
            field_of(Email::parse(&email(Email::MAX_CHARS + 1))),
            "email"
        );
        assert!(Subject::parse(&"é".repeat(Subject::MAX_CHARS)).is_ok());
        assert_eq!(
            field_of(Subject::parse(&"é".repeat(Subject::MAX_CHARS + 1))),
            "subject"
        );
        assert!(Provider::parse(&"a".repeat(Provider::MAX_CHARS)).is_ok());
        assert_eq!(
            field_of(Provider::parse(&"a".repeat(Provider::MAX_CHARS + 1))),
            "provider"
        );
        let name = DisplayName::parse(&"é".repeat(DisplayName::MAX_CHARS + 1)).unwrap();
        assert_eq!(name.as_str().chars().count(), DisplayName::MAX_CHARS);
        assert_eq!(
            (PictureUrl::MAX_CHARS, Email::MAX_CHARS, Subject::MAX_CHARS),
            (2048, 255, 255),
            "the columns' sizes (identity_picture_url is TEXT: 2048 is the crate's own bound)"
        );
        assert_eq!((Provider::MAX_CHARS, DisplayName::MAX_CHARS), (20, 100));
    }

    #[test]
    fn profile_reports_the_first_bad_field() {
        assert_eq!(
            field_of(Profile::parse("", "s", "a@b", None, None)),
            "provider"
        );
        assert_eq!(
            field_of(Profile::parse("p", "", "a@b", None, None)),
            "subject"
        );
        assert_eq!(
            field_of(Profile::parse("p", "s", "ab", None, None)),
            "email"
        );
        assert_eq!(
            field_of(Profile::parse(
                "p",
                "s",
                "a@b",
                None,
                Some("file:///etc/passwd")
            )),
            "picture_url"
        );
        let p = Profile::parse("p", "s", "a@b", Some("  "), None).unwrap();
        assert_eq!(p.display_name, None);
    }
}
