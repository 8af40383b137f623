//! Clerk sync against a real PostgreSQL: replays, every delivery order, stale and deleted events, roles,
//! bad records, and bulk backfills.
use livermore_db::clerk::*;
use livermore_db::{Error, Identity, Role, RoleSource, find_by_identity, set_role};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};

const T0: i64 = 1_700_000_000_000;

fn clerk_user(id: &str, email: &str, updated_at: i64, extra: Value) -> Value {
    let mut user = json!({
        "id": id,
        "object": "user",
        "email_addresses": [{"id": "idn_1", "email_address": email, "verification": {"status": "verified"}}],
        "primary_email_address_id": "idn_1",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "username": null,
        "image_url": "https://img.clerk.com/ada.png",
        "public_metadata": {},
        "private_metadata": {"ignored": true},
        "last_sign_in_at": null,
        "created_at": T0,
        "updated_at": updated_at,
        "external_accounts": []
    });
    if let (Value::Object(u), Value::Object(e)) = (&mut user, extra) {
        u.extend(e);
    }
    user
}

fn event(kind: &str, data: Value, timestamp: i64) -> ClerkEvent {
    serde_json::from_value(
        json!({"type": kind, "object": "event", "data": data, "timestamp": timestamp}),
    )
    .expect("an event")
}

fn deleted(id: &str, timestamp: i64) -> ClerkEvent {
    event(
        "user.deleted",
        json!({"id": id, "object": "user", "deleted": true}),
        timestamp,
    )
}

/// The row of a Clerk identity, without what legitimately differs between runs (ids, write times).
async fn row_of(conn: &mut PgConnection, sub: &str) -> Option<String> {
    sqlx::query_scalar::<_, String>(
        "SELECT (to_jsonb(u) - 'id' - 'created_at' - 'updated_at')::text FROM users u
         WHERE identity_provider = 'clerk' AND identity_sub = $1",
    )
    .bind(sub)
    .fetch_optional(conn)
    .await
    .unwrap()
}

/// created, updated (new email, role, sign-in), updated (new name, an invalid role), deleted: in
/// order of time.
fn lifecycle(sub: &str) -> Vec<ClerkEvent> {
    vec![
        event(
            "user.created",
            clerk_user(sub, "ada@example.com", T0, json!({})),
            T0,
        ),
        event(
            "user.updated",
            clerk_user(
                sub,
                "ada@newmail.example",
                T0 + 1000,
                json!({"public_metadata": {"role": "subscriber_pro"}, "last_sign_in_at": T0 + 900}),
            ),
            T0 + 1000,
        ),
        event(
            "user.updated",
            clerk_user(
                sub,
                "ada@newmail.example",
                T0 + 2000,
                // The newest profile carries a role that is not one: the role Clerk granted is
                // revoked, whichever arrives first.
                json!({"first_name": "Augusta Ada", "public_metadata": {"role": "superuser"}, "last_sign_in_at": T0 + 900}),
            ),
            T0 + 2000,
        ),
        deleted(sub, T0 + 3000),
    ]
}

/// The stored user of a Clerk identity, which must exist.
async fn stored(pool: &PgPool, sub: &str) -> livermore_db::User {
    find_by_identity(pool, &Identity::parse("clerk", sub).unwrap())
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no user for {sub}"))
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for i in 0..=p.len() {
            let mut q = p.clone();
            q.insert(i, n - 1);
            out.push(q);
        }
    }
    out
}

#[sqlx::test]
async fn every_delivery_order_and_any_replay_ends_in_the_same_row(pool: PgPool) {
    let events = lifecycle("user_perm");

    let mut tx = pool.begin().await.unwrap();
    let mut outcomes = Vec::new();
    for e in &events {
        outcomes.push(apply_event(&mut *tx, e).await.unwrap().outcome);
    }
    assert!(matches!(outcomes[0], Outcome::Created(_)), "{outcomes:?}");
    assert!(matches!(outcomes[1], Outcome::Updated(_)), "{outcomes:?}");
    assert!(matches!(outcomes[2], Outcome::Updated(_)), "{outcomes:?}");
    assert!(
        matches!(outcomes[3], Outcome::Deactivated(_)),
        "{outcomes:?}"
    );
    let in_order = row_of(&mut tx, "user_perm").await.expect("a row");
    tx.rollback().await.unwrap();
    let expected: Value = serde_json::from_str(&in_order).unwrap();
    assert_eq!(expected["released_email"], "ada@newmail.example");
    assert!(
        expected["email"]
            .as_str()
            .is_some_and(|e| e.ends_with("@deleted.invalid")),
        "{expected}"
    );
    assert_eq!(expected["display_name"], "Augusta Ada Lovelace");
    assert_eq!(expected["role"], "user");
    assert_eq!(expected["role_source"], "clerk");
    assert_eq!(expected["is_active"], false);
    assert_eq!(expected["identity_sub"], "user_perm");

    let orders = permutations(events.len());
    assert_eq!(orders.len(), 24);
    for order in orders {
        let mut tx = pool.begin().await.unwrap();
        for &i in &order {
            apply_event(&mut *tx, &events[i]).await.unwrap();
        }
        assert_eq!(
            row_of(&mut tx, "user_perm").await.as_ref(),
            Some(&in_order),
            "order {order:?}"
        );
        // Replaying all of them again, in the same order, changes nothing.
        for &i in &order {
            let again = apply_event(&mut *tx, &events[i]).await.unwrap().outcome;
            assert!(
                matches!(again, Outcome::Stale(_) | Outcome::AlreadyDeactivated(_)),
                "replay of event {i} in order {order:?}: {again:?}"
            );
        }
        assert_eq!(
            row_of(&mut tx, "user_perm").await.as_ref(),
            Some(&in_order),
            "replayed {order:?}"
        );
        tx.rollback().await.unwrap();
    }
}

