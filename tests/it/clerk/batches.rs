//! Batches and backfills: valid and rejected records, updates like single events, ten thousand users,
//! a failing insert or update falling back to one by one (and only what must), taken usernames.
use super::*;

#[sqlx::test]
async fn a_batch_applies_the_valid_records_and_rejects_the_others(pool: PgPool) {
    // Someone already holds taken@example.com.
    sqlx::query("INSERT INTO users (username, email) VALUES ('taken', 'taken@example.com')")
        .execute(&pool)
        .await
        .unwrap();
    let batch = users(vec![
        clerk_user("user_1", "one@example.com", T0, json!({})),
        clerk_user(
            "user_2",
            "two@example.com",
            T0,
            json!({"email_addresses": []}),
        ),
        clerk_user("user_3", "taken@example.com", T0, json!({})),
        clerk_user(
            "user_4",
            "four@example.com",
            T0,
            json!({"image_url": "ftp://nope"}),
        ),
        clerk_user(
            "user_5",
            "five@example.com",
            T0,
            json!({"public_metadata": {"role": "root"}}),
        ),
        clerk_user("user_1", "one-older@example.com", T0 - 1, json!({})),
        clerk_user("", "empty-id@example.com", T0, json!({})),
        clerk_user("user_6", "one@other.example", T0, json!({})),
    ]);
    let report = apply_batch(&pool, &batch).await.unwrap();
    assert_eq!(
        (report.created, report.updated, report.unchanged),
        (3, 0, 1),
        "{report:?}"
    );
    let rejected: Vec<usize> = report.rejected.iter().map(|r| r.position).collect();
    assert_eq!(rejected, [3, 4, 7], "{report:?}");
    let not_created: Vec<usize> = report.not_created.iter().map(|r| r.position).collect();
    assert_eq!(not_created, [2], "{report:?}");
    assert!(
        report.rejected[0]
            .reason
            .contains("already used by another user"),
        "{report:?}"
    );
    assert_eq!(report.role_notes.len(), 1);
    assert_eq!(report.role_notes[0].position, 5);
    assert_eq!(report.total(), batch.len());

    let one = stored(&pool, "user_1").await;
    assert_eq!(
        one.email, "one@example.com",
        "the newer of the two records for user_1"
    );
    let six = stored(&pool, "user_6").await;
    assert_eq!(
        (one.username.as_str(), six.username.as_str()),
        ("one", "one_2")
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 4);
}

#[sqlx::test]
async fn a_batch_updates_stored_users_like_single_events_do(pool: PgPool) {
    let first = users(vec![
        clerk_user("user_1", "one@example.com", T0, json!({})),
        clerk_user("user_2", "two@example.com", T0, json!({})),
    ]);
    apply_batch(&pool, &first).await.unwrap();
    apply_event(&pool, &deleted("user_2", T0 + 5))
        .await
        .unwrap();

    let second = users(vec![
        clerk_user(
            "user_1",
            "one@new.example",
            T0 + 10,
            json!({"public_metadata": {"role": "admin"}}),
        ),
        clerk_user("user_2", "two@new.example", T0 + 10, json!({})),
        clerk_user("user_3", "three@example.com", T0, json!({})),
    ]);
    let report = apply_batch(&pool, &second).await.unwrap();
    assert_eq!(
        (report.created, report.updated, report.unchanged),
        (1, 2, 0),
        "{report:?}"
    );
    let one = stored(&pool, "user_1").await;
    assert_eq!(
        (one.email.as_str(), one.role),
        ("one@new.example", Role::Admin)
    );
    let two = stored(&pool, "user_2").await;
    assert_eq!(two.released_email.as_deref(), Some("two@new.example"));
    assert!(!two.is_active, "a backfill does not undo a deletion");

    // The role has its own version: a newer record without a valid role revokes the role Clerk
    // granted; an older record with a valid role, arriving later, changes nothing.
    let newer_without_role = users(vec![clerk_user(
        "user_1",
        "one@newer.example",
        T0 + 20,
        json!({"public_metadata": {"role": "superuser"}}),
    )]);
    apply_batch(&pool, &newer_without_role).await.unwrap();
    let older_with_role = users(vec![clerk_user(
        "user_1",
        "one@older.example",
        T0 + 15,
        json!({"public_metadata": {"role": "subscriber_basic"}}),
    )]);
    let report = apply_batch(&pool, &older_with_role).await.unwrap();
    assert_eq!((report.updated, report.unchanged), (0, 1), "{report:?}");
    let one = stored(&pool, "user_1").await;
    assert_eq!(
        (one.email.as_str(), one.role),
        ("one@newer.example", Role::User)
    );

    let stale = apply_batch(&pool, &first).await.unwrap();
    assert_eq!(
        (stale.created, stale.updated, stale.unchanged),
        (0, 0, 2),
        "{stale:?}"
    );
}

