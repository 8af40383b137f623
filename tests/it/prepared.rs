//! Prepared statements across migrations (docs/operations.md, "Prepared statements and new
//! columns"): a statement prepared with `SELECT *` (as Livermore's TypeScript services' pooled
//! connections keep them) fails with 0A000 "cached plan must not change result type" after exactly
//! the steps that change `users`' columns, and works once prepared again; the crate's own
//! statements name their columns and keep working on the connections they were prepared on.
use std::collections::BTreeSet;

use crate::common::{all_versions, sqlstate};
use livermore_db::{Db, MIGRATOR, Profile, Role};
use sqlx::{Connection, PgPool};

const SELECT_STAR: &str = "SELECT * FROM users";

/// `users`' result columns: what a `SELECT *` returns, in order.
async fn result_columns(pool: &PgPool) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT attname::text, atttypid::regtype::text FROM pg_attribute
         WHERE attrelid = 'users'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn a_prepared_select_star_fails_exactly_after_steps_that_change_columns(pool: PgPool) {
    MIGRATOR.run_to(1, &pool).await.unwrap();
    sqlx::query("INSERT INTO users (username, email) VALUES ('ada', 'ada@example.com')")
        .execute(&pool)
        .await
        .unwrap();
    // One connection of a service's pool, kept across the deploy; sqlx prepares and caches the
    // statement on it, as node-postgres does a named one.
    let mut service = pool.acquire().await.unwrap();
    let (mut broke, mut changed) = (BTreeSet::new(), BTreeSet::new());
    for version in all_versions().into_iter().filter(|&v| v > 1) {
        sqlx::query(SELECT_STAR)
            .fetch_all(&mut *service)
            .await
            .unwrap();
        let before = result_columns(&pool).await;
        MIGRATOR.run_to(version, &pool).await.unwrap();
        if result_columns(&pool).await != before {
            changed.insert(version);
        }
        match sqlx::query(SELECT_STAR).fetch_all(&mut *service).await {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(
                    sqlstate(&e).as_deref(),
                    Some("0A000"),
                    "after {version}: {e}"
                );
                broke.insert(version);
                // What the runbook says to do: prepare it again (a new connection does too).
                service.clear_cached_statements().await.unwrap();
                let rows = sqlx::query(SELECT_STAR)
                    .fetch_all(&mut *service)
                    .await
                    .unwrap_or_else(|e| panic!("prepared again after {version}: {e}"));
                assert_eq!(rows.len(), 1);
            }
        }
    }
    eprintln!("steps that changed users' columns: {changed:?}");
    assert!(!changed.is_empty(), "no step changed users' columns");
    assert_eq!(
        broke, changed,
        "the steps that broke a prepared SELECT * are those that changed users' columns"
    );
}

/// A later release adds a column while this release's services run: every call of the handle
/// still works, on the very connections that prepared its statements before, while a `SELECT *`
/// prepared on a connection of the same age fails (so the column did change the result type).
#[sqlx::test]
async fn the_crates_statements_outlive_a_column_a_later_release_adds(pool: PgPool) {
    let options = pool
        .connect_options()
        .as_ref()
        .clone()
        .application_name("livermore-prepared-test");
    let db = Db::builder(options)
        .connections(1)
        .lookup_connections(1)
        .build()
        .await
        .unwrap();
    let mut service = pool.acquire().await.unwrap();
    let profile = Profile::parse("clerk", "user_prep", "prep@example.com", Some("Ada"), None)
        .expect("valid profile");

    let calls = |round: &'static str| {
        let (db, profile) = (db.clone(), profile.clone());
        async move {
            let id = db.sign_in(&profile).await.expect(round).user.id;
            db.find_by_identity(&profile.identity).await.expect(round);
            db.find_by_id(id).await.expect(round).expect(round);
            db.find_by_email(&profile.email).await.expect(round);
            db.record_login(id).await.expect(round);
            db.set_role(id, Role::SubscriberBasic).await.expect(round);
            db.list_by_role(Role::SubscriberBasic, None, 10)
                .await
                .expect(round);
        }
    };
    calls("before").await;
    sqlx::query(SELECT_STAR)
        .fetch_all(&mut *service)
        .await
        .unwrap();
    let backends = || async {
        sqlx::query_scalar::<_, i32>(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'livermore-prepared-test'
             ORDER BY pid",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let before = backends().await;

    sqlx::query("ALTER TABLE users ADD COLUMN next_release_note text")
        .execute(&pool)
        .await
        .unwrap();

    let e = sqlx::query(SELECT_STAR)
        .fetch_all(&mut *service)
        .await
        .expect_err("a SELECT * prepared before the column");
    assert_eq!(sqlstate(&e).as_deref(), Some("0A000"), "{e}");
    calls("after").await;
    assert_eq!(
        backends().await,
        before,
        "the same connections served both rounds"
    );
    db.close().await;
}