#[sqlx::test]
async fn an_older_event_changes_nothing(pool: PgPool) {
    let newer = event(
        "user.updated",
        clerk_user("user_1", "new@example.com", T0 + 10, json!({})),
        T0 + 10,
    );
    let older = event(
        "user.updated",
        clerk_user(
            "user_1",
            "old@example.com",
            T0,
            json!({"first_name": "Old"}),
        ),
        T0,
    );
    let created = apply_event(&pool, &newer).await.unwrap();
    let Outcome::Created(id) = created.outcome else {
        panic!("{created:?}")
    };

    let mut conn = pool.acquire().await.unwrap();
    let before = row_of(&mut conn, "user_1").await;
    assert_eq!(
        apply_event(&pool, &older).await.unwrap().outcome,
        Outcome::Stale(id)
    );
    assert_eq!(
        apply_event(&pool, &newer).await.unwrap().outcome,
        Outcome::Stale(id),
        "a replay"
    );
    assert_eq!(row_of(&mut conn, "user_1").await, before);
}

#[sqlx::test]
async fn a_deleted_user_never_comes_back(pool: PgPool) {
    // Deleted after being seen: deactivated, row and identity kept; an older update arriving late
    // changes nothing.
    let events = lifecycle("user_a");
    apply_event(&pool, &events[0]).await.unwrap();
    let gone = apply_event(&pool, &events[3]).await.unwrap().outcome;
    assert!(matches!(gone, Outcome::Deactivated(_)), "{gone:?}");
    let late = apply_event(&pool, &events[1]).await.unwrap().outcome;
    assert!(
        matches!(late, Outcome::Updated(_)),
        "a newer profile still applies: {late:?}"
    );
    let user = stored(&pool, "user_a").await;
    assert!(!user.is_active, "but the user stays deactivated");
    assert_eq!(
        apply_event(&pool, &events[3]).await.unwrap().outcome,
        Outcome::AlreadyDeactivated(user.id)
    );

    // Deleted before ever being seen: recorded, and the late `created` makes an inactive user.
    let events = lifecycle("user_b");
    assert_eq!(
        apply_event(&pool, &events[3]).await.unwrap().outcome,
        Outcome::DeletedBeforeSeen
    );
    let created = apply_event(&pool, &events[0]).await.unwrap().outcome;
    assert!(matches!(created, Outcome::Created(_)), "{created:?}");
    let user = stored(&pool, "user_b").await;
    assert!(!user.is_active);
    assert_eq!(
        user.released_email.as_deref(),
        Some("ada@example.com"),
        "the row is there, inactive, its address released"
    );
    assert!(user.email.ends_with("@deleted.invalid"), "{}", user.email);
}

#[sqlx::test]
async fn roles_come_from_metadata_only_when_valid(pool: PgPool) {
    let admin = event(
        "user.created",
        clerk_user(
            "user_r",
            "r@example.com",
            T0,
            json!({"public_metadata": {"role": "admin"}}),
        ),
        T0,
    );
    let applied = apply_event(&pool, &admin).await.unwrap();
    assert_eq!(applied.role_note, None);
    assert_eq!(stored(&pool, "user_r").await.role, Role::Admin);

    // Granted by Clerk, revoked by Clerk: a newer event with an invalid role, a non-string, a wrong
    // case, `null` or no role at all leaves the user at `user`.
    let mut t = 0;
    for role in [
        json!("superuser"),
        json!(42),
        json!("Admin"),
        Value::Null,
        json!("absent"),
    ] {
        let regrant = event(
            "user.updated",
            clerk_user(
                "user_r",
                "r@example.com",
                T0 + t + 1,
                json!({"public_metadata": {"role": "admin"}}),
            ),
            T0 + t + 1,
        );
        apply_event(&pool, &regrant).await.unwrap();
        assert_eq!(stored(&pool, "user_r").await.role, Role::Admin);
        let metadata = if role == json!("absent") {
            json!({})
        } else {
            json!({ "role": role })
        };
        let revoke = event(
            "user.updated",
            clerk_user(
                "user_r",
                "r@example.com",
                T0 + t + 2,
                json!({ "public_metadata": metadata }),
            ),
            T0 + t + 2,
        );
        let applied = apply_event(&pool, &revoke).await.unwrap();
        assert!(
            matches!(applied.outcome, Outcome::Updated(_)),
            "{applied:?}"
        );
        let invalid = !(role.is_null() || role == json!("absent"));
        assert_eq!(
            applied.role_note.is_some(),
            invalid,
            "only an invalid role says why: {role} {applied:?}"
        );
        let user = stored(&pool, "user_r").await;
        assert_eq!(
            (user.role, user.role_source),
            (Role::User, RoleSource::Clerk),
            "{role}"
        );
        t += 10;
    }

    // A new user with an invalid role gets the default.
    let new = event(
        "user.created",
        clerk_user(
            "user_s",
            "s@example.com",
            T0,
            json!({"public_metadata": {"role": "owner"}}),
        ),
        T0,
    );
    assert!(apply_event(&pool, &new).await.unwrap().role_note.is_some());
    assert_eq!(stored(&pool, "user_s").await.role, Role::User);
}

#[sqlx::test]
async fn a_new_user_without_an_address_is_not_created_and_bad_payloads_are_typed(pool: PgPool) {
    let no_email = event(
        "user.created",
        clerk_user(
            "user_x",
            "x@example.com",
            T0,
            json!({"email_addresses": [], "primary_email_address_id": null}),
        ),
        T0,
    );
    assert_eq!(
        apply_event(&pool, &no_email).await.unwrap().outcome,
        Outcome::NoVerifiedEmail
    );
    let malformed = event("user.updated", json!({"id": "user_x"}), T0);
    let err = apply_event(&pool, &malformed).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidInput {
                field: "clerk event data",
                ..
            }
        ),
        "{err:?}"
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 0);

    let other = event("session.created", json!({"id": "sess_1"}), T0);
    assert_eq!(
        apply_event(&pool, &other).await.unwrap().outcome,
        Outcome::Ignored("session.created".to_owned())
    );
}