#[sqlx::test]
async fn a_ten_thousand_user_backfill_twice(pool: PgPool) {
    let all: Vec<Value> = (0..10_000)
        .map(|i| {
            clerk_user(
                &format!("user_{i:05}"),
                &format!("trader{}@firm{}.example", i % 100, i / 100),
                T0 + i as i64,
                json!({"first_name": format!("Trader {i}"), "last_sign_in_at": T0}),
            )
        })
        .collect();
    let batch = users(all);
    let mut first = BackfillReport::default();
    for chunk in batch.chunks(2500) {
        first.merge(apply_batch(&pool, chunk).await.unwrap());
    }
    assert_eq!(
        (first.created, first.updated, first.unchanged),
        (10_000, 0, 0)
    );
    assert!(
        first.rejected.is_empty(),
        "{:?}",
        &first.rejected[..first.rejected.len().min(3)]
    );
    let (count, usernames): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT username) FROM users WHERE identity_provider = 'clerk'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((count, usernames), (10_000, 10_000));

    let mut second = BackfillReport::default();
    for chunk in batch.chunks(2500) {
        second.merge(apply_batch(&pool, chunk).await.unwrap());
    }
    assert_eq!(
        (second.created, second.updated, second.unchanged),
        (0, 0, 10_000)
    );
    assert!(second.rejected.is_empty());
}

#[sqlx::test]
async fn the_tombstone_keeps_the_sync_migration_from_going_down(pool: PgPool) {
    apply_event(&pool, &deleted("user_z", T0)).await.unwrap();
    let err = livermore_db::MIGRATOR.undo(&pool, 3).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("refusing to drop table identity_tombstones"),
        "{err}"
    );
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM identity_tombstones")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kept, 1);
}

