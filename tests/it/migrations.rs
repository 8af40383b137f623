//! The migrations against a real PostgreSQL: the exact schema they produce, adoption of the databases the
//! older tooling built, and up/down/up with downs that refuse to destroy data.

use crate::common::*;
use livermore_db::MIGRATOR;
use sqlx::PgPool;
use std::time::Duration;

#[sqlx::test]
async fn migrations_produce_the_specified_users_table(pool: PgPool) {
    assert_eq!(users_shape(&pool).await, expected_users_shape());
    assert_eq!(applied_versions(&pool).await, all_versions());
}

#[sqlx::test]
async fn identity_pair_check_and_partial_unique_index_hold(pool: PgPool) {
    let insert = |username: &'static str,
                  provider: Option<&'static str>,
                  sub: Option<&'static str>| {
        let pool = pool.clone();
        async move {
            sqlx::query("INSERT INTO users (username, email, identity_provider, identity_sub) VALUES ($1, $1 || '@x.test', $2, $3)")
                .bind(username)
                .bind(provider)
                .bind(sub)
                .execute(&pool)
                .await
        }
    };
    // Users without an identity: any number of them, the index ignores them.
    insert("a", None, None).await.expect("no identity");
    insert("b", None, None)
        .await
        .expect("second user without identity");
    insert("c", Some("clerk"), Some("user_1"))
        .await
        .expect("full identity");
    insert("d", Some("google"), Some("user_1"))
        .await
        .expect("same sub at another provider");

    let constraint_of = |r: Result<_, sqlx::Error>| match r {
        Err(sqlx::Error::Database(e)) => e.constraint().map(str::to_owned),
        other => panic!("expected a constraint violation, got {other:?}"),
    };
    assert_eq!(
        constraint_of(insert("e", Some("clerk"), Some("user_1")).await).as_deref(),
        Some("users_identity_provider_sub_idx")
    );
    for (provider, sub) in [
        (Some("clerk"), None),
        (None, Some("user_2")),
        (Some(""), Some("x")),
        (Some("clerk"), Some("")),
    ] {
        assert_eq!(
            constraint_of(insert("f", provider, sub).await).as_deref(),
            Some("users_identity_pair_check"),
            "provider {provider:?}, sub {sub:?}"
        );
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 4);
}

#[sqlx::test(migrations = false, fixtures("old_schema_pre_iam"))]
async fn adopts_a_pre_iam_database_without_changing_rows(pool: PgPool) {
    let users_before = pre_iam_rows(&pool).await;
    let watchlists_before = rows_of(&pool, "watchlists").await;
    assert_eq!(users_before.lines().count(), 3);

    MIGRATOR
        .run(&pool)
        .await
        .expect("migrations adopt the pre-IAM schema");

    assert_eq!(pre_iam_rows(&pool).await, users_before);
    assert_eq!(rows_of(&pool, "watchlists").await, watchlists_before);
    // The new columns hold their defaults on the old rows.
    let defaults: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT role::text, identity_provider::text, last_login_at::text FROM users ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(defaults, vec![("user".to_owned(), None, None); 3]);
    assert_eq!(users_shape(&pool).await, expected_users_shape());
    assert_eq!(applied_versions(&pool).await, all_versions());

    // Running again is a no-op.
    MIGRATOR.run(&pool).await.expect("second run");
    assert_eq!(pre_iam_rows(&pool).await, users_before);

    // The baseline's down refuses to drop the adopted table (after the IAM down removed its own columns).
    let err = MIGRATOR
        .undo(&pool, 0)
        .await
        .expect_err("the adopted users table must not be dropped");
    assert!(
        err.to_string().contains("refusing to drop table users"),
        "{err}"
    );
    assert_eq!(pre_iam_rows(&pool).await, users_before);
    assert_eq!(rows_of(&pool, "watchlists").await, watchlists_before);
}

#[sqlx::test(migrations = false, fixtures("old_schema_with_iam"))]
async fn adopts_a_database_that_already_has_the_iam_columns(pool: PgPool) {
    let users_before = rows_of(&pool, "users").await;
    let watchlists_before = rows_of(&pool, "watchlists").await;
    assert_eq!(users_before.lines().count(), 3);

    MIGRATOR
        .run(&pool)
        .await
        .expect("migrations adopt the IAM schema");

    assert_eq!(rows_of(&pool, "users").await, users_before);
    assert_eq!(rows_of(&pool, "watchlists").await, watchlists_before);
    assert_eq!(users_shape(&pool).await, expected_users_shape());
    assert_eq!(applied_versions(&pool).await, all_versions());

    // Reverting IAM keeps the adopted columns and their data; it removes only its own checks.
    MIGRATOR
        .undo(&pool, 1)
        .await
        .expect("IAM down on an adopted schema");
    assert_eq!(rows_of(&pool, "users").await, users_before);
    let shape = users_shape(&pool).await;
    assert_eq!(shape.columns, expected_users_shape_before_0003().columns);
    assert!(
        shape
            .constraints
            .iter()
            .all(|c| !c.name.ends_with("_check")),
        "{:?}",
        shape.constraints
    );
}

#[sqlx::test(migrations = false, fixtures("old_schema_with_iam"))]
async fn adoption_succeeds_when_old_rows_break_the_new_checks(pool: PgPool) {
    sqlx::query("UPDATE users SET role = 'superuser' WHERE username = 'grace'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE users SET identity_sub = NULL WHERE username = 'linus'")
        .execute(&pool)
        .await
        .unwrap();
    let users_before = rows_of(&pool, "users").await;

    MIGRATOR
        .run(&pool)
        .await
        .expect("adoption must not fail on old rows");

    assert_eq!(rows_of(&pool, "users").await, users_before);
    let shape = users_shape(&pool).await;
    let checks: Vec<_> = shape
        .constraints
        .iter()
        .filter(|c| c.kind == "c")
        .map(|c| (c.name.as_str(), c.validated))
        .collect();
    assert_eq!(
        checks,
        [
            ("users_clerk_role_check", false),
            ("users_identity_pair_check", false),
            ("users_role_check", false),
            ("users_role_source_check", true),
        ]
    );
    // Still enforced for new writes.
    let err = sqlx::query("UPDATE users SET role = 'root' WHERE username = 'ada'")
        .execute(&pool)
        .await
        .unwrap_err();
    assert_eq!(
        err.as_database_error().and_then(|e| e.constraint()),
        Some("users_role_check")
    );
}

/// The same adoption through `livermore_db::migrate` (services, `make migrate`): it refuses before
/// changing anything, naming each check, how many rows and their ids, because once 0002 has added
/// its checks such rows could not be updated by anyone (the check above shows why); with the rows
/// fixed, it adopts the database and every check is valid.
#[sqlx::test(migrations = false, fixtures("old_schema_with_iam"))]
async fn adoption_refuses_rows_the_new_checks_would_make_unwritable(pool: PgPool) {
    sqlx::query("UPDATE users SET role = 'moderator' WHERE username = 'grace'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE users SET identity_sub = '' WHERE username = 'linus'")
        .execute(&pool)
        .await
        .unwrap();
    let ids: Vec<i32> = sqlx::query_scalar(
        "SELECT id FROM users WHERE username IN ('grace', 'linus') ORDER BY username",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let (grace, linus) = (ids[0], ids[1]);
    let users_before = rows_of(&pool, "users").await;
    let reason = blocked_reason(livermore_db::migrate(&pool).await);
    assert!(
        reason.contains("users_identity_pair_check: 1 row(s)")
            && reason.contains(&format!("(ids {linus})"))
            && reason.contains("users_role_check: 1 row(s)")
            && reason.contains(&format!("(ids {grace})"))
            && !reason.contains("moderator"),
        "{reason}"
    );
    assert_eq!(rows_of(&pool, "users").await, users_before);
    let recorded: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!recorded, "nothing recorded");

    sqlx::query("UPDATE users SET role = 'user' WHERE username = 'grace'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE users SET identity_sub = 'user_linus' WHERE username = 'linus'")
        .execute(&pool)
        .await
        .unwrap();
    livermore_db::migrate(&pool).await.unwrap();
    let shape = users_shape(&pool).await;
    assert!(
        shape
            .constraints
            .iter()
            .filter(|c| c.kind == "c" && c.name != "users_clerk_role_check")
            .all(|c| c.validated),
        "{:?}",
        shape.constraints
    );
    sqlx::query("UPDATE users SET last_login_at = now()")
        .execute(&pool)
        .await
        .expect("every row writable");
}