#[sqlx::test]
async fn names_and_sign_ins_map_onto_the_columns(pool: PgPool) {
    let long_first = "Ægir-Ōtautahi-😀".repeat(10); // 150 characters
    let e = event(
        "user.created",
        clerk_user(
            "user_u",
            "u@example.com",
            T0,
            json!({"first_name": long_first, "last_name": "Ünal", "last_sign_in_at": T0 - 5000}),
        ),
        T0,
    );
    apply_event(&pool, &e).await.unwrap();
    let u = stored(&pool, "user_u").await;
    let name = u.display_name.unwrap();
    assert_eq!(name.chars().count(), 100);
    assert!(long_first.starts_with(&name), "cut at a character boundary");
    assert_eq!(u.last_login_at.unwrap().timestamp_millis(), T0 - 5000);
    assert_eq!(u.identity_updated_at.unwrap().timestamp_millis(), T0);
    assert_eq!(
        u.identity_picture_url.as_deref(),
        Some("https://img.clerk.com/ada.png")
    );

    // Only a username: it becomes the display name; nothing at all: none.
    let e = event(
        "user.updated",
        clerk_user(
            "user_u",
            "u@example.com",
            T0 + 1,
            json!({"first_name": null, "last_name": "", "username": "u_name"}),
        ),
        T0 + 1,
    );
    apply_event(&pool, &e).await.unwrap();
    let u = stored(&pool, "user_u").await;
    assert_eq!(u.display_name.as_deref(), Some("u_name"));
    assert_eq!(
        u.last_login_at.unwrap().timestamp_millis(),
        T0 - 5000,
        "last_login_at never goes back"
    );
}

fn users(records: Vec<Value>) -> Vec<(usize, ClerkUser)> {
    records
        .into_iter()
        .enumerate()
        .map(|(i, v)| (i + 1, serde_json::from_value(v).expect("a Clerk user")))
        .collect()
}

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

    let batch = users(
        (1..=5)
            .map(|i| {
                clerk_user(
                    &format!("user_{i}"),
                    &format!("u{i}@example.com"),
                    T0,
                    json!({}),
                )
            })
            .collect(),
    );
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

/// How many Clerk identities in `subs` are active despite a tombstone.
async fn deleted_but_active(pool: &PgPool) -> i64 {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM users u JOIN identity_tombstones t
             ON t.identity_provider = u.identity_provider AND t.identity_sub = u.identity_sub
           WHERE u.is_active"#
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A pool for concurrency tests: many connections, so that racing calls really run at once.
async fn wide(pool: &PgPool) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(24)
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .unwrap()
}

#[sqlx::test]
async fn created_and_deleted_racing_never_leave_a_deleted_user_active(pool: PgPool) {
    let wide = wide(&pool).await;
    for round in 0..5 {
        let mut tasks = Vec::new();
        for i in 0..20 {
            let sub = format!("user_race_{round}_{i}");
            let created = event(
                "user.created",
                clerk_user(&sub, &format!("race{round}_{i}@example.com"), T0, json!({})),
                T0,
            );
            let gone = deleted(&sub, T0 + 1);
            // Both deliveries start together; which one wins the race changes between runs.
            let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
            for e in [created, gone] {
                let (wide, barrier) = (wide.clone(), barrier.clone());
                tasks.push(tokio::spawn(async move {
                    barrier.wait().await;
                    apply_event(&wide, &e).await
                }));
            }
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    }
    let (users, tombstones): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM identity_tombstones)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((users, tombstones), (100, 100));
    assert_eq!(deleted_but_active(&pool).await, 0);
    wide.close().await;
}

#[sqlx::test]
async fn a_backfill_racing_deletions_never_leaves_a_deleted_user_active(pool: PgPool) {
    let wide = wide(&pool).await;
    let batch = users(
        (0..2000)
            .map(|i| {
                clerk_user(
                    &format!("user_bf_{i:04}"),
                    &format!("bf{i}@example.com"),
                    T0,
                    json!({}),
                )
            })
            .collect(),
    );
    let backfill = tokio::spawn({
        let wide = wide.clone();
        async move { apply_batch(&wide, &batch).await }
    });
    // 200 deletions from 8 workers, spread over the batch, while it runs.
    let mut workers = Vec::new();
    for w in 0..8 {
        let wide = wide.clone();
        workers.push(tokio::spawn(async move {
            for k in 0..25 {
                let i = (k * 8 + w) * 10;
                apply_event(&wide, &deleted(&format!("user_bf_{i:04}"), T0 + 1))
                    .await
                    .unwrap();
            }
        }));
    }
    let report = backfill.await.unwrap().unwrap();
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(report.created, 2000, "{report:?}");
    assert!(report.rejected.is_empty(), "{report:?}");
    let tombstones: i64 = sqlx::query_scalar("SELECT count(*) FROM identity_tombstones")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(tombstones, 200);
    assert_eq!(deleted_but_active(&pool).await, 0);
    wide.close().await;
}

/// A Clerk `updated` event for `user_m` at `at` with `role` in its metadata (`None`: no role).
fn role_event(at: i64, role: Option<Value>) -> ClerkEvent {
    let metadata = match role {
        Some(r) => json!({ "role": r }),
        None => json!({}),
    };
    event(
        "user.updated",
        clerk_user(
            "user_m",
            "m@example.com",
            at,
            json!({ "public_metadata": metadata }),
        ),
        at,
    )
}

/// The same, with another first name (Clerk re-sends the whole user when the user edits it).
fn role_event_named(at: i64, role: Option<Value>, first_name: &str) -> ClerkEvent {
    let mut e = role_event(at, role);
    e.data["first_name"] = json!(first_name);
    e
}

async fn role_of(pool: &PgPool) -> (Role, RoleSource) {
    let user = stored(pool, "user_m").await;
    (user.role, user.role_source)
}

