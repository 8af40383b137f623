//! Sign-in and linking: created then updated, unknown users, an address of another user never
//! merged, explicit links, errors that leave the caller's transaction usable, UTC times.
use super::*;

#[sqlx::test]
async fn sign_in_creates_then_updates_the_same_user(pool: PgPool) {
    let first = sign_in(&pool, &profile("clerk", "user_1", "ada@example.com"))
        .await
        .unwrap();
    assert!(first.created);
    let u = &first.user;
    assert_eq!(u.username, "ada");
    assert_eq!(u.email, "ada@example.com");
    assert_eq!(u.identity_provider.as_deref(), Some("clerk"));
    assert_eq!(u.identity_sub.as_deref(), Some("user_1"));
    assert_eq!(u.display_name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(
        u.identity_picture_url.as_deref(),
        Some("https://img.example/a.png")
    );
    assert_eq!(u.role, Role::User);
    assert!(u.is_active);
    assert_eq!(u.last_login_at, None);
    assert_recent(u.created_at, "created_at");

    age(&pool, u.id).await;
    let changed = Profile::parse(
        "clerk",
        "user_1",
        "ada@newmail.example",
        Some("Ada King"),
        None,
    )
    .unwrap();
    let second = sign_in(&pool, &changed).await.unwrap();
    assert!(!second.created);
    assert_eq!(second.user.id, u.id);
    assert_eq!(second.user.username, "ada", "the username is kept");
    assert_eq!(second.user.email, "ada@newmail.example");
    assert_eq!(second.user.display_name.as_deref(), Some("Ada King"));
    assert_eq!(second.user.identity_picture_url, None);
    assert_eq!(second.user.created_at, u.created_at);
    assert_recent(second.user.updated_at, "updated_at after the update");
    assert_eq!(user_count(&pool).await, 1);

    // The look-ups see what was stored.
    let identity = Identity::parse("clerk", "user_1").unwrap();
    assert_eq!(
        find_by_identity(&pool, &identity).await.unwrap().as_ref(),
        Some(&second.user)
    );
    assert_eq!(
        find_by_id(&pool, u.id).await.unwrap().as_ref(),
        Some(&second.user)
    );
    let email = Email::parse("ada@newmail.example").unwrap();
    assert_eq!(
        find_by_email(&pool, &email).await.unwrap().as_ref(),
        Some(&second.user)
    );
}

#[sqlx::test]
async fn unknown_users_are_none_or_not_found(pool: PgPool) {
    sign_in(&pool, &profile("clerk", "user_1", "ada@example.com"))
        .await
        .unwrap();
    let other = Identity::parse("google", "user_1").unwrap();
    assert_eq!(find_by_identity(&pool, &other).await.unwrap(), None);
    assert_eq!(find_by_id(&pool, UserId(999)).await.unwrap(), None);
    let email = Email::parse("ADA@example.com").unwrap();
    assert_eq!(
        find_by_email(&pool, &email).await.unwrap(),
        None,
        "exact match"
    );

    let missing = UserId(999);
    for result in [
        record_login(&pool, missing).await,
        set_role(&pool, missing, Role::Admin).await,
        deactivate(&pool, missing).await,
        link_identity(&pool, missing, &other).await,
    ] {
        assert!(
            matches!(
                result,
                Err(Error::UserNotFound {
                    user_id: livermore_db::UserId(999)
                })
            ),
            "{result:?}"
        );
    }
    assert_eq!(user_count(&pool).await, 1);
}

#[sqlx::test]
async fn an_email_of_another_user_is_never_merged(pool: PgPool) {
    let legacy = legacy_user(&pool, "grace", "grace@example.com").await;
    let before = find_by_id(&pool, legacy).await.unwrap();

    let err = sign_in(&pool, &profile("google", "g-1", "grace@example.com"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::EmailTaken { email } if email == "grace@example.com"),
        "{err:?}"
    );
    assert!(
        !err.to_string().contains("grace@"),
        "the message keeps the address out of logs"
    );
    assert_eq!(user_count(&pool).await, 1);
    assert_eq!(
        find_by_id(&pool, legacy).await.unwrap(),
        before,
        "the account is untouched"
    );

    // An existing identity changing its email to another user's address is refused too.
    sign_in(&pool, &profile("clerk", "user_1", "ada@example.com"))
        .await
        .unwrap();
    let err = sign_in(&pool, &profile("clerk", "user_1", "grace@example.com"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::EmailTaken { .. }), "{err:?}");
    let ada = find_by_identity(&pool, &Identity::parse("clerk", "user_1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ada.email, "ada@example.com");
}

#[sqlx::test]
async fn linking_is_explicit_and_refuses_conflicts(pool: PgPool) {
    let grace = legacy_user(&pool, "grace", "grace@example.com").await;
    let ada = sign_in(&pool, &profile("clerk", "user_ada", "ada@example.com"))
        .await
        .unwrap()
        .user;
    age(&pool, grace).await;

    let google = Identity::parse("google", "g-grace").unwrap();
    let linked = link_identity(&pool, grace, &google).await.unwrap();
    assert_eq!(linked.identity_provider.as_deref(), Some("google"));
    assert_eq!(linked.identity_sub.as_deref(), Some("g-grace"));
    assert_recent(linked.updated_at, "updated_at after linking");
    // Linking again to the same identity is fine.
    assert_eq!(
        link_identity(&pool, grace, &google).await.unwrap().id,
        grace
    );

    // Now a sign-in with that identity finds the existing account.
    let signed = sign_in(&pool, &profile("google", "g-grace", "grace@example.com"))
        .await
        .unwrap();
    assert_eq!((signed.user.id, signed.created), (grace, false));

    // Ada's identity belongs to Ada.
    let other = legacy_user(&pool, "linus", "linus@example.com").await;
    let ada_identity = Identity::parse("clerk", "user_ada").unwrap();
    let err = link_identity(&pool, other, &ada_identity)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::IdentityTaken { provider, .. } if provider == "clerk"),
        "{err:?}"
    );
    // Grace already has an identity; it is not replaced.
    let err = link_identity(&pool, grace, &Identity::parse("clerk", "new").unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::AlreadyLinked { user_id } if user_id == grace),
        "{err:?}"
    );

    let linus = find_by_id(&pool, other).await.unwrap().unwrap();
    assert_eq!((linus.identity_provider, linus.identity_sub), (None, None));
    assert_eq!(
        find_by_identity(&pool, &ada_identity)
            .await
            .unwrap()
            .unwrap()
            .id,
        ada.id
    );
    assert_eq!(
        find_by_id(&pool, grace)
            .await
            .unwrap()
            .unwrap()
            .identity_sub
            .as_deref(),
        Some("g-grace")
    );
}