#[sqlx::test(migrations = false)]
async fn up_down_up(pool: PgPool) {
    MIGRATOR.run(&pool).await.expect("up");
    assert_eq!(users_shape(&pool).await, expected_users_shape());

    MIGRATOR
        .undo(&pool, 0)
        .await
        .expect("down to nothing on an empty database");
    let users: Option<String> = sqlx::query_scalar("SELECT to_regclass('users')::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        users, None,
        "users was created by the baseline and empty, so its down drops it"
    );
    assert_eq!(applied_versions(&pool).await, Vec::<i64>::new());

    MIGRATOR.run(&pool).await.expect("up again");
    assert_eq!(users_shape(&pool).await, expected_users_shape());
    assert_eq!(applied_versions(&pool).await, all_versions());
}

#[sqlx::test(migrations = false)]
async fn downs_refuse_to_destroy_data(pool: PgPool) {
    MIGRATOR.run(&pool).await.expect("up");
    sqlx::query("INSERT INTO users (username, email, identity_provider, identity_sub) VALUES ('ada', 'ada@x.test', 'clerk', 'user_1')")
        .execute(&pool)
        .await
        .unwrap();
    let before = rows_of(&pool, "users").await;

    let err = MIGRATOR
        .undo(&pool, 1)
        .await
        .expect_err("IAM down must refuse while identity data exists");
    assert!(
        err.to_string()
            .contains("refusing to drop column users.identity_provider"),
        "{err}"
    );
    assert_eq!(rows_of(&pool, "users").await, before);
    assert_eq!(users_shape(&pool).await, expected_users_shape_before_0003());
    assert_eq!(
        applied_versions(&pool).await,
        [1, 2],
        "0003 went down in its own transaction; 0002 refused and stays whole"
    );

    // With the identity data cleared the IAM down goes through, and the baseline's down still refuses:
    // the table holds a row.
    sqlx::query("UPDATE users SET identity_provider = NULL, identity_sub = NULL")
        .execute(&pool)
        .await
        .unwrap();
    MIGRATOR
        .undo(&pool, 1)
        .await
        .expect("IAM down with no identity data");
    let err = MIGRATOR
        .undo(&pool, 0)
        .await
        .expect_err("baseline down must refuse on a non-empty table");
    assert!(err.to_string().contains("holds 1 rows"), "{err}");
    assert_eq!(pre_iam_rows(&pool).await.lines().count(), 1);
}

/// A single-connection pool of its own on the test's database: a service replica.
async fn replica(pool: &PgPool) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .expect("a replica's pool")
}

/// Starts a transaction on its own connection that holds `users`, so that 0002's `ALTER TABLE` waits
/// and fails on its `lock_timeout`.
async fn hold_users(pool: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE users IN ACCESS SHARE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    holder
}

