//! What `livermore-db migrate` says each migration locks (`src/bin/livermore-db/locks.rs`) against
//! the locks PostgreSQL grants while the migration runs, on each path a database takes to them: a new
//! database, an Atlas-era one with the IAM columns, and one without them.
use std::collections::BTreeMap;

use livermore_db::MIGRATOR;
use sqlx::{Connection, PgConnection, PgPool};

#[path = "../../src/bin/livermore-db/locks.rs"]
#[allow(dead_code)]
mod declared;

use declared::Mode;

/// The tables of the current schema now.
async fn tables(conn: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT relname::text FROM pg_class
         WHERE relnamespace = current_schema()::regnamespace AND relkind IN ('r', 'p')",
    )
    .fetch_all(conn)
    .await
    .unwrap()
}

/// Runs every migration in a transaction of its own, as sqlx does, and records before each commit
/// the strongest lock it holds on each table that existed before it (an index's lock counts for its
/// table).
async fn locks_while_migrating(conn: &mut PgConnection) -> Seen {
    let mut seen = BTreeMap::new();
    for migration in MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
    {
        let before = tables(&mut *conn).await;
        let mut tx = conn.begin().await.unwrap();
        sqlx::raw_sql(migration.sql.clone())
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("migration {}: {e}", migration.version));
        let held: Vec<(String, String)> = sqlx::query_as(
            "SELECT COALESCE(t.relname, c.relname)::text, l.mode
             FROM pg_locks l
             JOIN pg_class c ON c.oid = l.relation
             LEFT JOIN pg_index i ON i.indexrelid = c.oid
             LEFT JOIN pg_class t ON t.oid = i.indrelid
             WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.granted
               AND c.relnamespace = current_schema()::regnamespace
               AND c.relkind IN ('r', 'p', 'i')",
        )
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let mut strongest: BTreeMap<String, Mode> = BTreeMap::new();
        for (table, mode) in held {
            if !before.contains(&table) {
                continue; // created by this migration: nobody waits on it
            }
            let mode = Mode::from_pg(&mode)
                .unwrap_or_else(|| panic!("migration {}: a {mode} lock", migration.version));
            let entry = strongest.entry(table).or_insert(mode);
            *entry = (*entry).max(mode);
        }
        seen.insert(migration.version, strongest);
    }
    seen
}

/// The declared table, as the same shape.
fn declared(version: i64) -> BTreeMap<String, Mode> {
    declared::of(version)
        .unwrap_or_else(|| {
            panic!("migration {version:04}: its locks are not described in locks.rs")
        })
        .iter()
        .map(|l| (l.table.to_owned(), l.mode))
        .collect()
}

/// On every path, each migration holds at most the locks declared for it; and each declared lock is
/// taken on some path (the declaration is not inflated). Together: the declaration is the strongest
/// lock over the paths, table by table.
fn check(paths: [Seen; 3]) {
    let versions: Vec<i64> = paths[0].keys().copied().collect();
    for version in versions {
        let declared = declared(version);
        let mut strongest: BTreeMap<String, Mode> = BTreeMap::new();
        for (path, seen) in paths.iter().enumerate() {
            for (table, mode) in &seen[&version] {
                assert!(
                    declared.get(table).is_some_and(|d| d >= mode),
                    "migration {version:04} on path {path} takes {mode:?} on {table}; declared: {declared:?}"
                );
                let entry = strongest.entry(table.clone()).or_insert(*mode);
                *entry = (*entry).max(*mode);
            }
        }
        assert_eq!(
            strongest, declared,
            "migration {version:04}: the strongest locks over the three paths differ from the declared ones"
        );
    }
}

/// The three paths, each in a schema of its own of the test's database: a new database, then the
/// two Atlas-era shapes (`fixtures/`).
#[sqlx::test(migrations = false)]
async fn migrate_says_the_locks_each_migration_takes(pool: PgPool) {
    let mut paths = Vec::new();
    for (schema, fixture) in [
        ("path_new", ""),
        (
            "path_with_iam",
            include_str!("fixtures/old_schema_with_iam.sql"),
        ),
        (
            "path_pre_iam",
            include_str!("fixtures/old_schema_pre_iam.sql"),
        ),
    ] {
        let mut conn = pool.acquire().await.unwrap();
        // Names of the test's own, not input.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA {schema}; SET search_path = {schema}"
        )))
        .execute(&mut *conn)
        .await
        .unwrap();
        if !fixture.is_empty() {
            sqlx::raw_sql(sqlx::AssertSqlSafe(fixture.to_owned()))
                .execute(&mut *conn)
                .await
                .unwrap();
        }
        paths.push(locks_while_migrating(&mut conn).await);
        // The connection goes back to the pool with its search_path: close it instead.
        conn.detach().close().await.unwrap();
    }
    let paths: [Seen; 3] = paths.try_into().unwrap();
    // Each path ran every migration.
    assert!(paths.iter().all(|p| p.len() == paths[0].len()));
    check(paths);
}

type Seen = BTreeMap<i64, BTreeMap<String, Mode>>;