/// A link that fails for any reason but the identity being someone else's keeps its database
/// error: here the user's row is locked by another transaction and the caller's `lock_timeout`
/// runs out (SQLSTATE 55P03), which is not `IdentityTaken`.
#[sqlx::test]
#[allow(clippy::disallowed_methods)]
async fn a_link_failing_otherwise_is_not_called_taken(pool: PgPool) {
    let grace = legacy_user(&pool, "grace", "grace@example.com").await;
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
        .bind(grace)
        .execute(&mut *holder)
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL lock_timeout = '50ms'")
        .execute(&mut *tx)
        .await
        .unwrap();
    let err = link_identity(
        &mut *tx,
        grace,
        &Identity::parse("google", "g-grace").unwrap(),
    )
    .await
    .unwrap_err();
    let code = match &err {
        Error::Database(sqlx::Error::Database(db)) => db.code().map(|c| c.into_owned()),
        _ => None,
    };
    assert_eq!(code.as_deref(), Some("55P03"), "{err:?}");
    tx.rollback().await.unwrap();
    holder.rollback().await.unwrap();
    link_identity(&pool, grace, &Identity::parse("google", "g-grace").unwrap())
        .await
        .unwrap();
}

#[sqlx::test]
async fn errors_leave_the_callers_transaction_usable(pool: PgPool) {
    legacy_user(&pool, "grace", "grace@example.com").await;
    let taken = sign_in(&pool, &profile("clerk", "user_ada", "ada@example.com"))
        .await
        .unwrap()
        .user;
    let linus = legacy_user(&pool, "linus", "linus@example.com").await;

    let mut tx = pool.begin().await.unwrap();
    let err = sign_in(&mut *tx, &profile("google", "g-1", "grace@example.com"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::EmailTaken { .. }), "{err:?}");
    let err = link_identity(
        &mut *tx,
        linus,
        &Identity::parse("clerk", "user_ada").unwrap(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::IdentityTaken { .. }), "{err:?}");
    // The transaction still works: sign in someone else, change a role, and commit.
    let new = sign_in(&mut *tx, &profile("google", "g-2", "bob@example.com"))
        .await
        .unwrap();
    assert!(new.created);
    set_role(&mut *tx, taken.id, Role::Admin).await.unwrap();
    tx.commit().await.unwrap();

    assert_eq!(user_count(&pool).await, 4);
    assert_eq!(
        find_by_id(&pool, taken.id).await.unwrap().unwrap().role,
        Role::Admin
    );

    // And a rolled-back caller transaction takes our writes with it.
    let mut tx = pool.begin().await.unwrap();
    sign_in(&mut *tx, &profile("google", "g-3", "carol@example.com"))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(user_count(&pool).await, 4);
}

#[sqlx::test]
async fn times_are_utc_whatever_the_session_time_zone(pool: PgPool) {
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query!("SET TIME ZONE 'America/Chicago'")
        .execute(&mut *conn)
        .await
        .unwrap();
    let tz = sqlx::query_scalar!(r#"SELECT current_setting('TimeZone') AS "tz!""#)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(tz, "America/Chicago");

    let user = sign_in(&mut *conn, &profile("clerk", "1", "ada@example.com"))
        .await
        .unwrap()
        .user;
    assert_recent(user.created_at, "created_at written in a Chicago session");
    assert_recent(user.updated_at, "updated_at written in a Chicago session");
    let user = record_login(&mut *conn, user.id).await.unwrap();
    assert_recent(
        user.last_login_at.unwrap(),
        "last_login_at written in a Chicago session",
    );

    // Read back on a UTC session, the stored wall-clock value is UTC's.
    let stored = sqlx::query_scalar!(
        r#"SELECT last_login_at AS "t!" FROM users WHERE id = $1"#,
        user.id.0
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_recent(stored.and_utc(), "the raw column");
}
