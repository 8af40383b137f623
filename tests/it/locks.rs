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

/// Runs every migration as sqlx does, in a transaction of its own unless it is marked
/// `-- no-transaction`, and records the strongest lock it holds on each table that existed before it
/// (an index's lock counts for its table): before the commit of a migration in a transaction; for
/// one without, while it waits on [`blocked`].
async fn locks_while_migrating(conn: &mut PgConnection, pool: &PgPool, schema: &str) -> Seen {
    let mut seen = BTreeMap::new();
    // sqlx's record of the migrations, which 0009 reads (when 0005 ran): these paths run the
    // migrations' texts themselves, so nothing else would make it.
    sqlx::raw_sql(
        "CREATE TABLE _sqlx_migrations (version bigint PRIMARY KEY,
                                        installed_on timestamptz NOT NULL DEFAULT now());
         INSERT INTO _sqlx_migrations (version) VALUES (5)",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    for migration in MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
    {
        let before = tables(&mut *conn).await;
        let held = if migration.no_tx {
            if migration.version == 9 {
                // A row a Clerk event set the role of before 0005, for 0009 to update (and wait
                // on).
                sqlx::query(
                    "UPDATE users SET identity_role_updated_at = '2023-11-14'
                     WHERE id = (SELECT min(id) FROM users)",
                )
                .execute(&mut *conn)
                .await
                .unwrap();
            }
            blocked(conn, pool, schema, migration.sql.as_str()).await
        } else {
            let mut tx = conn.begin().await.unwrap();
            sqlx::raw_sql(migration.sql.clone())
                .execute(&mut *tx)
                .await
                .unwrap_or_else(|e| panic!("migration {}: {e}", migration.version));
            let held = held_by(&mut tx, None).await;
            tx.commit().await.unwrap();
            held
        };
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

/// The relation locks a session (this one when `None`) holds on tables of the current schema.
async fn held_by(conn: &mut PgConnection, pid: Option<i32>) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT COALESCE(t.relname, c.relname)::text, l.mode
         FROM pg_locks l
         JOIN pg_class c ON c.oid = l.relation
         LEFT JOIN pg_index i ON i.indexrelid = c.oid
         LEFT JOIN pg_class t ON t.oid = i.indrelid
         WHERE l.pid = coalesce($1, pg_backend_pid()) AND l.locktype = 'relation' AND l.granted
           AND c.relnamespace = current_schema()::regnamespace
           AND c.relkind IN ('r', 'p', 'i')",
    )
    .bind(pid)
    .fetch_all(conn)
    .await
    .unwrap()
}

/// Runs a migration that runs outside a transaction while another session holds an old snapshot
/// (a concurrent index build waits for it to end) and a lock on every row of `users` (an update of
/// one waits for it), and reads the locks it holds while it waits. One that never waits (nothing to
/// update) shows none.
async fn blocked(
    conn: &mut PgConnection,
    pool: &PgPool,
    schema: &str,
    sql: &str,
) -> Vec<(String, String)> {
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let mut blocker = pool.acquire().await.unwrap().detach();
    let mut watcher = pool.acquire().await.unwrap().detach();
    for c in [&mut blocker, &mut watcher] {
        // The test's own schema name, not input.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET search_path = {schema}")))
            .execute(&mut *c)
            .await
            .unwrap();
    }
    let mut hold = blocker.begin().await.unwrap();
    sqlx::raw_sql(
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ;
         SELECT count(*) FROM (SELECT 1 FROM users FOR UPDATE) AS locked",
    )
    .execute(&mut *hold)
    .await
    .unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let run = async {
        let result = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut *conn)
            .await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        result
    };
    let watch = async {
        let mut held = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(
                std::time::Instant::now() < deadline,
                "the migration neither waited nor ended"
            );
            let waiting: bool = sqlx::query_scalar(
                "SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = $1",
            )
            .bind(pid)
            .fetch_one(&mut watcher)
            .await
            .unwrap();
            if waiting {
                held = held_by(&mut watcher, Some(pid)).await;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        hold.commit().await.unwrap();
        held
    };
    let (result, held) = tokio::join!(run, watch);
    result.unwrap_or_else(|e| panic!("{e}"));
    blocker.close().await.unwrap();
    watcher.close().await.unwrap();
    held
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
        paths.push(locks_while_migrating(&mut conn, &pool, schema).await);
        // The connection goes back to the pool with its search_path: close it instead.
        conn.detach().close().await.unwrap();
    }
    let paths: [Seen; 3] = paths.try_into().unwrap();
    // Each path ran every migration.
    assert!(paths.iter().all(|p| p.len() == paths[0].len()));
    check(paths);
}

type Seen = BTreeMap<i64, BTreeMap<String, Mode>>;
