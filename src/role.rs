use std::str::FromStr;

use once_cell::sync::Lazy;
use serde::{Deserialize, Serialize};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Type};
use strum::{EnumCount, VariantNames};

use crate::error::{Error, shown};

/// What a user may do on the platform; stored in `users.role` (`varchar(20)`).
///
/// The spellings (`user`, `admin`, `subscriber_basic`, `subscriber_pro`) are the same in the database,
/// in [`Display`](std::fmt::Display)/[`FromStr`], and in serde. One way each: list with [`Role::ALL`]
/// (or their spellings, [`Role::NAMES`]), spell with [`Role::as_str`], parse with [`str::parse`]. The database's `users_role_check`
/// constraint lists the same values, so adding a variant means adding a migration.
///
/// # Examples
///
/// ```
/// use livermore_db::Role;
///
/// assert_eq!(Role::default(), Role::User);
/// assert_eq!("subscriber_pro".parse::<Role>().unwrap(), Role::SubscriberPro);
/// assert_eq!(Role::Admin.as_str(), "admin");
/// assert!("Admin".parse::<Role>().is_err(), "case-sensitive");
///
/// let err = "superuser".parse::<Role>().unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     r#"invalid role "superuser"; valid roles are: user, admin, subscriber_basic, subscriber_pro"#
/// );
/// ```
///
/// In queries, bind it directly and read it back with a type override:
///
/// ```no_run
/// # async fn f(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
/// use livermore_db::Role;
///
/// let role: Role = sqlx::query_scalar!(r#"SELECT role AS "role: Role" FROM users WHERE id = $1"#, 1)
///     .fetch_one(pool)
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumCount,
    strum::VariantNames,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Role {
    /// A signed-up user; every new user starts here.
    #[default]
    User,
    /// Administers users and the platform.
    Admin,
    /// Pays for the basic subscription.
    SubscriberBasic,
    /// Pays for the pro subscription.
    SubscriberPro,
}

static VALID_ROLES: Lazy<String> = Lazy::new(|| Role::VARIANTS.join(", "));

impl Role {
    /// Every role, in declaration order (`User` first).
    pub const ALL: [Role; Role::COUNT] = [
        Role::User,
        Role::Admin,
        Role::SubscriberBasic,
        Role::SubscriberPro,
    ];

    /// Every role's database spelling, in declaration order.
    pub const NAMES: &'static [&'static str] = Role::VARIANTS;

    /// The spelling stored in the database.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl FromStr for Role {
    type Err = Error;

    /// Parses a role, failing with [`Error::InvalidRole`], which names the bad value and lists the
    /// valid ones. Exact and case-sensitive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| Error::InvalidRole {
                value: shown(s, 64),
                valid: VALID_ROLES.as_str(),
            })
    }
}

// The SQL type impls delegate to `str`, which PostgreSQL accepts as `varchar` and `text` alike
// (a derived `sqlx::Type` would be tied to one type name and reject the other).
impl Type<Postgres> for Role {
    fn type_info() -> PgTypeInfo {
        <str as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <str as Type<Postgres>>::compatible(ty)
    }
}

impl PgHasArrayType for Role {
    fn array_type_info() -> PgTypeInfo {
        <&str as PgHasArrayType>::array_type_info()
    }

    fn array_compatible(ty: &PgTypeInfo) -> bool {
        <&str as PgHasArrayType>::array_compatible(ty)
    }
}

impl Encode<'_, Postgres> for Role {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <&str as Encode<'_, Postgres>>::encode(self.as_str(), buf)
    }
}

impl<'r> Decode<'r, Postgres> for Role {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        let s = <&str as Decode<'r, Postgres>>::decode(value)?;
        Ok(s.parse::<Role>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip_and_fit_the_column() {
        assert_eq!(
            Role::NAMES,
            ["user", "admin", "subscriber_basic", "subscriber_pro"]
        );
        assert_eq!(
            Role::ALL.map(Role::as_str),
            Role::NAMES,
            "ALL lists every variant, in order"
        );
        for role in Role::ALL {
            let s = role.as_str();
            assert!(s.len() <= 20, "{s} does not fit varchar(20)");
            assert_eq!(s, role.to_string());
            assert_eq!(s.parse::<Role>().unwrap(), role);
            assert_eq!(serde_json::to_string(&role).unwrap(), format!("\"{s}\""));
            assert_eq!(
                serde_json::from_str::<Role>(&format!("\"{s}\"")).unwrap(),
                role
            );
        }
    }

    #[test]
    fn invalid_roles_are_typed_errors_listing_the_valid_ones() {
        for bad in [
            "",
            "Admin",
            " admin",
            "admin ",
            "superuser",
            "subscriber-pro",
            "user\0",
        ] {
            match bad.parse::<Role>() {
                Err(Error::InvalidRole { value, valid }) => {
                    assert_eq!(value, bad);
                    assert_eq!(valid, "user, admin, subscriber_basic, subscriber_pro");
                }
                other => panic!("{bad:?} parsed as {other:?}"),
            }
        }
    }

    #[test]
    fn a_long_bad_value_is_cut_in_the_error() {
        let long = "é".repeat(10_000);
        let err = long.parse::<Role>().unwrap_err();
        let msg = err.to_string();
        assert!(msg.len() < 400, "{} bytes", msg.len());
        assert!(msg.contains("valid roles are: user, admin"));
    }
}