#[sqlx::test(migrations = false)]
async fn a_failed_start_up_migration_does_not_block_the_next_replica(pool: PgPool) {
    MIGRATOR.run_to(1, &pool).await.expect("the baseline only");
    let (a, b) = (replica(&pool).await, replica(&pool).await);
    let holder = hold_users(&pool).await;

    // Both replicas migrate at once, on pooled connections, with a budget of 5 s; each gives up on
    // the held table (the second after waiting for the first one's advisory lock within its budget,
    // not for ever), and neither leaves the lock behind on its pooled connection.
    let retry = livermore_db::LockRetry::new(Duration::from_millis(300), Duration::from_secs(5));
    let run = |pool: PgPool| async move {
        let mut conn = pool.acquire().await.unwrap();
        livermore_db::migrate_on(&mut conn, None, retry).await
    };
    let started = std::time::Instant::now();
    let (ra, rb) = tokio::time::timeout(Duration::from_secs(40), async {
        tokio::join!(run(a.clone()), run(b.clone()))
    })
    .await
    .expect("the second replica's migrate must not wait for ever");
    assert!(ra.is_err() && rb.is_err(), "{ra:?} {rb:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );

    holder.rollback().await.unwrap();
    livermore_db::migrate(&b)
        .await
        .expect("a replica migrates once the table is free");
    assert_eq!(applied_versions(&pool).await, all_versions());
    a.close().await;
    b.close().await;
}

/// The failure `migrate` avoids, shown with sqlx's own `Migrator::run` on the pools: after the first
/// replica's failure its pooled connection keeps the advisory lock, and the second replica waits.
#[sqlx::test(migrations = false)]
async fn migrator_run_on_a_pool_leaves_the_lock_behind(pool: PgPool) {
    MIGRATOR.run_to(1, &pool).await.expect("the baseline only");
    let (a, b) = (replica(&pool).await, replica(&pool).await);
    let holder = hold_users(&pool).await;
    MIGRATOR.run(&a).await.expect_err("0002 waits for users");
    holder.rollback().await.unwrap();

    let second = tokio::time::timeout(Duration::from_secs(8), MIGRATOR.run(&b)).await;
    assert!(
        second.is_err(),
        "the second replica waits on the lock left on the first one's connection: {second:?}"
    );
    a.close().await;
    b.close().await;
}

/// Reverts to `target` while a writer, started before, commits `write`: the down must wait for the
/// writer (it locks before it looks), see the row and refuse, and the row must survive.
async fn down_racing_a_writer(pool: &PgPool, target: i64, write: &str, refusal: &str) {
    let mut writer = pool.begin().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(write.to_owned()))
        .execute(&mut *writer)
        .await
        .unwrap();
    let down = tokio::spawn({
        let pool = pool.clone();
        async move { MIGRATOR.undo(&pool, target).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!down.is_finished(), "the down waits for the writer's lock");
    writer.commit().await.unwrap();
    let err = down
        .await
        .unwrap()
        .expect_err("the committed row makes it refuse");
    assert!(err.to_string().contains(refusal), "{err}");
}

#[sqlx::test(migrations = false)]
async fn downs_lock_before_they_look(pool: PgPool) {
    MIGRATOR.run(&pool).await.expect("up");
    let clear = "DELETE FROM users; DELETE FROM identity_tombstones;";
    let steps: [(i64, &str, &str); 5] = [
        (
            5,
            "INSERT INTO users (username, email, clerk_role) VALUES ('w', 'w@x.test', 'admin')",
            "refusing to drop column users.clerk_role",
        ),
        (
            4,
            "INSERT INTO users (username, email, role_source) VALUES ('w', 'w@x.test', 'clerk')",
            "refusing to drop column users.role_source",
        ),
        (
            3,
            "INSERT INTO identity_tombstones VALUES ('clerk', 'user_w', now())",
            "refusing to drop table identity_tombstones",
        ),
        (
            1,
            "INSERT INTO users (username, email, identity_provider, identity_sub) VALUES ('w', 'w@x.test', 'clerk', 'user_w')",
            "refusing to drop column users.identity_provider",
        ),
        (
            0,
            "INSERT INTO users (username, email) VALUES ('w', 'w@x.test')",
            "refusing to drop table users: it holds 1 rows",
        ),
    ];
    for (target, write, refusal) in steps {
        // Only the migration under test goes down while the writer holds its lock (an intermediate
        // down that waits too, like 0003's, would hide a down that does not).
        MIGRATOR.undo(&pool, target + 1).await.unwrap();
        down_racing_a_writer(&pool, target, write, refusal).await;
        // identity_tombstones exists only above 0004: counted (and cleared) only where it exists,
        // so that a failing count can never pass for the writer's row.
        let tombstones: bool =
            sqlx::query_scalar("SELECT to_regclass('identity_tombstones') IS NOT NULL")
                .fetch_one(&pool)
                .await
                .unwrap();
        let count = if tombstones {
            "SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM identity_tombstones)"
        } else {
            "SELECT count(*) FROM users"
        };
        let rows: i64 = sqlx::query_scalar(count).fetch_one(&pool).await.unwrap();
        assert_eq!(rows, 1, "the writer's row survives the down to {target}");
        if tombstones {
            sqlx::raw_sql(clear).execute(&pool).await.unwrap();
        }
        sqlx::query("DELETE FROM users")
            .execute(&pool)
            .await
            .unwrap();
        MIGRATOR
            .undo(&pool, target)
            .await
            .unwrap_or_else(|e| panic!("down to {target} once the data is gone: {e}"));
    }
    assert_eq!(applied_versions(&pool).await, Vec::<i64>::new());
}

#[sqlx::test(migrations = false)]
async fn the_lifecycle_down_refuses_while_it_holds_data(pool: PgPool) {
    MIGRATOR.run(&pool).await.expect("up");
    sqlx::query(
        "INSERT INTO users (username, email, released_email, identity_provider, identity_sub, is_active)
         VALUES ('gone', 'deleted+x@deleted.invalid', 'gone@example.com', 'clerk', 'user_gone', false)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let err = MIGRATOR.undo(&pool, 4).await.expect_err("refuses");
    assert!(
        err.to_string()
            .contains("refusing to drop column users.released_email"),
        "{err}"
    );
    // 0006 went down (it held nothing), 0005 refused.
    assert_eq!(users_shape(&pool).await, expected_users_shape_before_0006());
    sqlx::query("DELETE FROM users")
        .execute(&pool)
        .await
        .unwrap();
    MIGRATOR
        .undo(&pool, 4)
        .await
        .expect("down with no lifecycle data");
    assert_eq!(users_shape(&pool).await, expected_users_shape_before_0005());
}

/// The old tooling could have created the columns in another order. Statements name their columns,
/// so they read the right ones whatever the physical order (sqlx decodes results by position: a
/// `SELECT *` would hand `identity_sub` to `display_name` here, silently).
#[sqlx::test(migrations = false)]
async fn an_adopted_table_with_another_column_order_reads_right(pool: PgPool) {
    let fixture = include_str!("fixtures/old_schema_with_iam.sql").replace(
        "    identity_provider varchar(20),
    identity_sub varchar(255),
    display_name varchar(100),",
        "    display_name varchar(100),
    identity_sub varchar(255),
    identity_provider varchar(20),",
    );
    assert!(fixture.contains("display_name varchar(100),\n    identity_sub"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(fixture))
        .execute(&pool)
        .await
        .unwrap();
    MIGRATOR.run(&pool).await.expect("adopt");
    let profile = livermore_db::Profile::parse(
        "clerk",
        "user_order",
        "order@example.com",
        Some("Display Name"),
        None,
    )
    .unwrap();
    let signed_in = livermore_db::sign_in(&pool, &profile).await.unwrap().user;
    let found = livermore_db::find_by_identity(&pool, &profile.identity)
        .await
        .unwrap()
        .unwrap();
    for user in [&signed_in, &found] {
        assert_eq!(user.display_name.as_deref(), Some("Display Name"));
        assert_eq!(user.identity_sub.as_deref(), Some("user_order"));
        assert_eq!(user.identity_provider.as_deref(), Some("clerk"));
    }
    let ada = livermore_db::find_by_email(
        &pool,
        &livermore_db::Email::parse("ada@example.com").unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        (ada.display_name.as_deref(), ada.identity_sub.as_deref()),
        (Some("Ada Lovelace"), Some("user_2abc"))
    );
}

/// The migrations as the sandbox applied them: 0001-0006, with the first texts of 0002 and 0005
/// (before they were rewritten so that no migration holds `users` while it reads every row).
pub(crate) fn first_texts() -> sqlx::migrate::Migrator {
    use sqlx::migrate::Migration;
    let first = |m: &Migration, sql: &'static str| {
        Migration::new(
            m.version,
            m.description.clone(),
            m.migration_type,
            sqlx::SqlSafeStr::into_sql_str(sql),
            false,
        )
    };
    sqlx::migrate::Migrator::with_migrations(
        MIGRATOR
            .iter()
            .filter(|m| !m.migration_type.is_down_migration() && m.version <= 6)
            .map(|m| match m.version {
                2 => first(
                    m,
                    include_str!("fixtures/first_applied/0002_users_iam.up.sql"),
                ),
                5 => first(
                    m,
                    include_str!("fixtures/first_applied/0005_clerk_lifecycle.up.sql"),
                ),
                _ => m.clone(),
            })
            .collect(),
    )
}

async fn checksum_of(pool: &PgPool, version: i64) -> Vec<u8> {
    sqlx::query_scalar("SELECT checksum FROM _sqlx_migrations WHERE version = $1")
        .bind(version)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A database that applied the first texts of 0002 and 0005 migrates on: they are recorded under
/// the rewritten texts, 0009 (whose work the first 0005 did) as applied without running, so that a
/// role set by hand after a Clerk event stays set by hand, and 0007 and 0008 apply (finding the
/// index there and the checks valid).
#[sqlx::test(migrations = false)]
async fn a_database_that_applied_the_first_texts_migrates_on(pool: PgPool) {
    let first = first_texts();
    first.run(&pool).await.unwrap();
    // Clerk gave the role, then an admin set one by hand.
    sqlx::query(
        "INSERT INTO users (username, email, identity_provider, identity_sub, role, role_source, identity_role_updated_at)
         VALUES ('kept', 'kept@example.com', 'clerk', 'user_kept', 'admin', 'manual', '2024-01-01')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let up = |v: i64| {
        MIGRATOR
            .iter()
            .find(|m| m.version == v && !m.migration_type.is_down_migration())
            .unwrap()
    };
    assert_ne!(
        checksum_of(&pool, 2).await,
        *up(2).checksum,
        "the first text's checksum"
    );

    livermore_db::migrate(&pool).await.expect("migrates on");
    for v in [2, 5] {
        assert_eq!(
            checksum_of(&pool, v).await,
            *up(v).checksum,
            "migration {v}"
        );
    }
    assert_eq!(applied_versions(&pool).await, all_versions());
    let source: String =
        sqlx::query_scalar("SELECT role_source FROM users WHERE identity_sub = 'user_kept'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        source, "manual",
        "0009 did not run again over a role set by hand"
    );
    assert_eq!(users_shape(&pool).await, expected_users_shape());
    // Again: nothing left to record or apply.
    let mut conn = pool.acquire().await.unwrap();
    assert_eq!(
        livermore_db::prepare_to_migrate(&mut conn).await.unwrap(),
        livermore_db::Prepared::default()
    );
}

/// A concurrent build of 0007's index that fails (here on two users with one identity, possible
/// before the index exists) leaves an INVALID index: migrating again refuses, saying what to do, and
/// goes on once it is done.
#[sqlx::test(migrations = false)]
async fn an_index_a_failed_build_left_invalid_stops_migrating(pool: PgPool) {
    MIGRATOR.run_to(6, &pool).await.unwrap();
    sqlx::query(
        "INSERT INTO users (username, email, identity_provider, identity_sub)
         VALUES ('one', 'one@example.com', 'clerk', 'user_twice'),
                ('two', 'two@example.com', 'clerk', 'user_twice')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let failed = livermore_db::migrate(&pool).await.unwrap_err();
    assert!(
        matches!(
            &failed,
            livermore_db::Error::Migrate(sqlx::migrate::MigrateError::ExecuteMigration(_, 7))
        ),
        "{failed:?}"
    );
    let invalid: bool = sqlx::query_scalar(
        "SELECT NOT indisvalid FROM pg_index WHERE indexrelid = 'users_identity_provider_sub_idx'::regclass",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(invalid, "a failed concurrent build leaves an INVALID index");

    let blocked = livermore_db::migrate(&pool).await.unwrap_err();
    match &blocked {
        livermore_db::Error::MigrationBlocked { reason } => {
            assert!(
                reason.contains("DROP INDEX CONCURRENTLY users_identity_provider_sub_idx"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(!applied_versions(&pool).await.contains(&7));

    sqlx::query("UPDATE users SET identity_sub = 'user_other' WHERE username = 'two'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DROP INDEX CONCURRENTLY users_identity_provider_sub_idx")
        .execute(&pool)
        .await
        .unwrap();
    livermore_db::migrate(&pool)
        .await
        .expect("migrates once the index is dropped");
    assert_eq!(applied_versions(&pool).await, all_versions());
    assert_eq!(users_shape(&pool).await, expected_users_shape());
}

/// Every refusal of every down, one at a time: with exactly one column (or table) that a down would
/// drop holding data, undoing that one migration refuses, naming it, and changes nothing; with the
/// data gone, the same down goes through. (`identity_sub` is refused together with
/// `identity_provider`: the pair check lets neither hold a value alone.)
#[sqlx::test(migrations = false)]
async fn every_down_refuses_each_kind_of_data_it_would_drop(pool: PgPool) {
    // (migration, the data, what the refusal names)
    let cases: &[(i64, &str, &str)] = &[
        (
            1,
            "INSERT INTO users (username, email) VALUES ('ada', 'ada@x.test')",
            "refusing to drop table users: it holds 1 rows",
        ),
        (
            2,
            "INSERT INTO users (username, email, identity_provider, identity_sub) VALUES ('ada', 'ada@x.test', 'clerk', 'user_1')",
            "refusing to drop column users.identity_provider: it holds data",
        ),
        (
            2,
            "INSERT INTO users (username, email, display_name) VALUES ('ada', 'ada@x.test', 'Ada')",
            "refusing to drop column users.display_name: it holds data",
        ),
        (
            2,
            "INSERT INTO users (username, email, identity_picture_url) VALUES ('ada', 'ada@x.test', 'https://a.b/c.png')",
            "refusing to drop column users.identity_picture_url: it holds data",
        ),
        (
            2,
            "INSERT INTO users (username, email, role) VALUES ('ada', 'ada@x.test', 'admin')",
            "refusing to drop column users.role: it holds data",
        ),
        (
            2,
            "INSERT INTO users (username, email, last_login_at) VALUES ('ada', 'ada@x.test', now())",
            "refusing to drop column users.last_login_at: it holds data",
        ),
        (
            4,
            "INSERT INTO identity_tombstones (identity_provider, identity_sub, deleted_at) VALUES ('clerk', 'user_1', now())",
            "refusing to drop table identity_tombstones: it holds data",
        ),
        (
            4,
            "INSERT INTO users (username, email, identity_updated_at) VALUES ('ada', 'ada@x.test', now())",
            "refusing to drop column users.identity_updated_at: it holds data",
        ),
        (
            4,
            "INSERT INTO users (username, email, identity_role_updated_at) VALUES ('ada', 'ada@x.test', now())",
            "refusing to drop column users.identity_role_updated_at: it holds data",
        ),
        (
            5,
            "INSERT INTO users (username, email, released_email) VALUES ('ada', 'deleted@x.test', 'ada@x.test')",
            "refusing to drop column users.released_email: it holds data",
        ),
        (
            5,
            "INSERT INTO users (username, email, role_source) VALUES ('ada', 'ada@x.test', 'clerk')",
            "refusing to drop column users.role_source: roles set by Clerk",
        ),
        (
            6,
            "INSERT INTO users (username, email, clerk_role) VALUES ('ada', 'ada@x.test', 'admin')",
            "refusing to drop column users.clerk_role: it holds data",
        ),
    ];
    // A row at the default in every column: no down refuses over it but the baseline's.
    let plain = "INSERT INTO users (username, email) VALUES ('plain', 'plain@x.test')";
    MIGRATOR.run_to(1, &pool).await.expect("the baseline");
    for &(version, data, refusal) in cases {
        // At exactly `version`, with only the data of this case.
        // (Each alone: before 0004 there is no tombstones table, and before 0001 no users.)
        sqlx::raw_sql("DELETE FROM users").execute(&pool).await.ok();
        sqlx::raw_sql("DELETE FROM identity_tombstones")
            .execute(&pool)
            .await
            .ok();
        let at = applied_versions(&pool).await.last().copied().unwrap_or(0);
        if at > version {
            MIGRATOR
                .undo(&pool, version)
                .await
                .expect("down to the case's version");
        } else {
            MIGRATOR
                .run_to(version, &pool)
                .await
                .expect("up to the case's version");
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(data.to_owned()))
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{data}: {e}"));
        if version > 1 {
            sqlx::raw_sql(plain).execute(&pool).await.unwrap();
        }
        let shape = users_shape(&pool).await;
        let rows = rows_of(&pool, "users").await;
        let err = MIGRATOR
            .undo(&pool, version - 1)
            .await
            .expect_err(&format!("down {version} with {data}"));
        assert!(
            err.to_string()
                .contains(&format!("livermore-db 000{version} down: {refusal}")),
            "down {version} with {data}: {err}"
        );
        assert_eq!(users_shape(&pool).await, shape, "{data}: changed nothing");
        assert_eq!(rows_of(&pool, "users").await, rows, "{data}");
        assert_eq!(
            applied_versions(&pool).await.last(),
            Some(&version),
            "{data}"
        );
        // Without the data the same down goes through (the plain row does not stop it).
        sqlx::raw_sql("DELETE FROM users WHERE username <> 'plain'")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::raw_sql("DELETE FROM identity_tombstones")
            .execute(&pool)
            .await
            .ok();
        if version == 1 {
            sqlx::raw_sql("DELETE FROM users")
                .execute(&pool)
                .await
                .unwrap();
        }
        MIGRATOR
            .undo(&pool, version - 1)
            .await
            .unwrap_or_else(|e| panic!("down {version} without {data}: {e}"));
    }
}

/// Issue 31: 0009 counted a role set by hand after 0005 (set_role writes the role's time) as set
/// by Clerk, so that Clerk's next re-send of the user undid a demotion made by hand in between.
/// Migrated to 8, Clerk grants admin, an operator demotes the user by hand, 0009 runs, Clerk
/// re-sends the user (still admin, a name edited, after the demotion): the demotion holds. A row
/// whose role a Clerk event set before 0005 is still counted as Clerk's.
#[sqlx::test(migrations = false)]
async fn a_role_set_by_hand_before_0009_holds_against_clerk(pool: PgPool) {
    use crate::support::clerk::{clerk_user, event};
    use livermore_db::{Identity, Role, clerk::apply_event, find_by_identity, set_role};
    use serde_json::json;

    MIGRATOR.run_to(4, &pool).await.unwrap();
    sqlx::query(
        "INSERT INTO users (username, email, identity_provider, identity_sub, role,
                            identity_updated_at, identity_role_updated_at)
         VALUES ('legacy', 'legacy@example.com', 'clerk', 'user_legacy', 'admin',
                 '2023-11-14', '2023-11-14')",
    )
    .execute(&pool)
    .await
    .unwrap();
    MIGRATOR.run_to(8, &pool).await.unwrap();

    let now_ms = chrono::Utc::now().timestamp_millis();
    let admin = json!({"public_metadata": {"role": "admin"}});
    let granted = clerk_user(
        "user_demoted",
        "demoted@example.com",
        now_ms - 60_000,
        admin,
    );
    apply_event(&pool, &event("user.created", granted, now_ms - 60_000))
        .await
        .unwrap();
    let identity = Identity::parse("clerk", "user_demoted").unwrap();
    let id = find_by_identity(&pool, &identity)
        .await
        .unwrap()
        .unwrap()
        .id;
    assert_eq!(
        set_role(&pool, id, Role::User).await.unwrap().role,
        Role::User
    );

    MIGRATOR.run(&pool).await.expect("0009");

    let resent = clerk_user(
        "user_demoted",
        "demoted@example.com",
        now_ms + 60_000,
        json!({"public_metadata": {"role": "admin"}, "first_name": "Augusta"}),
    );
    apply_event(&pool, &event("user.updated", resent, now_ms + 60_000))
        .await
        .unwrap();
    let user = find_by_identity(&pool, &identity).await.unwrap().unwrap();
    assert_eq!(
        user.display_name.as_deref(),
        Some("Augusta Lovelace"),
        "the re-send applied"
    );
    assert_eq!(user.role, Role::User, "the demotion made by hand holds");
    let sources: Vec<(String, String)> =
        sqlx::query_as("SELECT identity_sub, role_source FROM users ORDER BY identity_sub")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        sources,
        [
            ("user_demoted".to_owned(), "manual".to_owned()),
            ("user_legacy".to_owned(), "clerk".to_owned())
        ]
    );
}

/// The same with the demotions racing 0009: 30 000 rows whose role Clerk set before 0005 (three of
/// 0009's batches), and 4 tasks demoting 600 of them by hand, last batch first, while 0009 runs.
/// Whichever commits first, every demoted row stays set by hand, and every other one is Clerk's.
#[sqlx::test(migrations = false)]
async fn demotions_racing_0009_stay_set_by_hand(pool: PgPool) {
    demotions_racing_0009(pool, false).await;
}

/// The same with 0009's work done by `migrate_on`'s own batches (of 1 000 ids, so 30 of them)
/// instead of 0009's SQL.
#[sqlx::test(migrations = false)]
async fn demotions_racing_the_runners_backfill_stay_set_by_hand(pool: PgPool) {
    demotions_racing_0009(pool, true).await;
}

async fn demotions_racing_0009(pool: PgPool, runner: bool) {
    use livermore_db::{Backfill, LockRetry, MigrateOptions, Role, UserId, set_role};

    at_8_with_rows_to_backfill(&pool, 30_000).await;
    let ids: Vec<i32> = sqlx::query_scalar("SELECT id FROM users ORDER BY id DESC")
        .fetch_all(&pool)
        .await
        .unwrap();
    // Every 50th row, from the last batch down.
    let demoted: Vec<i32> = ids.iter().copied().step_by(50).collect();
    assert_eq!(demoted.len(), 600);

    let migrating = {
        let pool = pool.clone();
        tokio::spawn(async move {
            if runner {
                let mut conn = pool.acquire().await.unwrap();
                let options = MigrateOptions::new(
                    LockRetry::default(),
                    Backfill::new(1_000, Duration::from_secs(5)),
                );
                livermore_db::migrate_on(&mut conn, None, options).await
            } else {
                MIGRATOR.run(&pool).await.map_err(livermore_db::Error::from)
            }
        })
    };
    let mut demoting = tokio::task::JoinSet::new();
    for part in demoted.chunks(150) {
        let (pool, part) = (pool.clone(), part.to_vec());
        demoting.spawn(async move {
            for id in part {
                set_role(&pool, UserId(id), Role::User).await.unwrap();
            }
        });
    }
    while let Some(done) = demoting.join_next().await {
        done.unwrap();
    }
    migrating.await.unwrap().expect("0009");
    assert_eq!(applied_versions(&pool).await, all_versions());

    let wrong: Vec<(i32, String, String)> = sqlx::query_as(
        "SELECT id, role, role_source FROM users
         WHERE (id = ANY($1) AND (role, role_source) <> ('user', 'manual'))
            OR (id <> ALL($1) AND (role, role_source) <> ('admin', 'clerk'))
         ORDER BY id LIMIT 10",
    )
    .bind(&demoted)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(wrong, [], "rows misclassified (of 600 demoted by hand)");
}

/// Each batch of the runner's backfill is bounded for real (inside 0009's DO block a
/// `statement_timeout` is a no-op): a batch held up by a slow row (a trigger sleeping 3 s on one
/// update) is cancelled at its 300 ms bound, tried again smaller down to 100 ids, and then migrating
/// fails naming the ids, without waiting out the sleep; the batches before it stay committed, 0009 is not
/// recorded, and once the cause is gone migrating goes on where it stopped.
#[sqlx::test(migrations = false)]
async fn each_batch_of_the_backfill_is_bounded(pool: PgPool) {
    use livermore_db::{Backfill, LockRetry, MigrateOptions};

    at_8_with_rows_to_backfill(&pool, 5_000).await;
    sqlx::query(
        "CREATE FUNCTION slow_update() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN PERFORM pg_sleep(3); RETURN NEW; END $$",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER slow_update BEFORE UPDATE ON users
         FOR EACH ROW WHEN (OLD.id = 2500) EXECUTE FUNCTION slow_update()",
    )
    .execute(&pool)
    .await
    .unwrap();
    let options = MigrateOptions::new(
        LockRetry::default(),
        Backfill::new(1_000, Duration::from_millis(300)).replicas(None, Duration::ZERO),
    );
    let mut conn = pool.acquire().await.unwrap();
    let started = std::time::Instant::now();
    let reason = blocked_reason(livermore_db::migrate_on(&mut conn, None, options).await);
    let took = started.elapsed();
    // Cut down around the slow row: 1 000 ids from 2001, 500, then 250 (2001-2250 pass), 125
    // (2251-2375 pass), 100 (2376-2475 pass), and 100 from 2476 fail.
    assert!(
        reason.contains("a batch of migration 0009's backfill (ids 2476 to 2575)")
            && reason.contains("bound of 300 ms")
            && reason.contains("2475 row(s) changed before are committed"),
        "{reason}"
    );
    // Five batches cancelled at 300 ms each, not a 3 s sleep each.
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert_eq!(crate::common::backfilled(&pool).await, 2_475);
    assert_eq!(applied_versions(&pool).await, (1..=8).collect::<Vec<_>>());

    sqlx::query("DROP TRIGGER slow_update ON users")
        .execute(&pool)
        .await
        .unwrap();
    livermore_db::migrate_on(&mut conn, None, options)
        .await
        .expect("goes on");
    assert_eq!(crate::common::backfilled(&pool).await, 5_000);
    assert_eq!(applied_versions(&pool).await, all_versions());
    let nine = MIGRATOR
        .iter()
        .find(|m| m.version == 9 && !m.migration_type.is_down_migration())
        .unwrap();
    assert_eq!(checksum_of(&pool, 9).await, *nine.checksum);
}

/// A database where 0009's first text ran (before issue 31's rewrite) migrates on: its checksum is
/// recorded under the rewritten text, which does not run again, and any other text of 0009 still
/// stops sqlx.
#[sqlx::test(migrations = false)]
async fn a_database_that_applied_the_first_0009_migrates_on(pool: PgPool) {
    use sqlx::migrate::Migration;
    let first_0009 = sqlx::migrate::Migrator::with_migrations(
        MIGRATOR
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .map(|m| match m.version {
                9 => Migration::new(
                    m.version,
                    m.description.clone(),
                    m.migration_type,
                    sqlx::SqlSafeStr::into_sql_str(include_str!(
                        "fixtures/first_applied/0009_clerk_lifecycle_backfill.up.sql"
                    )),
                    true,
                ),
                _ => m.clone(),
            })
            .collect(),
    );
    first_0009.run(&pool).await.unwrap();
    let current = MIGRATOR
        .iter()
        .find(|m| m.version == 9 && !m.migration_type.is_down_migration())
        .unwrap();
    assert_ne!(checksum_of(&pool, 9).await, *current.checksum);

    let mut conn = pool.acquire().await.unwrap();
    let prepared = livermore_db::prepare_to_migrate(&mut conn).await.unwrap();
    assert_eq!(prepared.rewritten, [9]);
    assert_eq!(checksum_of(&pool, 9).await, *current.checksum);
    livermore_db::migrate(&pool).await.expect("migrates on");
    assert_eq!(applied_versions(&pool).await, all_versions());
    assert_eq!(
        livermore_db::prepare_to_migrate(&mut conn).await.unwrap(),
        livermore_db::Prepared::default(),
        "nothing left to record"
    );
}

/// A service of the previous release starts on a database a newer release migrated (a rollback, a
/// rolling deploy): `migrate` accepts migrations it does not know, as Flyway does, and the service
/// works. A migration it knows recorded with another checksum is still refused, naming it.
#[sqlx::test(migrations = false)]
async fn a_service_starts_on_a_database_a_newer_release_migrated(pool: PgPool) {
    livermore_db::migrate(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99, 'a newer release', true, '\\x00'::bytea, 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    livermore_db::migrate(&pool)
        .await
        .expect("a database ahead of the service is accepted");
    let db = livermore_db::Db::builder(pool.connect_options().as_ref().clone())
        .build()
        .await
        .unwrap();
    db.migrate().await.expect("and through Db");
    let profile =
        livermore_db::Profile::parse("clerk", "user_ahead", "ahead@example.com", None, None)
            .unwrap();
    assert!(db.sign_in(&profile).await.unwrap().created);
    assert!(applied_versions(&pool).await.contains(&99));

    sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x00'::bytea WHERE version = 3")
        .execute(&pool)
        .await
        .unwrap();
    let refused = livermore_db::migrate(&pool).await;
    assert!(
        matches!(
            refused,
            Err(livermore_db::Error::Migrate(
                sqlx::migrate::MigrateError::VersionMismatch(3)
            ))
        ),
        "{refused:?}"
    );
    db.close().await;
}

fn blocked_reason(result: Result<(), livermore_db::Error>) -> String {
    match result {
        Err(livermore_db::Error::MigrationBlocked { reason }) => reason,
        other => panic!("not blocked: {other:?}"),
    }
}

/// An index of the right name but the wrong definition (made by hand or by other tooling) is
/// refused by its definition, before 0007 (whose `IF NOT EXISTS` would keep it) and after it, with
/// what was found and the fix; sign-ins' `ON CONFLICT` would fail with 42P10 on it.
#[sqlx::test(migrations = false)]
async fn an_identity_index_of_another_definition_is_refused(pool: PgPool) {
    MIGRATOR.run_to(6, &pool).await.unwrap();
    sqlx::query("CREATE INDEX users_identity_provider_sub_idx ON users (identity_provider)")
        .execute(&pool)
        .await
        .unwrap();
    let reason = blocked_reason(livermore_db::migrate(&pool).await);
    assert!(
        reason.contains("not the one sign-ins need")
            && reason.contains("found: CREATE INDEX users_identity_provider_sub_idx")
            && !reason.contains("delete version 7"),
        "{reason}"
    );
    assert!(!applied_versions(&pool).await.contains(&7));
    sqlx::query("DROP INDEX users_identity_provider_sub_idx")
        .execute(&pool)
        .await
        .unwrap();
    livermore_db::migrate(&pool).await.unwrap();

    // Each way of differing, on a database past 0007: not unique, not partial, another predicate,
    // other columns.
    for wrong in [
        "CREATE INDEX users_identity_provider_sub_idx ON users (identity_provider, identity_sub)
         WHERE identity_provider IS NOT NULL",
        "CREATE UNIQUE INDEX users_identity_provider_sub_idx ON users (identity_provider, identity_sub)",
        "CREATE UNIQUE INDEX users_identity_provider_sub_idx ON users (identity_provider, identity_sub)
         WHERE identity_sub IS NOT NULL",
        "CREATE UNIQUE INDEX users_identity_provider_sub_idx ON users (identity_sub, identity_provider)
         WHERE identity_provider IS NOT NULL",
    ] {
        sqlx::query("DROP INDEX users_identity_provider_sub_idx")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(wrong))
            .execute(&pool)
            .await
            .unwrap();
        let reason = blocked_reason(livermore_db::migrate(&pool).await);
        assert!(
            reason.contains("not the one sign-ins need") && reason.contains("delete version 7"),
            "{wrong}: {reason}"
        );
    }
    sqlx::query("DROP INDEX users_identity_provider_sub_idx")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "CREATE UNIQUE INDEX users_identity_provider_sub_idx ON users (identity_provider, identity_sub)
         WHERE identity_provider IS NOT NULL",
    )
    .execute(&pool)
    .await
    .unwrap();
    livermore_db::migrate(&pool)
        .await
        .expect("the index as 0007 builds it passes");
}

/// A concurrent build of the index that is still running (waiting here for a writer's transaction)
/// leaves the index INVALID meanwhile: migrating says to wait for it, not to drop it, and goes on
/// once it has finished.
#[sqlx::test(migrations = false)]
async fn an_identity_index_still_being_built_is_told_from_a_failed_one(pool: PgPool) {
    MIGRATOR.run_to(6, &pool).await.unwrap();
    let mut writer = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO users (username, email) VALUES ('w', 'w@example.com')")
        .execute(&mut *writer)
        .await
        .unwrap();
    let build = tokio::spawn({
        let pool = pool.clone();
        async move {
            sqlx::query(
                "CREATE UNIQUE INDEX CONCURRENTLY users_identity_provider_sub_idx
                 ON users (identity_provider, identity_sub) WHERE identity_provider IS NOT NULL",
            )
            .execute(&pool)
            .await
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let building: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_index
                            WHERE indexrelid = to_regclass('users_identity_provider_sub_idx'))",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if building {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the build never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reason = blocked_reason(livermore_db::migrate(&pool).await);
    assert!(
        reason.contains("being built concurrently") && !reason.contains("DROP INDEX"),
        "{reason}"
    );
    writer.commit().await.unwrap();
    build.await.unwrap().unwrap();
    livermore_db::migrate(&pool).await.unwrap();
    assert_eq!(applied_versions(&pool).await, all_versions());
}

/// A connection of its own to the test's database, under `name`, holding a read transaction on
/// `users` (as a long report does) until the returned transaction ends.
async fn long_reader(pool: &PgPool, name: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    let options = pool
        .connect_options()
        .as_ref()
        .clone()
        .application_name(name);
    let mut conn = sqlx::PgConnection::connect_with(&options).await.unwrap();
    sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
    sqlx::query("SELECT count(*) FROM users WHERE email = 'private@example.com'")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

/// While a long read transaction holds `users`, migrating waits in short attempts: a writer beside
/// it never waits more than 1 s (it waited the whole 5 s `lock_timeout`, then the migration failed),
/// and the migration goes through once the reader is gone.
#[sqlx::test(migrations = false)]
#[ignore = "timing: make test runs it alone (cargo test -- --ignored --test-threads=1)"]
async fn a_long_reader_does_not_queue_writes_behind_a_migration(pool: PgPool) {
    use std::time::{Duration, Instant};
    MIGRATOR.run_to(1, &pool).await.unwrap();
    sqlx::query("INSERT INTO users (username, email) VALUES ('w', 'w@example.com')")
        .execute(&pool)
        .await
        .unwrap();
    let mut reader = long_reader(&pool, "long-report").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let (pool, stop) = (pool.clone(), stop.clone());
        async move {
            let mut longest = Duration::ZERO;
            let mut writes = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let at = Instant::now();
                sqlx::query("UPDATE users SET updated_at = now() WHERE username = 'w'")
                    .execute(&pool)
                    .await
                    .unwrap();
                longest = longest.max(at.elapsed());
                writes += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (longest, writes)
        }
    });
    let migrating = tokio::spawn({
        let pool = pool.clone();
        async move {
            let mut conn = pool.acquire().await.unwrap();
            livermore_db::migrate_on(
                &mut conn,
                None,
                livermore_db::LockRetry::new(Duration::from_millis(300), Duration::from_secs(60)),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !migrating.is_finished(),
        "migrated while the reader held users"
    );
    sqlx::query("COMMIT").execute(&mut reader).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), migrating)
        .await
        .expect("migrates once the reader is gone")
        .unwrap()
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (longest, writes) = writer.await.unwrap();
    assert_eq!(applied_versions(&pool).await, all_versions());
    println!("beside the migration: {writes} writes, the longest {longest:?}");
    assert!(
        longest < Duration::from_secs(1),
        "a write waited {longest:?} behind the migration"
    );
}

/// Past its budget, migrating gives up cleanly: blocked, naming the session in the way (its pid,
/// application name, state and age; not its statement), with nothing half-applied.
#[sqlx::test(migrations = false)]
async fn migrating_blocked_past_its_budget_names_who_blocked_it(pool: PgPool) {
    use std::time::Duration;
    MIGRATOR.run_to(1, &pool).await.unwrap();
    let mut reader = long_reader(&pool, "long-report").await;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut reader)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let blocked = livermore_db::migrate_on(
        &mut conn,
        None,
        livermore_db::LockRetry::new(Duration::from_millis(200), Duration::from_secs(3)),
    )
    .await;
    let reason = match blocked {
        Err(livermore_db::Error::MigrationBlocked { reason }) => reason,
        other => panic!("{other:?}"),
    };
    assert!(
        reason.contains("migration 0002")
            && reason.contains(&format!("pid {pid} (\"long-report\", idle in transaction"))
            && !reason.contains("private@example.com"),
        "{reason}"
    );
    assert_eq!(applied_versions(&pool).await, [1]);
    // The advisory lock and the setting were released: another run goes through once the
    // reader is gone.
    sqlx::query("COMMIT").execute(&mut reader).await.unwrap();
    livermore_db::migrate(&pool).await.unwrap();
    assert_eq!(applied_versions(&pool).await, all_versions());
}

/// A database that applied 0002-0006 before they read `livermore.lock_timeout` migrates on: their
/// checksums are recorded under the current texts, and nothing runs again.
#[sqlx::test(migrations = false)]
async fn a_database_that_applied_the_migrations_before_lock_retries_migrates_on(pool: PgPool) {
    applied_earlier_texts_migrate_on(
        &pool,
        &[
            (
                2,
                include_str!("fixtures/before_lock_retries/0002_users_iam.up.sql"),
            ),
            (
                3,
                include_str!("fixtures/before_lock_retries/0003_users_utc_defaults.up.sql"),
            ),
            (
                4,
                include_str!("fixtures/before_lock_retries/0004_clerk_sync.up.sql"),
            ),
            (
                5,
                include_str!("fixtures/before_lock_retries/0005_clerk_lifecycle.up.sql"),
            ),
            (
                6,
                include_str!("fixtures/before_lock_retries/0006_clerk_role_baseline.up.sql"),
            ),
        ],
    )
    .await;
}

/// Applies every migration, those in `earlier` under the given earlier texts; then
/// `prepare_to_migrate` records exactly those under the current texts, nothing as applied without
/// running, and `migrate` goes on to the end.
async fn applied_earlier_texts_migrate_on(pool: &PgPool, earlier: &[(i64, &'static str)]) {
    use sqlx::migrate::Migration;
    let old = sqlx::migrate::Migrator::with_migrations(
        MIGRATOR
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .map(|m| match earlier.iter().find(|(v, _)| *v == m.version) {
                Some((_, sql)) => Migration::new(
                    m.version,
                    m.description.clone(),
                    m.migration_type,
                    sqlx::SqlSafeStr::into_sql_str(*sql),
                    m.no_tx,
                ),
                None => m.clone(),
            })
            .collect(),
    );
    old.run(pool).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let prepared = livermore_db::prepare_to_migrate(&mut conn).await.unwrap();
    let versions: Vec<i64> = earlier.iter().map(|(v, _)| *v).collect();
    assert_eq!(prepared.rewritten, versions);
    assert!(prepared.recorded.is_empty(), "{prepared:?}");
    for m in MIGRATOR
        .iter()
        .filter(|m| versions.contains(&m.version) && !m.migration_type.is_down_migration())
    {
        assert_eq!(checksum_of(pool, m.version).await, *m.checksum);
    }
    livermore_db::migrate(pool).await.expect("migrates on");
    assert_eq!(applied_versions(pool).await, all_versions());
}

/// `livermore-db --help` says that the way back is forward and where the runbook is (a section that
/// exists), and no command of it runs a down migration.
#[cfg(feature = "cli")]
#[test]
fn help_says_the_way_back_is_forward() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_livermore-db"))
        .arg("--help")
        .output()
        .expect("run livermore-db");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("The way back is forward")
            && help.contains("docs/operations.md, \"The way back is forward\""),
        "{help}"
    );
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .expect("a list of commands")
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(commands.contains(&"migrate"), "{commands:?}");
    for command in ["revert", "undo", "down", "rollback"] {
        assert!(!commands.contains(&command), "a command {command}: {help}");
    }
    let runbook = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"),
    )
    .unwrap();
    assert!(runbook.contains("**The way back is forward.**"));
}

/// Columns of 0005 and 0006 that other tooling made first (the TypeScript services' schema, say)
/// are adopted as they are, with their data, and their downs remove only what they made: the
/// adopted columns and their data survive a revert to 0004. (0005's and 0006's texts before issue
/// 31 failed here with 42701, "column already exists".)
#[sqlx::test(migrations = false)]
async fn the_lifecycle_migrations_adopt_columns_that_exist(pool: PgPool) {
    MIGRATOR.run_to(4, &pool).await.unwrap();
    sqlx::query(
        "ALTER TABLE users ADD COLUMN role_source varchar(10) NOT NULL DEFAULT 'manual',
                           ADD COLUMN released_email varchar(255),
                           ADD COLUMN clerk_role varchar(20)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO users (username, email, role, role_source, released_email, clerk_role)
         VALUES ('ada', 'ada@example.com', 'admin', 'clerk', 'old@example.com', 'admin')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let before = rows_of(&pool, "users").await;
    livermore_db::migrate(&pool).await.expect("adopts");
    assert_eq!(applied_versions(&pool).await, all_versions());
    assert_eq!(rows_of(&pool, "users").await, before, "no row changed");
    let markers: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT attname::text, col_description(attrelid, attnum) FROM pg_attribute
         WHERE attrelid = 'users'::regclass
           AND attname IN ('role_source', 'released_email', 'clerk_role') ORDER BY attname",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(markers.iter().all(|(_, m)| m.is_none()), "{markers:?}");
    let checks: Vec<String> = sqlx::query_scalar(
        "SELECT conname::text FROM pg_constraint WHERE conrelid = 'users'::regclass
           AND conname IN ('users_role_source_check', 'users_clerk_role_check') ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        checks,
        ["users_clerk_role_check", "users_role_source_check"]
    );

    MIGRATOR
        .undo(&pool, 4)
        .await
        .expect("the downs keep what they adopted");
    assert_eq!(applied_versions(&pool).await, [1, 2, 3, 4]);
    let kept: (String, Option<String>, Option<String>) =
        sqlx::query_as("SELECT role_source, released_email, clerk_role FROM users")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        kept,
        (
            "clerk".to_owned(),
            Some("old@example.com".to_owned()),
            Some("admin".to_owned())
        )
    );
    let checks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 'users'::regclass
           AND conname IN ('users_role_source_check', 'users_clerk_role_check')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(checks, 0, "the checks 0005 and 0006 made are gone");
}

/// Adopted columns of 0005 and 0006 holding values their checks refuse are refused before anything
/// changes (such rows could not be updated once the checks exist), naming each check, the count and
/// the ids; fixed, migrating goes on.
#[sqlx::test(migrations = false)]
async fn adopted_lifecycle_columns_with_rows_the_checks_refuse_are_refused(pool: PgPool) {
    MIGRATOR.run_to(4, &pool).await.unwrap();
    sqlx::query(
        "ALTER TABLE users ADD COLUMN role_source varchar(10) NOT NULL DEFAULT 'manual',
                           ADD COLUMN clerk_role varchar(20)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let ids: Vec<i32> = sqlx::query_scalar(
        "INSERT INTO users (username, email, role_source, clerk_role)
         VALUES ('a', 'a@example.com', 'script', NULL), ('b', 'b@example.com', 'manual', 'moderator')
         RETURNING id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let reason = blocked_reason(livermore_db::migrate(&pool).await);
    assert!(
        reason.contains("migration 0005, 0006 adds")
            && reason.contains("users_role_source_check: 1 row(s)")
            && reason.contains(&format!("(ids {})", ids[0]))
            && reason.contains("users_clerk_role_check: 1 row(s)")
            && reason.contains(&format!("(ids {})", ids[1]))
            && !reason.contains("moderator")
            && !reason.contains("script"),
        "{reason}"
    );
    assert_eq!(applied_versions(&pool).await, [1, 2, 3, 4]);

    sqlx::query("UPDATE users SET role_source = 'manual', clerk_role = NULL")
        .execute(&pool)
        .await
        .unwrap();
    livermore_db::migrate(&pool).await.unwrap();
    sqlx::query("UPDATE users SET last_login_at = now()")
        .execute(&pool)
        .await
        .expect("every row writable");
}

/// A database that applied 0005 and 0006 before they adopted existing columns migrates on: their
/// checksums are recorded under the current texts, and nothing runs again.
#[sqlx::test(migrations = false)]
async fn a_database_that_applied_0005_and_0006_before_adoption_migrates_on(pool: PgPool) {
    applied_earlier_texts_migrate_on(
        &pool,
        &[
            (
                5,
                include_str!("fixtures/before_adoption/0005_clerk_lifecycle.up.sql"),
            ),
            (
                6,
                include_str!("fixtures/before_adoption/0006_clerk_role_baseline.up.sql"),
            ),
        ],
    )
    .await;
}

/// The same for 0008 before it validated each check in one read.
#[sqlx::test(migrations = false)]
async fn a_database_that_applied_0008_before_one_read_per_check_migrates_on(pool: PgPool) {
    applied_earlier_texts_migrate_on(
        &pool,
        &[(
            8,
            include_str!("fixtures/before_one_pass/0008_users_checks_validate.up.sql"),
        )],
    )
    .await;
}

/// 0008 reads `users` once per check it validates, three times in all (`pg_stat_user_tables`'s
/// sequential scans, counted around it on one connection), and no more where rows break a check
/// (the validation that fails is rolled back, warned about, and the check stays `NOT VALID`). Its
/// earlier text read six times: a search for breaking rows before each validation.
#[sqlx::test(migrations = false)]
async fn validating_the_checks_reads_users_once_per_check(pool: PgPool) {
    let mut conn = pool.acquire().await.unwrap();
    MIGRATOR.run_to(7, &mut *conn).await.unwrap();
    sqlx::query(
        "INSERT INTO users (username, email, identity_provider, identity_sub)
         SELECT 'u' || n, 'u' || n || '@example.com', 'clerk', 'user_' || n
         FROM generate_series(1, 1000) AS n",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    // One row breaking users_role_check, written around the check as other tooling might have.
    sqlx::query("ALTER TABLE users DROP CONSTRAINT users_role_check")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("UPDATE users SET role = 'moderator' WHERE username = 'u500'")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(
        "ALTER TABLE users ADD CONSTRAINT users_role_check
           CHECK (role IN ('user', 'admin', 'subscriber_basic', 'subscriber_pro')) NOT VALID",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    let before = seq_scans_of_users(&mut conn).await;
    MIGRATOR
        .run_to(8, &mut *conn)
        .await
        .expect("0008 warns, does not fail");
    let after = seq_scans_of_users(&mut conn).await;
    assert_eq!(after - before, 3, "reads of users by 0008");
    let valid: Vec<(String, bool)> = sqlx::query_as(
        "SELECT conname::text, convalidated FROM pg_constraint
         WHERE conrelid = 'users'::regclass AND contype = 'c'
           AND conname IN ('users_identity_pair_check', 'users_role_check', 'users_role_source_check')
         ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    assert_eq!(
        valid,
        [
            ("users_identity_pair_check".to_owned(), true),
            ("users_role_check".to_owned(), false),
            ("users_role_source_check".to_owned(), true)
        ]
    );
}

/// `users`' sequential scans so far, this connection's included: its counts reach the view when it
/// goes idle after a flush is asked for.
async fn seq_scans_of_users(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query_scalar("SELECT seq_scan FROM pg_stat_user_tables WHERE relid = 'users'::regclass")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
}

/// A database at version 6 holding what 0007-0009 will meet: an identity held by two users (0007's
/// unique build would fail), a role its check refuses (0008 would leave the check NOT VALID), and
/// rows 0009 has to change. `survey` reports each with counts and ids, never values; `status` and
/// `migrate --dry-run` print it, with the locks, and exit 1; nothing is written.
#[sqlx::test(migrations = false)]
async fn status_and_dry_runs_say_what_pending_migrations_will_meet(pool: PgPool) {
    use livermore_db::Finding;

    at_8_with_rows_to_backfill(&pool, 3).await;
    // Back to 6: the index and the validation are undone, the backfill's rows still to change.
    MIGRATOR.undo(&pool, 6).await.unwrap();
    let twice: Vec<i32> = sqlx::query_scalar(
        "INSERT INTO users (username, email, identity_provider, identity_sub)
         VALUES ('t1', 't1@example.com', 'clerk', 'user_twice'),
                ('t2', 't2@example.com', 'clerk', 'user_twice')
         RETURNING id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    // A role the check refuses, written as another tool might have before the check existed.
    sqlx::query("ALTER TABLE users DROP CONSTRAINT users_role_check")
        .execute(&pool)
        .await
        .unwrap();
    let moderator: i32 = sqlx::query_scalar(
        "UPDATE users SET role = 'moderator' WHERE username = 'u2' RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    sqlx::query(
        "ALTER TABLE users ADD CONSTRAINT users_role_check
           CHECK (role IN ('user', 'admin', 'subscriber_basic', 'subscriber_pro')) NOT VALID",
    )
    .execute(&pool)
    .await
    .unwrap();
    let before = rows_of(&pool, "users").await;

    let mut conn = pool.acquire().await.unwrap();
    let found = livermore_db::survey(&mut conn).await.unwrap();
    let said = |f: &Finding| format!("{:04} {} {}", f.version, f.trouble, f.said);
    let lines: Vec<String> = found.iter().map(said).collect();
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    assert!(
        has(&format!(
            "0007 true 1 identity pair(s) held by more than one user (2 rows; first ids {})",
            twice[0]
        )),
        "{lines:#?}"
    );
    assert!(
        has("0008 true users_role_check: 1 row(s)") && has(&format!("(ids {moderator})")),
        "{lines:#?}"
    );
    assert!(
        has("0008 false users_identity_pair_check: no row breaks it"),
        "{lines:#?}"
    );
    assert!(
        has("0008 false users_role_source_check: no row breaks it"),
        "{lines:#?}"
    );
    assert!(
        has("0009 false 3 row(s) whose role a Clerk event set"),
        "{lines:#?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("moderator") || l.contains("user_twice"))
    );

    #[cfg(feature = "cli")]
    for args in [&["status"][..], &["migrate", "--dry-run"][..]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_livermore-db"))
            .args(args)
            .env("LIVERMORE_DATABASE_URL", url_of(&pool))
            .output()
            .expect("run livermore-db");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stdout}");
        assert!(
            stdout.contains("data: 0007 FIX FIRST: 1 identity pair(s)")
                && stdout.contains("data: 0009 3 row(s)")
                && stdout.contains("locks the pending migrations take"),
            "{args:?}: {stdout}"
        );
    }
    assert_eq!(rows_of(&pool, "users").await, before, "nothing written");
    assert_eq!(applied_versions(&pool).await, [1, 2, 3, 4, 5, 6]);
}
