//! A Clerk user mapped onto the `users` columns, every value checked before any SQL runs.

use chrono::{DateTime, NaiveDate, Utc};

use super::payload::ClerkUser;
use crate::error::Error;
use crate::input::{DisplayName, Email, PictureUrl, Subject};
use crate::role::Role;

/// What `public_metadata.role` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataRole {
    /// A valid role.
    Valid(Role),
    /// No role in the metadata, or `null`.
    Absent,
    /// Something that is not a role; this says why, without the value (it comes from the request
    /// body, and notes end up in logs).
    Invalid(String),
}

/// A Clerk user mapped onto the `users` columns, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClerkProfile {
    /// Clerk's user id.
    pub subject: Subject,
    /// The primary address when Clerk verified it, else the first verified one; `None` when no address
    /// is verified (such a user is not created, and an existing user keeps its address).
    pub email: Option<Email>,
    /// First and last name joined, else the Clerk username, else none; cut to 100 characters.
    pub display_name: Option<DisplayName>,
    /// `image_url`.
    pub picture_url: Option<PictureUrl>,
    /// `public_metadata.role`.
    pub role: MetadataRole,
    /// `last_sign_in_at`, UTC.
    pub last_sign_in_at: Option<DateTime<Utc>>,
    /// `updated_at`, UTC: the profile's version.
    pub updated_at: DateTime<Utc>,
}

/// A time Clerk sent in milliseconds since the epoch, if PostgreSQL's `timestamp` can store it and it
/// is a plausible date (years 1 to 9999); chrono alone accepts times PostgreSQL rejects.
pub(crate) fn millis(field: &'static str, ms: i64) -> Result<DateTime<Utc>, Error> {
    let bad = || Error::InvalidInput {
        field,
        // Without the value: it comes from the request body, and errors end up in logs.
        reason: "is not a time in milliseconds since the epoch between the years 1 and 9999"
            .to_owned(),
    };
    let first = NaiveDate::from_ymd_opt(1, 1, 1)
        .ok_or_else(bad)?
        .and_time(Default::default());
    let last = NaiveDate::from_ymd_opt(10_000, 1, 1)
        .ok_or_else(bad)?
        .and_time(Default::default());
    let at = DateTime::from_timestamp_millis(ms).ok_or_else(bad)?;
    if at.naive_utc() < first || at.naive_utc() >= last {
        return Err(bad());
    }
    Ok(at)
}

impl ClerkUser {
    /// Maps the user onto the `users` columns. Any field that does not fit its column is
    /// [`Error::InvalidInput`] naming it; an address that is not verified is left out.
    pub fn to_profile(&self) -> Result<ClerkProfile, Error> {
        let verified = |id: &str| {
            self.email_addresses
                .iter()
                .find(|a| a.id == id && a.is_verified())
        };
        let chosen = self
            .primary_email_address_id
            .as_deref()
            .and_then(verified)
            .or_else(|| self.email_addresses.iter().find(|a| a.is_verified()));
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
            Some(serde_json::Value::String(s)) => match s.parse::<Role>() {
                Ok(role) => MetadataRole::Valid(role),
                Err(_) => MetadataRole::Invalid(format!(
                    "public_metadata.role is not one of the roles ({})",
                    Role::NAMES.join(", ")
                )),
            },
            Some(_) => MetadataRole::Invalid("public_metadata.role is not a string".to_owned()),
        };
        Ok(ClerkProfile {
            subject: Subject::parse(&self.id)?,
            email: chosen.map(|a| Email::parse(&a.email_address)).transpose()?,
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
    /// The role, when the metadata holds a valid one.
    pub(crate) fn valid_role(&self) -> Option<Role> {
        match self.role {
            MetadataRole::Valid(role) => Some(role),
            _ => None,
        }
    }

    /// Why the metadata's role was not taken as a role, when it was not.
    pub(crate) fn role_note(&self) -> Option<String> {
        match &self.role {
            MetadataRole::Invalid(why) => Some(why.clone()),
            _ => None,
        }
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
                {"id": "idn_2", "email_address": "ada@example.com",
                 "verification": {"status": "verified", "strategy": "email_code"}}
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
        assert_eq!(p.email.unwrap().as_str(), "ada@example.com");
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
        assert_eq!(p.email.unwrap().as_str(), "first@example.com");
        assert_eq!(p.display_name.unwrap().as_str(), "ada99");
        // The note says why, never the value (it comes from the body and reaches logs).
        assert!(
            matches!(p.role, MetadataRole::Invalid(ref why) if !why.contains("superuser") && why.contains("admin")),
            "{:?}",
            p.role
        );

        let mut none = base.clone();
        none["username"] = serde_json::Value::Null;
        none["public_metadata"] = serde_json::json!({"role": 7});
        let p = user(none).to_profile().unwrap();
        assert_eq!(p.display_name, None);
        assert!(matches!(p.role, MetadataRole::Invalid(_)));

        let mut no_email = base;
        no_email["email_addresses"] = serde_json::json!([]);
        assert_eq!(user(no_email).to_profile().unwrap().email, None);
    }

    #[test]
    fn only_verified_addresses_count() {
        let with = |addresses: serde_json::Value, primary: &str| {
            user(serde_json::json!({
                "id": "user_1", "updated_at": 1,
                "email_addresses": addresses, "primary_email_address_id": primary
            }))
            .to_profile()
            .unwrap()
            .email
            .map(|e| e.as_str().to_owned())
        };
        let unverified = |id: &str, a: &str| serde_json::json!({"id": id, "email_address": a, "verification": {"status": "unverified"}});
        let verified = |id: &str, a: &str| serde_json::json!({"id": id, "email_address": a, "verification": {"status": "verified"}});
        // An unverified primary gives way to the first verified address.
        assert_eq!(
            with(
                serde_json::json!([
                    unverified("p", "victim@example.com"),
                    verified("v", "me@example.com")
                ]),
                "p"
            )
            .as_deref(),
            Some("me@example.com")
        );
        // Nothing verified: no address at all.
        assert_eq!(
            with(
                serde_json::json!([unverified("p", "victim@example.com")]),
                "p"
            ),
            None
        );
        let null_status = serde_json::json!([{"id": "p", "email_address": "x@example.com",
                                               "verification": {"status": null}}]);
        assert_eq!(with(null_status, "p"), None);
        // No verification object (older exports): verified.
        assert_eq!(
            with(
                serde_json::json!([{"id": "p", "email_address": "old@example.com"}]),
                "p"
            )
            .as_deref(),
            Some("old@example.com")
        );
    }

    #[test]
    fn times_postgresql_cannot_store_are_invalid_input() {
        for ms in [i64::MAX, i64::MIN, 253_402_300_800_000, -62_135_596_800_001] {
            let err = user(serde_json::json!({"id": "user_1", "updated_at": ms}))
                .to_profile()
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidInput {
                        field: "updated_at",
                        ..
                    }
                ),
                "{ms}: {err:?}"
            );
        }
        for ms in [0_i64, 253_402_300_799_999, -62_135_596_800_000] {
            assert!(
                user(serde_json::json!({"id": "user_1", "updated_at": ms}))
                    .to_profile()
                    .is_ok(),
                "{ms}"
            );
        }
    }
}
