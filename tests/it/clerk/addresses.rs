//! Addresses and deleted identities: signing up again after a deletion, migration 0009's release,
//! unverified addresses, a deleted identity never signing in or being linked again.
use super::*;

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
async fn migration_0009_releases_the_addresses_of_users_deleted_before_0005(pool: PgPool) {
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