/// The revocation a user could undo: an admin demoted by hand must not get admin back from a newer
/// Clerk record that still carries the old role (the user edited their first name in Clerk).
#[sqlx::test]
async fn a_demotion_by_hand_holds_until_clerks_role_itself_changes(pool: PgPool) {
    // Clerk times around the database's clock: set_role versions the role with now().
    let now = chrono::Utc::now().timestamp_millis();
    let (past, future) = (now - 3_600_000, now + 3_600_000);

    apply_event(&pool, &role_event(past, Some(json!("admin"))))
        .await
        .unwrap();
    assert_eq!(role_of(&pool).await, (Role::Admin, RoleSource::Clerk));
    let id = stored(&pool, "user_m").await.id;
    let demoted = set_role(&pool, id, Role::User).await.unwrap();
    assert_eq!(demoted.role_source, RoleSource::Manual);
    let version = demoted.identity_role_updated_at.unwrap().timestamp_millis();
    assert!((version - now).abs() < 60_000, "{version} vs {now}");

    // Newer records with the same admin metadata and another name, twice: the name changes, the
    // role set by hand holds.
    for (k, name) in ["Augusta", "Ada King"].into_iter().enumerate() {
        let applied = apply_event(
            &pool,
            &role_event_named(future + k as i64, Some(json!("admin")), name),
        )
        .await
        .unwrap();
        assert!(
            matches!(applied.outcome, Outcome::Updated(_)),
            "{applied:?}"
        );
        let user = stored(&pool, "user_m").await;
        assert!(user.display_name.unwrap().starts_with(name));
        assert_eq!(
            (user.role, user.role_source),
            (Role::User, RoleSource::Manual)
        );
    }
    // Clerk's role itself changes: Clerk's role applies again, and from then on Clerk revokes.
    apply_event(
        &pool,
        &role_event(future + 10, Some(json!("subscriber_pro"))),
    )
    .await
    .unwrap();
    assert_eq!(
        role_of(&pool).await,
        (Role::SubscriberPro, RoleSource::Clerk)
    );
    apply_event(&pool, &role_event(future + 20, None))
        .await
        .unwrap();
    assert_eq!(role_of(&pool).await, (Role::User, RoleSource::Clerk));
    // An older record arriving late changes nothing.
    apply_event(&pool, &role_event(future + 15, Some(json!("admin"))))
        .await
        .unwrap();
    assert_eq!(role_of(&pool).await, (Role::User, RoleSource::Clerk));
}

#[sqlx::test]
async fn a_role_set_by_hand_is_kept_while_clerk_gives_the_same_role(pool: PgPool) {
    let now = chrono::Utc::now().timestamp_millis();
    let (past, future) = (now - 3_600_000, now + 3_600_000);

    // Clerk gave no role (the user is `user`); promoted by hand.
    apply_event(&pool, &role_event(past, None)).await.unwrap();
    let id = stored(&pool, "user_m").await.id;
    set_role(&pool, id, Role::SubscriberBasic).await.unwrap();

    // Older records change nothing, whatever they say.
    for role in [Some(json!("admin")), None, Some(json!("root"))] {
        apply_event(&pool, &role_event(past + 1, role))
            .await
            .unwrap();
        assert_eq!(
            role_of(&pool).await,
            (Role::SubscriberBasic, RoleSource::Manual)
        );
    }
    // Newer ones that still give no role (absent, null, invalid, or `user` itself) keep it.
    for (k, role) in [
        None,
        Some(Value::Null),
        Some(json!("root")),
        Some(json!("user")),
    ]
    .into_iter()
    .enumerate()
    {
        apply_event(&pool, &role_event(future + k as i64, role))
            .await
            .unwrap();
        assert_eq!(
            role_of(&pool).await,
            (Role::SubscriberBasic, RoleSource::Manual)
        );
    }
    // Clerk grants a role: Clerk's role applies.
    apply_event(&pool, &role_event(future + 10, Some(json!("admin"))))
        .await
        .unwrap();
    assert_eq!(role_of(&pool).await, (Role::Admin, RoleSource::Clerk));
}

/// Clerk removing a role it granted revokes at once, even over a role set by hand since.
#[sqlx::test]
async fn clerk_removing_its_role_revokes_a_role_set_by_hand_since(pool: PgPool) {
    let now = chrono::Utc::now().timestamp_millis();
    let (past, future) = (now - 3_600_000, now + 3_600_000);
    apply_event(&pool, &role_event(past, Some(json!("admin"))))
        .await
        .unwrap();
    let id = stored(&pool, "user_m").await.id;
    set_role(&pool, id, Role::SubscriberPro).await.unwrap();
    apply_event(&pool, &role_event(future, Some(json!("admin"))))
        .await
        .unwrap();
    assert_eq!(
        role_of(&pool).await,
        (Role::SubscriberPro, RoleSource::Manual)
    );
    apply_event(&pool, &role_event(future + 1, Some(json!("not-a-role"))))
        .await
        .unwrap();
    assert_eq!(role_of(&pool).await, (Role::User, RoleSource::Clerk));
}

#[sqlx::test]
async fn a_deleted_person_can_sign_up_again_with_the_same_address(pool: PgPool) {
    sqlx::query(
        "CREATE TABLE orders (id serial PRIMARY KEY, user_id int NOT NULL REFERENCES users(id))",
    )
    .execute(&pool)
    .await
    .unwrap();
    let created = event(
        "user.created",
        clerk_user("user_old", "ada@example.com", T0, json!({})),
        T0,
    );
    let Outcome::Created(old_id) = apply_event(&pool, &created).await.unwrap().outcome else {
        panic!("created")
    };
    sqlx::query("INSERT INTO orders (user_id) VALUES ($1)")
        .bind(old_id.0)
        .execute(&pool)
        .await
        .unwrap();
    apply_event(&pool, &deleted("user_old", T0 + 10))
        .await
        .unwrap();

    // The same person, a new Clerk account, the same verified address.
    let again = event(
        "user.created",
        clerk_user("user_new", "ada@example.com", T0 + 20, json!({})),
        T0 + 20,
    );
    let Outcome::Created(new_id) = apply_event(&pool, &again).await.unwrap().outcome else {
        panic!("a new user")
    };
    assert_ne!(new_id, old_id);
    let new = stored(&pool, "user_new").await;
    assert!(new.is_active);
    assert_eq!(new.email, "ada@example.com");

    let old = stored(&pool, "user_old").await;
    assert_eq!(old.id, old_id, "never merged");
    assert!(!old.is_active, "never reactivated");
    assert_eq!(
        old.released_email.as_deref(),
        Some("ada@example.com"),
        "kept for audit"
    );
    let orders: i32 = sqlx::query_scalar("SELECT user_id FROM orders")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(orders, old_id.0, "what pointed at the old user still does");

    // Late events of the old account never take the address back.
    let late = event(
        "user.updated",
        clerk_user("user_old", "ada@example.com", T0 + 30, json!({})),
        T0 + 30,
    );
    apply_event(&pool, &late).await.unwrap();
    assert_eq!(stored(&pool, "user_new").await.email, "ada@example.com");
    let old = stored(&pool, "user_old").await;
    assert!(!old.is_active && old.email.ends_with("@deleted.invalid"));
}