#[sqlx::test]
async fn a_batch_whose_insert_fails_falls_back_to_one_by_one(pool: PgPool) {
    // A violation the checks before the insert cannot see (as when another writer creates a user
    // between them and the insert): the database refuses one subject's row, whatever its username.
    sqlx::query(
        r#"CREATE FUNCTION refuse_user_2() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
               IF NEW.identity_sub = 'user_2' THEN
                   RAISE unique_violation USING CONSTRAINT = 'users_email_unique',
                                                MESSAGE = 'duplicate key value violates unique constraint';
               END IF;
               RETURN NEW;
           END $$"#,
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("CREATE TRIGGER refuse_user_2 BEFORE INSERT ON users FOR EACH ROW EXECUTE FUNCTION refuse_user_2()")
        .execute(&pool)
        .await
        .unwrap();

    let batch = numbered(5, |i| (format!("u{i}@example.com"), T0));
    let report = apply_batch(&pool, &batch).await.unwrap();
    assert_eq!(report.created, 4, "{report:?}");
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    assert_eq!(report.rejected[0].position, 2);
    assert!(
        report.rejected[0]
            .reason
            .contains("already used by another user"),
        "{report:?}"
    );
    let subs: Vec<String> =
        sqlx::query_scalar("SELECT identity_sub FROM users ORDER BY identity_sub")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(subs, ["user_1", "user_3", "user_4", "user_5"]);
}

/// Twenty stored users, `user_1` to `user_20` (`u{i}@example.com`), and a batch updating each of
/// them (a new address at `T0 + 10`), `user_5`'s to `held@example.com`, which a user outside
/// Clerk holds; but the record of `stale`, if any, is older than what is stored.
async fn twenty_updates_one_taking_a_held_address(
    pool: &PgPool,
    stale: Option<usize>,
) -> Vec<(usize, ClerkUser)> {
    sqlx::query("INSERT INTO users (username, email) VALUES ('holder', 'held@example.com')")
        .execute(pool)
        .await
        .unwrap();
    let stored = numbered(20, |i| (format!("u{i}@example.com"), T0));
    assert_eq!(apply_batch(pool, &stored).await.unwrap().created, 20);
    numbered(20, |i| {
        let at = if stale == Some(i) { T0 - 1 } else { T0 + 10 };
        (held_at_5(i, "new.example"), at)
    })
}

/// An update batch where one record takes an address another user holds: that record is
/// rejected, and the others are still updated together, in one statement (the holders are looked
/// up once the bulk statement fails, and only the records they hold go one by one). Counted by a
/// statement trigger: `UPDATE` statements on `users` that succeeded.
#[sqlx::test]
#[allow(clippy::disallowed_methods)]
async fn an_update_batch_with_a_held_address_updates_the_rest_together(pool: PgPool) {
    let batch = twenty_updates_one_taking_a_held_address(&pool, None).await;
    sqlx::Executor::execute(
        &pool,
        "CREATE TABLE update_statements (at timestamptz DEFAULT clock_timestamp());
         CREATE FUNCTION count_update() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO update_statements DEFAULT VALUES; RETURN NULL; END $$;
         CREATE TRIGGER count_update AFTER UPDATE ON users
           FOR EACH STATEMENT EXECUTE FUNCTION count_update();",
    )
    .await
    .unwrap();
    let report = apply_batch(&pool, &batch).await.unwrap();
    assert_eq!(report.updated, 19, "{report:?}");
    let rejected: Vec<usize> = report.rejected.iter().map(|r| r.position).collect();
    assert_eq!(rejected, [5], "{report:?}");
    let statements: i64 = sqlx::query_scalar("SELECT count(*) FROM update_statements")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        statements <= 2,
        "{statements} UPDATE statements for 19 updates"
    );
}

/// The same for new users: a batch of twenty where `user_5`'s address is held by a user outside
/// Clerk; the others are inserted together, in one statement. Counted by a statement trigger:
/// `INSERT` statements on `users` that succeeded.
#[sqlx::test]
#[allow(clippy::disallowed_methods)]
async fn an_insert_batch_with_a_held_address_inserts_the_rest_together(pool: PgPool) {
    sqlx::query("INSERT INTO users (username, email) VALUES ('holder', 'held@example.com')")
        .execute(&pool)
        .await
        .unwrap();
    count_inserts(&pool).await;
    let batch = numbered(20, |i| (held_at_5(i, "example.com"), T0));
    let report = apply_batch(&pool, &batch).await.unwrap();
    assert_eq!(report.created, 19, "{report:?}");
    let rejected: Vec<usize> = report.rejected.iter().map(|r| r.position).collect();
    assert_eq!(rejected, [5], "{report:?}");
    let statements = inserts_counted(&pool).await;
    assert!(
        statements <= 2,
        "{statements} INSERT statements for 19 users"
    );
}

