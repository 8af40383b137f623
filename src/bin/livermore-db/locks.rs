//! What each migration locks, said before `migrate` starts: which tables, in which mode, for what,
//! and how big they are. The table is declared here (a migration's text is checksummed and never
//! edited) and checked against the locks PostgreSQL grants while each migration runs, on every path
//! a database takes to it (`tests/it/migrations.rs`).

use sqlx::PgConnection;

/// A table-level lock mode, weakest first (PostgreSQL's order of conflicts).
#[allow(
    dead_code,
    reason = "the modes a migration may take; the ones no migration takes yet are still named"
)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// `ACCESS SHARE` (a read): conflicts only with `ACCESS EXCLUSIVE`.
    AccessShare,
    /// `ROW EXCLUSIVE` (`UPDATE`, `INSERT`, `DELETE`): blocks no read or write (rows it changes
    /// wait for it).
    RowExclusive,
    /// `SHARE UPDATE EXCLUSIVE` (`VALIDATE CONSTRAINT`, `CREATE INDEX CONCURRENTLY`): blocks no read
    /// or write.
    ShareUpdateExclusive,
    /// `SHARE` (`CREATE INDEX`): blocks writes, not reads.
    Share,
    /// `ACCESS EXCLUSIVE` (most `ALTER TABLE`): blocks reads and writes.
    AccessExclusive,
}

impl Mode {
    /// PostgreSQL's name in `pg_locks.mode`.
    #[allow(
        dead_code,
        reason = "tests/it/locks.rs reads pg_locks with it; the command does not"
    )]
    pub fn from_pg(mode: &str) -> Option<Mode> {
        Some(match mode {
            "AccessShareLock" => Mode::AccessShare,
            "RowExclusiveLock" => Mode::RowExclusive,
            "ShareUpdateExclusiveLock" => Mode::ShareUpdateExclusive,
            "ShareLock" => Mode::Share,
            "AccessExclusiveLock" => Mode::AccessExclusive,
            _ => return None,
        })
    }

    fn said(self) -> &'static str {
        match self {
            Mode::AccessShare => "ACCESS SHARE (blocks nothing but ACCESS EXCLUSIVE)",
            Mode::RowExclusive => "ROW EXCLUSIVE (blocks no read or write)",
            Mode::ShareUpdateExclusive => "SHARE UPDATE EXCLUSIVE (blocks no read or write)",
            Mode::Share => "SHARE (blocks writes)",
            Mode::AccessExclusive => "ACCESS EXCLUSIVE (blocks reads and writes)",
        }
    }
}

/// The strongest lock a migration takes on one table, on any path, and what it does under it.
#[derive(Debug)]
pub struct Lock {
    pub table: &'static str,
    pub mode: Mode,
    /// What happens under the lock, for the operator: catalog only, or how much of the table it reads
    /// or writes.
    pub what: &'static str,
}

const fn lock(table: &'static str, mode: Mode, what: &'static str) -> Lock {
    Lock { table, mode, what }
}