#[sqlx::test(migrations = false)]
async fn migration_0005_releases_the_addresses_of_users_deleted_before_it(pool: PgPool) {
    livermore_db::MIGRATOR.run_to(4, &pool).await.unwrap();
    sqlx::query(
        "INSERT INTO users (username, email, identity_provider, identity_sub, is_active, identity_role_updated_at)
         VALUES ('gone', 'gone@example.com', 'clerk', 'user_gone', false, NULL),
                ('here', 'here@example.com', 'clerk', 'user_here', true, '2024-01-01')",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO identity_tombstones VALUES ('clerk', 'user_gone', '2024-01-02')")
        .execute(&pool)
        .await
        .unwrap();
    livermore_db::MIGRATOR.run(&pool).await.unwrap();
    let gone = stored(&pool, "user_gone").await;
    assert_eq!(gone.released_email.as_deref(), Some("gone@example.com"));
    assert!(gone.email.ends_with("@deleted.invalid"));
    assert_eq!(
        gone.role_source,
        RoleSource::Manual,
        "no Clerk role version: set by hand"
    );
    let here = stored(&pool, "user_here").await;
    assert_eq!(
        (here.email.as_str(), here.released_email),
        ("here@example.com", None)
    );
    assert_eq!(
        here.role_source,
        RoleSource::Clerk,
        "a Clerk event had set its role"
    );
}

#[sqlx::test]
async fn an_unverified_address_never_takes_blocks_or_changes_one(pool: PgPool) {
    let unverified = |id: &str, a: &str| json!({"id": id, "email_address": a, "verification": {"status": "unverified"}});
    // An attacker signs up with the victim's address, never verifying it: not created.
    let attacker = event(
        "user.created",
        clerk_user(
            "user_attacker",
            "x",
            T0,
            json!({"email_addresses": [unverified("idn_1", "victim@example.com")]}),
        ),
        T0,
    );
    assert_eq!(
        apply_event(&pool, &attacker).await.unwrap().outcome,
        Outcome::NoVerifiedEmail
    );
    // With a verified address of their own beside it: created with that one.
    let attacker = event(
        "user.updated",
        clerk_user(
            "user_attacker",
            "x",
            T0 + 1,
            json!({"email_addresses": [
                unverified("idn_1", "victim@example.com"),
                {"id": "idn_2", "email_address": "me@attacker.example", "verification": {"status": "verified"}}
            ]}),
        ),
        T0 + 1,
    );
    assert!(matches!(
        apply_event(&pool, &attacker).await.unwrap().outcome,
        Outcome::Created(_)
    ));
    assert_eq!(
        stored(&pool, "user_attacker").await.email,
        "me@attacker.example"
    );

    // The victim signs up: the address is theirs.
    let victim = event(
        "user.created",
        clerk_user("user_victim", "victim@example.com", T0 + 2, json!({})),
        T0 + 2,
    );
    assert!(matches!(
        apply_event(&pool, &victim).await.unwrap().outcome,
        Outcome::Created(_)
    ));
    assert_eq!(
        stored(&pool, "user_victim").await.email,
        "victim@example.com"
    );

    // A newer event whose only address is unverified changes the profile but not the address.
    let renamed = event(
        "user.updated",
        clerk_user(
            "user_victim",
            "x",
            T0 + 3,
            json!({"first_name": "Renamed", "email_addresses": [unverified("idn_9", "other@example.com")],
                   "primary_email_address_id": "idn_9"}),
        ),
        T0 + 3,
    );
    apply_event(&pool, &renamed).await.unwrap();
    let victim = stored(&pool, "user_victim").await;
    assert_eq!(victim.email, "victim@example.com");
    assert_eq!(victim.display_name.as_deref(), Some("Renamed Lovelace"));
}

#[sqlx::test]
async fn bad_values_are_rejected_records_and_invalid_input(pool: PgPool) {
    // chrono accepts these times; PostgreSQL's timestamp does not.
    let far = 9_000_000_000_000_000_i64;
    let batch = users(vec![
        clerk_user("user_1", "one@example.com", T0, json!({})),
        clerk_user("user_2", "two@example.com", far, json!({})),
        clerk_user(
            "user_3",
            "three@example.com",
            T0,
            json!({"last_sign_in_at": -far}),
        ),
        clerk_user("user_4", "four@example.com", T0, json!({})),
    ]);
    let report = apply_batch(&pool, &batch).await.unwrap();
    assert_eq!(report.created, 2, "{report:?}");
    let rejected: Vec<usize> = report.rejected.iter().map(|r| r.position).collect();
    assert_eq!(rejected, [2, 3], "{report:?}");
    let again = apply_batch(&pool, &batch).await.unwrap();
    assert_eq!(
        (again.created, again.unchanged, again.rejected.len()),
        (0, 2, 2),
        "a rerun stores nothing twice"
    );

    let err = apply_event(
        &pool,
        &event(
            "user.created",
            clerk_user("user_5", "five@example.com", far, json!({})),
            T0,
        ),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidInput {
                field: "updated_at",
                ..
            }
        ),
        "{err:?}"
    );
    let err = apply_event(&pool, &deleted("user_1", far))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidInput {
                field: "timestamp",
                ..
            }
        ),
        "{err:?}"
    );

    // A value the database still refuses (here a check a DBA added): that record alone is rejected,
    // in a batch and as a webhook.
    sqlx::query("ALTER TABLE users ADD CONSTRAINT no_mallory CHECK (display_name IS DISTINCT FROM 'Mallory Lovelace')")
        .execute(&pool)
        .await
        .unwrap();
    let batch = users(vec![
        clerk_user("user_6", "six@example.com", T0, json!({})),
        clerk_user(
            "user_7",
            "seven@example.com",
            T0,
            json!({"first_name": "Mallory"}),
        ),
        clerk_user(
            "user_1",
            "one@example.com",
            T0 + 1,
            json!({"first_name": "Mallory"}),
        ),
        clerk_user(
            "user_4",
            "four@example.com",
            T0 + 1,
            json!({"first_name": "Grace"}),
        ),
    ]);
    let report = apply_batch(&pool, &batch).await.unwrap();
    assert_eq!((report.created, report.updated), (1, 1), "{report:?}");
    let rejected: Vec<usize> = report.rejected.iter().map(|r| r.position).collect();
    assert_eq!(rejected, [2, 3], "{report:?}");
    assert!(
        report.rejected[0].reason.contains("no_mallory"),
        "{report:?}"
    );
    let err = apply_event(
        &pool,
        &event(
            "user.created",
            clerk_user(
                "user_8",
                "8@example.com",
                T0,
                json!({"first_name": "Mallory"}),
            ),
            T0,
        ),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
}

