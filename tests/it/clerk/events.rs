//! Webhook events one at a time: every delivery order and replay, stale and deleted events, roles
//! from metadata, names, and bad payloads and values.
use super::*;

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
        apply_event(&pool, &no_email).await.unwrap(),
        Applied {
            outcome: Outcome::NoVerifiedEmail,
            role_note: None
        }
    );
    // Not created either way, but an invalid role is still named: the note belongs to the record.
    let no_email_bad_role = event(
        "user.created",
        clerk_user(
            "user_y",
            "y@example.com",
            T0,
            json!({"email_addresses": [], "primary_email_address_id": null,
                   "public_metadata": {"role": "owner"}}),
        ),
        T0,
    );
    let applied = apply_event(&pool, &no_email_bad_role).await.unwrap();
    assert_eq!(applied.outcome, Outcome::NoVerifiedEmail);
    assert!(applied.role_note.is_some(), "{applied:?}");
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