/// A unique violation that no held address explains (here a trigger refuses `user_7`'s update as
/// if another writer had just taken its address): after one look-up of the holders, the bulk
/// statement is not retried for ever; the records go one by one and only `user_7`'s fails (and
/// `user_8`'s, older than what is stored, changes nothing, one by one too). `user_9`'s is refused
/// by a unique violation of another constraint: rejected, but not as an address already used.
#[sqlx::test]
#[allow(clippy::disallowed_methods)]
async fn an_update_batch_refused_without_a_holder_falls_back_to_one_by_one(pool: PgPool) {
    let batch = twenty_updates_one_taking_a_held_address(&pool, Some(8)).await;
    sqlx::Executor::execute(&pool,
        r#"CREATE FUNCTION refuse_user_7() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
               IF NEW.identity_sub = 'user_7' THEN
                   RAISE unique_violation USING CONSTRAINT = 'users_email_unique',
                                                MESSAGE = 'duplicate key value violates unique constraint';
               END IF;
               IF NEW.identity_sub = 'user_9' THEN
                   RAISE unique_violation USING CONSTRAINT = 'some_other_unique',
                                                MESSAGE = 'duplicate key value violates unique constraint';
               END IF;
               RETURN NEW;
           END $$;
           CREATE TRIGGER refuse_user_7 BEFORE UPDATE ON users FOR EACH ROW
             EXECUTE FUNCTION refuse_user_7();"#,
    )
    .await
    .unwrap();
    let report = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        apply_batch(&pool, &batch),
    )
    .await
    .expect("the batch ended")
    .unwrap();
    assert_eq!((report.updated, report.unchanged), (16, 1), "{report:?}");
    let rejected: Vec<usize> = report.rejected.iter().map(|r| r.position).collect();
    assert_eq!(rejected, [5, 7, 9], "{report:?}");
    // Only a violation of the e-mail index is "already used"; another names what the database said.
    let taken = |i: usize| {
        report.rejected[i]
            .reason
            .contains("already used by another user")
    };
    assert_eq!(
        (taken(0), taken(1), taken(2)),
        (true, true, false),
        "{report:?}"
    );
}

/// New users whose address gives a username already taken (by a stored user, or by an earlier record
/// of the batch) get the next free ones, as one by one in input order would give them.
#[sqlx::test]
async fn a_batch_gives_taken_usernames_the_next_free_ones(pool: PgPool) {
    sqlx::query("INSERT INTO users (username, email) VALUES ('ada', 'someone@example.com'), ('ada_3', 'x@example.com')")
        .execute(&pool)
        .await
        .unwrap();
    count_inserts(&pool).await;
    let batch = users(vec![
        clerk_user("user_a", "ada@one.example", T0, json!({})),
        clerk_user("user_b", "grace@example.com", T0, json!({})),
        clerk_user("user_c", "ada@two.example", T0, json!({})),
        clerk_user("user_d", "grace@other.example", T0, json!({})),
    ]);
    let report = apply_batch(&pool, &batch).await.unwrap();
    assert_eq!(report.created, 4, "{report:?}");
    let mut names = Vec::new();
    for sub in ["user_a", "user_b", "user_c", "user_d"] {
        names.push(stored(&pool, sub).await.username);
    }
    assert_eq!(names, ["ada_2", "grace", "ada_4", "grace_2"]);
    // In bulk: the usernames the addresses give first (grace goes in), then the free ones looked up
    // for the rest (ada_2, ada_4, grace_2 together), not one by one.
    let statements = inserts_counted(&pool).await;
    assert_eq!(statements, 2, "{statements} INSERT statements for 4 users");
}

/// From now on, successful `INSERT` statements on `users` are counted (a statement trigger):
/// [`inserts_counted`] reads the count.
#[allow(clippy::disallowed_methods)]
async fn count_inserts(pool: &PgPool) {
    sqlx::Executor::execute(
        pool,
        "CREATE TABLE insert_statements (at timestamptz DEFAULT clock_timestamp());
         CREATE FUNCTION count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO insert_statements DEFAULT VALUES; RETURN NULL; END $$;
         CREATE TRIGGER count_insert AFTER INSERT ON users
           FOR EACH STATEMENT EXECUTE FUNCTION count_insert();",
    )
    .await
    .unwrap();
}

async fn inserts_counted(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM insert_statements")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Clerk users `user_1` to `user_n` (positions 1 to n), each with the address and `updated_at`
/// that `record` gives for its number.
fn numbered(n: usize, record: impl Fn(usize) -> (String, i64)) -> Vec<(usize, ClerkUser)> {
    users(
        (1..=n)
            .map(|i| {
                let (email, at) = record(i);
                clerk_user(&format!("user_{i}"), &email, at, json!({}))
            })
            .collect(),
    )
}

/// User `i`'s address at `domain`, except `user_5`'s: `held@example.com`, which a user outside
/// Clerk holds.
fn held_at_5(i: usize, domain: &str) -> String {
    if i == 5 {
        "held@example.com".to_owned()
    } else {
        format!("u{i}@{domain}")
    }
}