/// Each migration's locks on existing tables (a table it creates is new: nobody waits on it).
const LOCKS: &[(i64, &[Lock])] = {
    use Mode::*;
    &[
        // Creates users when missing; an existing one is only looked up in the catalog.
        (1, &[]),
        (
            2,
            &[lock(
                "users",
                AccessExclusive,
                "adds the IAM columns and two NOT VALID checks where they are missing (catalog only: \
                 no rewrite, no scan)",
            )],
        ),
        (
            3,
            &[lock(
                "users",
                AccessExclusive,
                "sets two column defaults (catalog only)",
            )],
        ),
        (
            4,
            &[lock(
                "users",
                AccessExclusive,
                "adds two columns (catalog only)",
            )],
        ),
        (
            5,
            &[lock(
                "users",
                AccessExclusive,
                "adds two columns and a NOT VALID check (catalog only: no rewrite, no scan)",
            )],
        ),
        (
            6,
            &[lock(
                "users",
                AccessExclusive,
                "adds a column and a NOT VALID check (catalog only)",
            )],
        ),
        (
            7,
            &[lock(
                "users",
                ShareUpdateExclusive,
                "builds the unique index CONCURRENTLY where it is missing: reads every row, outside \
                 a transaction, and waits for transactions already running to end",
            )],
        ),
        (
            8,
            &[lock(
                "users",
                ShareUpdateExclusive,
                "validates the checks 0002 and 0005 added NOT VALID: reads every row once per check",
            )],
        ),
        (
            9,
            &[
                lock(
                    "users",
                    RowExclusive,
                    "updates the rows Clerk set a role on before 0005 and the rows of users \
                     deleted before 0005, 10 000 ids per committed batch",
                ),
                lock(
                    "identity_tombstones",
                    AccessShare,
                    "reads it, batch by batch",
                ),
                lock(
                    "_sqlx_migrations",
                    AccessShare,
                    "reads when 0005 ran (its installed_on)",
                ),
            ],
        ),
    ]
};

/// The locks of migration `version` on existing tables; `None` for a version not described here (a
/// test fails until every migration is).
pub fn of(version: i64) -> Option<&'static [Lock]> {
    LOCKS
        .iter()
        .find(|(v, _)| *v == version)
        .map(|(_, locks)| *locks)
}

/// A table's size as the catalog estimates it, without opening the table (so without waiting on a
/// lock someone holds on it): `reltuples` (−1 before its first VACUUM or ANALYZE) and the pages of the
/// table, its indexes and its TOAST table, in bytes. `None` when the table is not there.
async fn size_of(conn: &mut PgConnection, table: &str) -> Result<Option<(i64, i64)>, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT c.reltuples::int8 AS "rows!",
                  ((c.relpages
                    + coalesce((SELECT sum(ic.relpages) FROM pg_index i
                                JOIN pg_class ic ON ic.oid = i.indexrelid
                                WHERE i.indrelid = c.oid), 0)
                    + coalesce((SELECT t.relpages FROM pg_class t WHERE t.oid = c.reltoastrelid), 0))
                   * current_setting('block_size')::int8)::int8 AS "bytes!"
           FROM pg_class c
           WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = $1
             AND c.relkind IN ('r', 'p')"#,
        table
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (r.rows, r.bytes)))
}

fn bytes(n: i64) -> String {
    let n = n as f64;
    match n {
        n if n >= 1e9 => format!("{:.1} GB", n / 1e9),
        n if n >= 1e6 => format!("{:.1} MB", n / 1e6),
        n if n >= 1e3 => format!("{:.0} kB", n / 1e3),
        n => format!("{n:.0} B"),
    }
}

/// Says, for each pending migration, the locks it takes on which tables of what size.
pub async fn say(conn: &mut PgConnection, pending: &[(i64, String)]) -> Result<(), sqlx::Error> {
    if pending.is_empty() {
        return Ok(());
    }
    println!(
        "locks the pending migrations take (the strongest on each table; sizes from the catalog):"
    );
    for (version, label) in pending {
        let Some(locks) = of(*version) else {
            println!("  {label}: its locks are not described (src/bin/livermore-db/locks.rs)");
            continue;
        };
        if locks.is_empty() {
            println!("  {label}: no lock on an existing table");
            continue;
        }
        for l in locks {
            let size = match size_of(conn, l.table).await? {
                None => "created by an earlier migration of this run".to_owned(),
                Some((rows, total)) if rows < 0 => {
                    format!("rows unknown (never analyzed), {}", bytes(total))
                }
                Some((rows, total)) => format!("about {rows} rows, {}", bytes(total)),
            };
            println!(
                "  {label}: {} ({size}): {}; {}",
                l.table,
                l.mode.said(),
                l.what
            );
        }
    }
    Ok(())
}
