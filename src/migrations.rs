//! What runs before the migrations: recording the migrations' first texts under their rewritten ones,
//! and refusing to go on over an index a failed concurrent build left behind.

use sqlx::migrate::Migration;
use sqlx::{Connection, PgConnection};

use crate::Error;

/// A migration rewritten once, before release (README, "The migrations"): the SHA-384 checksum of
/// the text some databases applied, and what that text did beyond the rewritten one.
struct Rewritten {
    version: i64,
    first_checksum: &'static str,
    /// Migrations added with the rewrite whose work the first text already did, and which must not
    /// run again where it was applied (version 9 would mark again as set by Clerk a role set by
    /// hand since). Recorded as applied there.
    did_also: &'static [i64],
}

const REWRITTEN: &[Rewritten] = &[
    // 0002's first text also built the index (now 0007) and validated the checks (now 0008); both run
    // again harmlessly where it was applied (the index exists, the checks are valid).
    Rewritten {
        version: 2,
        first_checksum: "7bef030834421ad76803f7a28338a4bff7391c447cb266c6eeb8c93084671e9f8335bd245c2391d91b0b4e77b51136d0",
        did_also: &[],
    },
    // 0005's first text also brought the existing rows up to date (now 0009).
    Rewritten {
        version: 5,
        first_checksum: "1abd37fe7cb2584b78e386254a14738c9d67081d25568ec0d46f8c6900ce6557930c786e8df3a8e179ab415eeb5f6ac5",
        did_also: &[9],
    },
    // 0009's first text counted a role set by hand after 0005 (set_role writes the role's time) as
    // set by Clerk (issue 31). Where it ran, what it changed cannot be told apart any more; the
    // rewritten text does the same for rows that existed before 0005, so it is recorded in its place
    // and does not run again.
    Rewritten {
        version: 9,
        first_checksum: "1973d38345afe5be3519cb1b4479522c530f7b0c5c7a21aa440a0d131110df39e0e06d779debf5d7d05365b227d895d5",
        did_also: &[],
    },
];

/// What [`prepare_to_migrate`] changed in `_sqlx_migrations`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Prepared {
    /// Migrations applied under their first text, now recorded under the rewritten one.
    pub rewritten: Vec<i64>,
    /// Migrations recorded as applied without running, because a first text already did their work.
    pub recorded: Vec<i64>,
}

/// Makes a database ready for [`MIGRATOR`](crate::MIGRATOR); [`migrate`](crate::migrate) and
/// `make migrate` call it first. Call it yourself before running `MIGRATOR` any other way.
///
/// - Migrations 0002 and 0005 were rewritten once, before release, so that none holds `users`
///   while it reads every row, and 0009 once, so that it no longer counts a role set by hand after
///   0005 as set by Clerk. A database that applied their first texts (the sandbox) has those
///   texts' checksums in `_sqlx_migrations`, which sqlx would refuse as edited: they are recorded
///   under the rewritten texts, and 0009 (whose work the first 0005 did) as applied. Only those
///   three exact checksums are accepted; any other edit still stops sqlx.
/// - A concurrent build of 0007's index that failed (a duplicate identity, a cancelled session)
///   leaves an INVALID index, which 0007's `IF NOT EXISTS` would then accept: while 0007 is pending,
///   such an index is refused with [`Error::MigrationBlocked`].
///
/// Idempotent, and safe when several services start at once (one transaction; the updates match
/// only the first texts' checksums).
pub async fn prepare_to_migrate(conn: &mut PgConnection) -> Result<Prepared, Error> {
    let mut prepared = Prepared::default();
    let mut tx = conn.begin().await?;
    let recorded =
        sqlx::query_scalar!(r#"SELECT to_regclass('_sqlx_migrations') IS NOT NULL AS "exists!""#)
            .fetch_one(&mut *tx)
            .await?;
    let mut index_applied = false;
    if recorded {
        for r in REWRITTEN {
            let first = hex(r.first_checksum);
            let Some(rewritten) = up(r.version) else {
                continue;
            };
            for version in r.did_also {
                let Some(m) = up(*version) else {
                    continue;
                };
                let inserted = sqlx::query!(
                    r#"INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
                       SELECT $1, $2, true, $3, 0
                       WHERE EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = $4 AND checksum = $5)
                       ON CONFLICT (version) DO NOTHING"#,
                    m.version,
                    &*m.description,
                    &*m.checksum,
                    r.version,
                    &first,
                )
                .execute(&mut *tx)
                .await?;
                if inserted.rows_affected() == 1 {
                    prepared.recorded.push(m.version);
                }
            }
            let updated = sqlx::query!(
                "UPDATE _sqlx_migrations SET checksum = $1 WHERE version = $2 AND checksum = $3",
                &*rewritten.checksum,
                r.version,
                &first,
            )
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() == 1 {
                prepared.rewritten.push(r.version);
            }
        }
        index_applied = sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = 7) AS "applied!""#
        )
        .fetch_one(&mut *tx)
        .await?;
    }
    if !index_applied {
        let invalid = sqlx::query_scalar!(
            r#"SELECT EXISTS (
                   SELECT 1 FROM pg_index
                   WHERE indexrelid = to_regclass(format('%I.users_identity_provider_sub_idx', current_schema()))
                     AND NOT indisvalid) AS "invalid!""#
        )
        .fetch_one(&mut *tx)
        .await?;
        if invalid {
            return Err(Error::MigrationBlocked {
                reason:
                    "index users_identity_provider_sub_idx is INVALID (a concurrent build that \
                         failed, a duplicate identity or a cancelled session, left it): run \
                         DROP INDEX CONCURRENTLY users_identity_provider_sub_idx; and migrate again"
                        .to_owned(),
            });
        }
    }
    tx.commit().await?;
    prepared.recorded.sort_unstable();
    Ok(prepared)
}

/// The up migration of `version` in [`MIGRATOR`](crate::MIGRATOR).
fn up(version: i64) -> Option<&'static Migration> {
    crate::MIGRATOR
        .iter()
        .find(|m| m.version == version && !m.migration_type.is_down_migration())
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("a checksum written here is hex"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_checksums_are_sha384_and_differ_from_the_rewritten_ones() {
        for r in REWRITTEN {
            let first = hex(r.first_checksum);
            assert_eq!(first.len(), 48, "migration {}", r.version);
            let now = up(r.version).unwrap();
            assert_ne!(&*now.checksum, &first[..], "migration {}", r.version);
        }
    }
}
