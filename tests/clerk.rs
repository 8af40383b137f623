//! Clerk sync against a real PostgreSQL: replays, every delivery order, stale and deleted events, roles,
//! bad records, and bulk backfills.
use livermore_db::clerk::*;
use livermore_db::{Error, Identity, Role, find_by_identity};
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
                // The newest profile carries a role that is not one: the older valid role must stand,
                // whichever arrives first.
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
    assert_eq!(expected["email"], "ada@newmail.example");
    assert_eq!(expected["display_name"], "Augusta Ada Lovelace");
    assert_eq!(expected["role"], "subscriber_pro");
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
    assert_eq!(user.email, "ada@example.com", "the row is there, inactive");
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

    for (t, role) in [(1, json!("superuser")), (2, json!(42)), (3, json!("Admin"))] {
        let bad = event(
            "user.updated",
            clerk_user(
                "user_r",
                "r@example.com",
                T0 + t,
                json!({"public_metadata": {"role": role}}),
            ),
            T0 + t,
        );
        let applied = apply_event(&pool, &bad).await.unwrap();
        assert!(
            matches!(applied.outcome, Outcome::Updated(_)),
            "{applied:?}"
        );
        let note = applied
            .role_note
            .expect("the outcome says why the role was kept");
        assert!(note.contains("role"), "{note}");
        assert_eq!(stored(&pool, "user_r").await.role, Role::Admin, "kept");
    }
    // No role at all: kept too, and nothing to say.
    let none = event(
        "user.updated",
        clerk_user("user_r", "r@example.com", T0 + 9, json!({})),
        T0 + 9,
    );
    let applied = apply_event(&pool, &none).await.unwrap();
    assert_eq!(applied.role_note, None);
    assert_eq!(stored(&pool, "user_r").await.role, Role::Admin);

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
async fn an_event_without_email_is_a_typed_error(pool: PgPool) {
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
    let err = apply_event(&pool, &no_email).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput { field: "email", .. }),
        "{err:?}"
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
    assert_eq!(rejected, [2, 3, 4, 7], "{report:?}");
    assert!(report.rejected[0].reason.contains("no email"), "{report:?}");
    assert!(
        report.rejected[1]
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
    assert_eq!(two.email, "two@new.example");
    assert!(!two.is_active, "a backfill does not undo a deletion");

    // The role has its own version: a newer record without a valid role keeps it; an older record
    // with a valid role newer than the stored role's sets it, and nothing else.
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
    assert_eq!(report.updated, 1, "{report:?}");
    let one = stored(&pool, "user_1").await;
    assert_eq!(
        (one.email.as_str(), one.role),
        ("one@newer.example", Role::SubscriberBasic)
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