/// A small deterministic generator (xorshift64*), so that a failing seed can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random records for `users` Clerk users: 2 to 5 each, distinct times per user in random order,
/// roles valid, absent, `null` or invalid, address changes (each user's addresses are its own),
/// verified or not when `unverified` is set, and deletions.
fn random_events(rng: &mut Rng, users: usize, unverified: bool) -> Vec<ClerkEvent> {
    let roles = [
        json!("admin"),
        json!("subscriber_pro"),
        Value::Null,
        json!("root"),
        json!("absent"),
    ];
    let mut events = Vec::new();
    for u in 0..users {
        let sub = format!("user_p{u:03}");
        let n = 2 + rng.below(4) as usize;
        let mut times: Vec<i64> = (0..n as i64).map(|k| T0 + k * 1000).collect();
        for i in (1..times.len()).rev() {
            times.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for at in times {
            if rng.below(6) == 0 {
                events.push(deleted(&sub, at));
                continue;
            }
            let role = &roles[rng.below(roles.len() as u64) as usize];
            let metadata = if *role == json!("absent") {
                json!({})
            } else {
                json!({ "role": role })
            };
            let status = if unverified && rng.below(4) == 0 {
                "unverified"
            } else {
                "verified"
            };
            let email = format!("p{u}.{}@example.com", rng.below(3));
            let data = clerk_user(
                &sub,
                &email,
                at,
                json!({
                    "public_metadata": metadata,
                    "first_name": format!("N{}", rng.below(5)),
                    "last_sign_in_at": at - rng.below(5000) as i64,
                    "email_addresses": [{"id": "idn_1", "email_address": email, "verification": {"status": status}}],
                }),
            );
            let kind = if rng.below(2) == 0 {
                "user.created"
            } else {
                "user.updated"
            };
            events.push(event(kind, data, at));
        }
    }
    // Users interleaved at random; each user's records keep the random order of their times.
    for i in (1..events.len()).rev() {
        events.swap(i, rng.below(i as u64 + 1) as usize);
    }
    events
}

/// Every Clerk user's row, by identity, without what legitimately differs (ids, write times, and
/// with `username` unless asked: the creating record, and so the name, depends on the order).
async fn all_rows(conn: &mut PgConnection, with_username: bool) -> Vec<String> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT (to_jsonb(u) - 'id' - 'created_at' - 'updated_at')::text FROM users u
         WHERE identity_provider = 'clerk' ORDER BY identity_sub",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    rows.into_iter()
        .map(|r| {
            let mut v: Value = serde_json::from_str(&r).unwrap();
            if !with_username {
                v.as_object_mut().unwrap().remove("username");
            }
            v.to_string()
        })
        .collect()
}

/// Compares two sets of rows, naming the first that differs rather than printing them all.
fn assert_same_rows(actual: &[String], expected: &[String], context: &str) {
    assert_eq!(actual.len(), expected.len(), "{context}: number of rows");
    if let Some((a, e)) = actual.iter().zip(expected).find(|(a, e)| a != e) {
        panic!("{context}: a row differs\n  got      {a}\n  expected {e}");
    }
}

