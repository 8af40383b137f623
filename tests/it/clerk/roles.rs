//! Roles set by hand beside Clerk's: a demotion holds until Clerk's role itself changes, in any
//! delivery order.
use super::*;

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
