//! What the pending migrations will meet in `users`' data, read before they run.

use sqlx::PgConnection;

use super::{ADDED_CHECKS, Which, recorded, rows_breaking, up};
use crate::Error;

/// What one pending migration will meet in the data: a problem to fix first, or the work it has.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Finding {
    /// The migration.
    pub version: i64,
    /// Whether it is a problem to fix before migrating (a build that would fail, rows no one could
    /// update), rather than work the migration will do.
    pub trouble: bool,
    /// For an operator: counts and first ids, never a row's values.
    pub said: String,
}

/// Reads what the pending migrations will meet: identity pairs held by more than one user (0007's
/// unique index build would fail and leave an INVALID index), rows breaking each check 0008
/// validates (it would leave that check `NOT VALID`, and those rows could not be updated), and the
/// rows 0009 still has to change. `livermore-db status` and `migrate --dry-run` (`make
/// migrate-status`, `DRY_RUN=1`) print it.
///
/// Plain reads, each a scan of `users` (`ACCESS SHARE`, which blocks nothing but `ACCESS
/// EXCLUSIVE`); nothing is written. A migration already applied is not looked at.
pub async fn survey(conn: &mut PgConnection) -> Result<Vec<Finding>, Error> {
    let applied: Vec<i64> = if recorded(conn).await? {
        sqlx::query_scalar!(r#"SELECT version AS "version!" FROM _sqlx_migrations"#)
            .fetch_all(&mut *conn)
            .await?
    } else {
        Vec::new()
    };
    let pending = |v: i64| !applied.contains(&v) && up(v).is_some();
    let table = sqlx::query!(
        r#"SELECT ARRAY(SELECT attname::text FROM pg_attribute
                        WHERE attrelid = to_regclass(format('%I.users', current_schema()))
                          AND attnum > 0 AND NOT attisdropped) AS "columns!",
                  to_regclass(format('%I.identity_tombstones', current_schema())) IS NOT NULL
                    AS "tombstones!""#
    )
    .fetch_one(&mut *conn)
    .await?;
    let has = |c: &str| table.columns.iter().any(|t| t == c);
    let mut found = Vec::new();

    if pending(7) && has("identity_provider") && has("identity_sub") {
        let d = sqlx::query!(
            r#"SELECT count(*) AS "pairs!", coalesce(sum(n), 0)::int8 AS "rows!",
                      coalesce((array_agg(first ORDER BY first))[1:10], '{}') AS "ids!"
               FROM (SELECT count(*) AS n, min(id) AS first FROM users
                     WHERE identity_provider IS NOT NULL
                     GROUP BY identity_provider, identity_sub HAVING count(*) > 1) d"#
        )
        .fetch_one(&mut *conn)
        .await?;
        found.push(if d.pairs > 0 {
            Finding {
                version: 7,
                trouble: true,
                said: format!(
                    "{} identity pair(s) held by more than one user ({} rows; first ids {}): the \
                     unique index build would fail and leave an INVALID index; give each identity \
                     to one user first",
                    d.pairs,
                    d.rows,
                    super::ids_shown(&d.ids, d.pairs)
                ),
            }
        } else {
            Finding {
                version: 7,
                trouble: false,
                said: "no identity pair held by more than one user".to_owned(),
            }
        });
    }

    if pending(8) {
        for check in ADDED_CHECKS
            .iter()
            .filter(|c| !matches!(c.which, Which::ClerkRole))
            .filter(|c| c.columns.iter().all(|col| has(col)))
        {
            let (n, ids) = rows_breaking(conn, check.which).await?;
            found.push(if n > 0 {
                Finding {
                    version: 8,
                    trouble: true,
                    said: format!(
                        "{}: {n} row(s) {} (ids {}): it would stay NOT VALID and those rows could \
                         not be updated; {} first",
                        check.name,
                        check.broken,
                        super::ids_shown(&ids, n),
                        check.fix
                    ),
                }
            } else {
                Finding {
                    version: 8,
                    trouble: false,
                    said: format!("{}: no row breaks it", check.name),
                }
            });
        }
    }

    if pending(9) && has("identity_role_updated_at") && table.tombstones {
        let (roles, addresses) = if has("role_source") && has("released_email") {
            let r = sqlx::query!(
                r#"SELECT
                     (SELECT count(*) FROM users
                      WHERE role_source = 'manual'
                        AND identity_role_updated_at < coalesce(
                          (SELECT installed_on AT TIME ZONE 'UTC' FROM _sqlx_migrations
                           WHERE version = 5), 'infinity')) AS "roles!",
                     (SELECT count(*) FROM users u JOIN identity_tombstones t
                        ON t.identity_provider = u.identity_provider
                       AND t.identity_sub = u.identity_sub
                      WHERE NOT u.is_active AND u.released_email IS NULL) AS "addresses!""#
            )
            .fetch_one(&mut *conn)
            .await?;
            (r.roles, r.addresses)
        } else {
            // 0005 still to run: every role a Clerk event set counts, every deleted user's address.
            let r = sqlx::query!(
                r#"SELECT
                     (SELECT count(*) FROM users WHERE identity_role_updated_at IS NOT NULL)
                       AS "roles!",
                     (SELECT count(*) FROM users u JOIN identity_tombstones t
                        ON t.identity_provider = u.identity_provider
                       AND t.identity_sub = u.identity_sub
                      WHERE NOT u.is_active) AS "addresses!""#
            )
            .fetch_one(&mut *conn)
            .await?;
            (r.roles, r.addresses)
        };
        found.push(Finding {
            version: 9,
            trouble: false,
            said: format!(
                "{roles} row(s) whose role a Clerk event set to mark as such, {addresses} deleted \
                 user(s)' address(es) to release"
            ),
        });
    }
    Ok(found)
}