async fn one_by_one(conn: &mut PgConnection, events: &[ClerkEvent]) {
    for e in events {
        match apply_event(&mut *conn, e).await {
            Ok(_) | Err(Error::EmailTaken { .. }) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
}

fn numbered(events: &[ClerkEvent]) -> Vec<(usize, ClerkEvent)> {
    events.iter().cloned().enumerate().collect()
}

#[sqlx::test]
async fn a_batch_ends_like_its_records_one_by_one(pool: PgPool) {
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    for _ in 0..8 {
        let events = random_events(&mut rng, 40, true);
        let mut tx = pool.begin().await.unwrap();
        one_by_one(&mut tx, &events).await;
        let expected = all_rows(&mut tx, true).await;
        tx.rollback().await.unwrap();

        let mut tx = pool.begin().await.unwrap();
        let report = apply_events(&mut *tx, &numbered(&events)).await.unwrap();
        assert_eq!(report.total(), events.len(), "{report:?}");
        assert_same_rows(
            &all_rows(&mut tx, true).await,
            &expected,
            "batch vs one by one",
        );
        tx.rollback().await.unwrap();
    }
}

#[sqlx::test]
async fn any_delivery_ends_like_delivery_in_order(pool: PgPool) {
    let wide = wide(&pool).await;
    let mut rng = Rng(0x5EED_5678_0002);
    let events = random_events(&mut rng, 60, false);
    // The expected rows: each record once, in order of time.
    let mut in_order = events.clone();
    in_order.sort_by_key(|e| {
        e.data["updated_at"]
            .as_i64()
            .or(e.timestamp)
            .unwrap_or_default()
    });
    let mut tx = pool.begin().await.unwrap();
    one_by_one(&mut tx, &in_order).await;
    let expected = all_rows(&mut tx, false).await;
    tx.rollback().await.unwrap();

    // Shuffled with duplicates, delivered by 16 concurrent workers and, at the same time, as a batch.
    let mut deliveries: Vec<ClerkEvent> = events
        .iter()
        .chain(events.iter().step_by(3))
        .cloned()
        .collect();
    for i in (1..deliveries.len()).rev() {
        deliveries.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let deliveries = std::sync::Arc::new(deliveries);
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (wide, deliveries) = (wide.clone(), deliveries.clone());
        tasks.push(tokio::spawn(async move {
            for e in deliveries.iter().skip(w).step_by(16) {
                apply_event(&wide, e).await.unwrap();
            }
        }));
    }
    let batch = numbered(&events);
    let report = apply_events(&wide, &batch).await.unwrap();
    assert!(report.rejected.is_empty(), "{report:?}");
    for t in tasks {
        t.await.unwrap();
    }
    let mut conn = pool.acquire().await.unwrap();
    assert_same_rows(
        &all_rows(&mut conn, false).await,
        &expected,
        "any delivery vs in order",
    );
    wide.close().await;
}

/// An identity Clerk deleted never signs in again through the generic `sign_in`: not the deleted
/// user (whose address stays released), not an identity deleted before it was seen.
#[sqlx::test]
async fn a_deleted_clerk_identity_never_signs_in_again(pool: PgPool) {
    let mut conn = pool.acquire().await.unwrap();
    let created = event(
        "user.created",
        clerk_user("user_gone", "gone@example.com", T0, json!({})),
        T0,
    );
    apply_event(&pool, &created).await.unwrap();
    apply_event(&pool, &deleted("user_gone", T0 + 1))
        .await
        .unwrap();
    let before = row_of(&mut conn, "user_gone").await;
    let again =
        livermore_db::Profile::parse("clerk", "user_gone", "gone@example.com", None, None).unwrap();
    let refused = livermore_db::sign_in(&pool, &again).await;
    assert!(
        matches!(refused, Err(Error::IdentityDeleted { .. })),
        "{refused:?}"
    );
    assert_eq!(row_of(&mut conn, "user_gone").await, before);

    apply_event(&pool, &deleted("user_never_seen", T0))
        .await
        .unwrap();
    let never =
        livermore_db::Profile::parse("clerk", "user_never_seen", "never@example.com", None, None)
            .unwrap();
    assert!(matches!(
        livermore_db::sign_in(&pool, &never).await,
        Err(Error::IdentityDeleted { .. })
    ));
    assert_eq!(row_of(&mut conn, "user_never_seen").await, None);

    // The released address serves a new Clerk user; the same subject at another provider is not
    // affected.
    let fresh =
        livermore_db::Profile::parse("clerk", "user_back", "gone@example.com", None, None).unwrap();
    assert!(livermore_db::sign_in(&pool, &fresh).await.unwrap().created);
    let other =
        livermore_db::Profile::parse("google", "user_gone", "g@example.com", None, None).unwrap();
    assert!(livermore_db::sign_in(&pool, &other).await.unwrap().created);
}

/// Sign-ins racing the deletion of the same identity: whatever the interleaving, the user ends
/// inactive with its address released (a sign-in that read before the deletion must not write the
/// address back after it).
#[sqlx::test]
async fn sign_ins_racing_a_deletion_never_restore_the_address(pool: PgPool) {
    for round in 0..40 {
        let sub = format!("user_race_{round}");
        let email = format!("race{round}@example.com");
        let created = event("user.created", clerk_user(&sub, &email, T0, json!({})), T0);
        apply_event(&pool, &created).await.unwrap();
        let profile = livermore_db::Profile::parse("clerk", &sub, &email, None, None).unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..8 {
            let (pool, profile, sub) = (pool.clone(), profile.clone(), sub.clone());
            tasks.spawn(async move {
                if task == 3 {
                    apply_event(&pool, &deleted(&sub, T0 + 1)).await.map(|_| ())
                } else {
                    match livermore_db::sign_in(&pool, &profile).await {
                        Ok(_) | Err(Error::IdentityDeleted { .. }) => Ok(()),
                        Err(e) => Err(e),
                    }
                }
            });
        }
        while let Some(result) = tasks.join_next().await {
            result.unwrap().unwrap();
        }
        let (active, stored, released): (bool, String, Option<String>) = sqlx::query_as(
            "SELECT is_active, email, released_email FROM users
             WHERE identity_provider = 'clerk' AND identity_sub = $1",
        )
        .bind(&sub)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(!active, "round {round}");
        assert!(
            stored.ends_with("@deleted.invalid"),
            "round {round}: {stored}"
        );
        assert_eq!(released.as_deref(), Some(email.as_str()), "round {round}");
    }
}

/// New users whose address gives a username already taken (by a stored user, or by an earlier record
/// of the batch) get the next free ones, as one by one in input order would give them.
#[sqlx::test]
async fn a_batch_gives_taken_usernames_the_next_free_ones(pool: PgPool) {
    sqlx::query("INSERT INTO users (username, email) VALUES ('ada', 'someone@example.com'), ('ada_3', 'x@example.com')")
        .execute(&pool)
        .await
        .unwrap();
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
}

/// Nor is an identity Clerk deleted ever linked to an account.
#[sqlx::test]
async fn a_deleted_clerk_identity_is_never_linked(pool: PgPool) {
    let other =
        livermore_db::Profile::parse("google", "g-9", "nine@example.com", None, None).unwrap();
    let user = livermore_db::sign_in(&pool, &other).await.unwrap().user;
    sqlx::query("UPDATE users SET identity_provider = NULL, identity_sub = NULL WHERE id = $1")
        .bind(user.id)
        .execute(&pool)
        .await
        .unwrap();
    apply_event(&pool, &deleted("user_deleted_9", T0))
        .await
        .unwrap();
    let identity = Identity::parse("clerk", "user_deleted_9").unwrap();
    let refused = livermore_db::link_identity(&pool, user.id, &identity).await;
    assert!(
        matches!(refused, Err(Error::IdentityDeleted { .. })),
        "{refused:?}"
    );
    let linked = livermore_db::find_by_id(&pool, user.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(linked.identity_provider, None);
    // Another identity still links.
    let fine = Identity::parse("clerk", "user_alive_9").unwrap();
    livermore_db::link_identity(&pool, user.id, &fine)
        .await
        .unwrap();
}

/// Records for `users` Clerk users around a change by hand at `now`: 1 to 3 before it (an hour
/// earlier) and 1 to 4 after it (an hour later), roles valid, `user`, absent, `null` or invalid, and
/// the role each user is then set to by hand.
fn records_around_a_change_by_hand(
    rng: &mut Rng,
    users: usize,
    now: i64,
) -> (Vec<ClerkEvent>, Vec<(String, Role)>, Vec<ClerkEvent>) {
    let roles = [
        json!("admin"),
        json!("subscriber_pro"),
        json!("user"),
        Value::Null,
        json!("root"),
        json!("absent"),
    ];
    let (mut before, mut by_hand, mut after) = (Vec::new(), Vec::new(), Vec::new());
    for u in 0..users {
        let sub = format!("user_h{u:03}");
        for (side, base, n) in [
            (&mut before, now - 3_600_000, 1 + rng.below(3)),
            (&mut after, now + 3_600_000, 1 + rng.below(4)),
        ] {
            for k in 0..n as i64 {
                let role = &roles[rng.below(roles.len() as u64) as usize];
                let metadata = if *role == json!("absent") {
                    json!({})
                } else {
                    json!({ "role": role })
                };
                let at = base + k * 1000;
                let data = clerk_user(
                    &sub,
                    &format!("h{u}@example.com"),
                    at,
                    json!({"public_metadata": metadata, "first_name": format!("N{}", rng.below(5))}),
                );
                side.push(event("user.updated", data, at));
            }
        }
        let role = Role::ALL[rng.below(Role::ALL.len() as u64) as usize];
        by_hand.push((sub, role));
    }
    (before, by_hand, after)
}

fn shuffled_with_replays(rng: &mut Rng, events: &[ClerkEvent]) -> Vec<ClerkEvent> {
    let mut out: Vec<ClerkEvent> = events
        .iter()
        .chain(events.iter().step_by(3))
        .cloned()
        .collect();
    for i in (1..out.len()).rev() {
        out.swap(i, rng.below(i as u64 + 1) as usize);
    }
    out
}

fn by_time(events: &[ClerkEvent]) -> Vec<ClerkEvent> {
    let mut sorted = events.to_vec();
    sorted.sort_by_key(|e| e.data["updated_at"].as_i64().unwrap_or_default());
    sorted
}

async fn set_by_hand(conn: &mut PgConnection, by_hand: &[(String, Role)]) {
    for (sub, role) in by_hand {
        let identity = Identity::parse("clerk", sub).unwrap();
        let user = find_by_identity(&mut *conn, &identity)
            .await
            .unwrap()
            .unwrap();
        set_role(&mut *conn, user.id, *role).await.unwrap();
    }
}

/// The rows without what differs between runs: for a role still set by hand, its version (the
/// database's clock at the change).
async fn rows_around_a_change_by_hand(conn: &mut PgConnection) -> Vec<String> {
    all_rows(conn, false)
        .await
        .into_iter()
        .map(|r| {
            let mut v: Value = serde_json::from_str(&r).unwrap();
            if v["role_source"] == json!("manual") {
                v.as_object_mut()
                    .unwrap()
                    .remove("identity_role_updated_at");
            }
            v.to_string()
        })
        .collect()
}

/// A role set by hand between Clerk's records ends the same whatever the delivery order of the
/// records after the change (shuffled, replayed, concurrent, batched): as delivered in order.
#[sqlx::test]
async fn a_role_set_by_hand_ends_alike_in_any_delivery_order(pool: PgPool) {
    let wide = wide(&pool).await;
    let mut rng = Rng(0x5EED_90AD_0003);
    for round in 0..3 {
        sqlx::query("DELETE FROM users")
            .execute(&pool)
            .await
            .unwrap();
        let now = chrono::Utc::now().timestamp_millis();
        let (before, by_hand, after) = records_around_a_change_by_hand(&mut rng, 40, now);

        // Expected: each record once, in order of time, the change by hand between.
        let mut tx = pool.begin().await.unwrap();
        one_by_one(&mut tx, &by_time(&before)).await;
        set_by_hand(&mut tx, &by_hand).await;
        one_by_one(&mut tx, &by_time(&after)).await;
        let expected = rows_around_a_change_by_hand(&mut tx).await;
        tx.rollback().await.unwrap();

        // A batch of the records after the change equals them one by one.
        let mut tx = pool.begin().await.unwrap();
        one_by_one(&mut tx, &shuffled_with_replays(&mut rng, &before)).await;
        set_by_hand(&mut tx, &by_hand).await;
        apply_events(&mut *tx, &numbered(&after)).await.unwrap();
        assert_same_rows(
            &rows_around_a_change_by_hand(&mut tx).await,
            &expected,
            &format!("round {round}: batch after the change by hand vs in order"),
        );
        tx.rollback().await.unwrap();

        // Shuffled with replays, by 16 concurrent workers and a batch at the same time.
        let mut conn = pool.acquire().await.unwrap();
        one_by_one(&mut conn, &shuffled_with_replays(&mut rng, &before)).await;
        set_by_hand(&mut conn, &by_hand).await;
        let deliveries = std::sync::Arc::new(shuffled_with_replays(&mut rng, &after));
        let mut tasks = Vec::new();
        for w in 0..16 {
            let (wide, deliveries) = (wide.clone(), deliveries.clone());
            tasks.push(tokio::spawn(async move {
                for e in deliveries.iter().skip(w).step_by(16) {
                    apply_event(&wide, e).await.unwrap();
                }
            }));
        }
        let mut batch = after.clone();
        batch.reverse();
        apply_events(&wide, &numbered(&batch)).await.unwrap();
        for t in tasks {
            t.await.unwrap();
        }
        assert_same_rows(
            &rows_around_a_change_by_hand(&mut conn).await,
            &expected,
            &format!("round {round}: any delivery after the change by hand vs in order"),
        );
    }
    wide.close().await;
}
