//! The identity data-access API against a real PostgreSQL: every function, its error paths, races,
//! time zones and hostile input, with the rows checked afterwards.
use std::sync::Arc;

use chrono::{DateTime, Utc};
use livermore_db::*;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::Barrier;

fn profile(provider: &str, sub: &str, email: &str) -> Profile {
    Profile::parse(
        provider,
        sub,
        email,
        Some("Ada Lovelace"),
        Some("https://img.example/a.png"),
    )
    .expect("valid profile")
}

async fn user_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM users"#)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Inserts a user the way pre-IAM tooling did: no identity.
async fn legacy_user(pool: &PgPool, username: &str, email: &str) -> UserId {
    sqlx::query_scalar!(
        r#"INSERT INTO users (username, email) VALUES ($1, $2) RETURNING id AS "id: UserId""#,
        username,
        email
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Sets `updated_at` far in the past, so a test can see a write bump it.
async fn age(pool: &PgPool, id: UserId) {
    sqlx::query!(
        "UPDATE users SET updated_at = '2000-01-01' WHERE id = $1",
        id.0
    )
    .execute(pool)
    .await
    .unwrap();
}

fn assert_recent(t: DateTime<Utc>, what: &str) {
    let skew = (Utc::now() - t).num_seconds().abs();
    assert!(skew <= 5, "{what} = {t} is {skew}s away from UTC now");
}

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
async fn usernames_collide_into_suffixes(pool: PgPool) {
    legacy_user(&pool, "ada", "ada@old.example").await;
    let a = sign_in(&pool, &profile("clerk", "1", "ada@example.com"))
        .await
        .unwrap()
        .user;
    let b = sign_in(&pool, &profile("clerk", "2", "Ada+work@example.org"))
        .await
        .unwrap()
        .user;
    assert_eq!(
        (a.username.as_str(), b.username.as_str()),
        ("ada_2", "ada_3")
    );

    let long = format!("{}@example.com", "x".repeat(64));
    let c = sign_in(&pool, &profile("clerk", "3", &long))
        .await
        .unwrap()
        .user;
    let d = sign_in(
        &pool,
        &profile("clerk", "4", &format!("{}@other.example", "x".repeat(64))),
    )
    .await
    .unwrap()
    .user;
    assert_eq!(c.username, "x".repeat(50));
    assert_eq!(d.username, format!("{}_2", "x".repeat(48)));
}

#[sqlx::test]
async fn username_exhaustion_is_a_typed_error(pool: PgPool) {
    // Make every username look taken: the database answers each insert with the violation that a
    // taken username raises.
    sqlx::query!(
        r#"CREATE FUNCTION every_username_taken() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
               RAISE unique_violation USING CONSTRAINT = 'users_username_unique',
                                            MESSAGE = 'duplicate key value violates unique constraint';
           END $$"#
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query!(
        "CREATE TRIGGER every_username_taken BEFORE INSERT ON users
         FOR EACH ROW EXECUTE FUNCTION every_username_taken()"
    )
    .execute(&pool)
    .await
    .unwrap();

    let err = sign_in(&pool, &profile("clerk", "1", "ada@example.com"))
        .await
        .unwrap_err();
    match err {
        Error::UsernameExhausted { base, attempts } => {
            assert_eq!(base, "ada");
            assert_eq!(attempts, USERNAME_ATTEMPTS);
        }
        other => panic!("expected UsernameExhausted, got {other:?}"),
    }
    // In a transaction too, which stays usable.
    let mut tx = pool.begin().await.unwrap();
    let err = sign_in(&mut *tx, &profile("clerk", "1", "ada@example.com"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UsernameExhausted { .. }), "{err:?}");
    let n = sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM users"#)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 0);
    tx.commit().await.unwrap();
}

#[sqlx::test]
async fn logins_roles_listing_and_deactivation(pool: PgPool) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let email = format!("u{i}@example.com");
        ids.push(
            sign_in(&pool, &profile("clerk", &format!("s{i}"), &email))
                .await
                .unwrap()
                .user
                .id,
        );
    }

    age(&pool, ids[0]).await;
    let logged = record_login(&pool, ids[0]).await.unwrap();
    let login = logged.last_login_at.expect("last_login_at set");
    assert_recent(login, "last_login_at");
    assert_recent(logged.updated_at, "updated_at after a login");

    for &id in &ids[1..4] {
        age(&pool, id).await;
        let u = set_role(&pool, id, Role::SubscriberPro).await.unwrap();
        assert_eq!(u.role, Role::SubscriberPro);
        assert_recent(u.updated_at, "updated_at after set_role");
    }
    let all = list_by_role(&pool, Role::SubscriberPro, None, 100)
        .await
        .unwrap();
    assert_eq!(all.iter().map(|u| u.id).collect::<Vec<_>>(), &ids[1..4]);
    let page1 = list_by_role(&pool, Role::SubscriberPro, None, 2)
        .await
        .unwrap();
    let page2 = list_by_role(&pool, Role::SubscriberPro, Some(page1[1].id), 2)
        .await
        .unwrap();
    assert_eq!(
        page1.iter().chain(&page2).map(|u| u.id).collect::<Vec<_>>(),
        &ids[1..4]
    );
    let users = list_by_role(&pool, Role::User, None, 100).await.unwrap();
    assert_eq!(
        users.iter().map(|u| u.id).collect::<Vec<_>>(),
        [ids[0], ids[4]]
    );
    assert!(
        list_by_role(&pool, Role::Admin, None, 100)
            .await
            .unwrap()
            .is_empty()
    );

    age(&pool, ids[4]).await;
    let gone = deactivate(&pool, ids[4]).await.unwrap();
    assert!(!gone.is_active);
    assert_recent(gone.updated_at, "updated_at after deactivate");
    let identity = Identity::parse("clerk", "s4").unwrap();
    let kept = find_by_identity(&pool, &identity)
        .await
        .unwrap()
        .expect("row and identity kept");
    assert!(!kept.is_active);
    // A deactivated user signing in is found, not re-created, and stays inactive.
    let again = sign_in(&pool, &profile("clerk", "s4", "u4@example.com"))
        .await
        .unwrap();
    assert_eq!(
        (again.user.id, again.created, again.user.is_active),
        (ids[4], false, false)
    );
    assert_eq!(user_count(&pool).await, 5);
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

#[sqlx::test]
async fn hostile_strings_are_stored_verbatim_or_rejected(pool: PgPool) {
    let nasty_sub = "'; DROP TABLE users; --";
    let nasty_name = "Robert'); DROP TABLE users;-- \"😀\" \\ %_";
    let email = "o'brien+\"quoted\"@example.com";
    let p = Profile::parse(
        "clerk",
        nasty_sub,
        email,
        Some(nasty_name),
        Some("https://x.example/a?b='c'&d=%00"),
    )
    .unwrap();
    let u = sign_in(&pool, &p).await.unwrap().user;
    assert_eq!(u.identity_sub.as_deref(), Some(nasty_sub));
    assert_eq!(u.display_name.as_deref(), Some(nasty_name));
    assert_eq!(u.email, email);
    assert_eq!(
        u.identity_picture_url.as_deref(),
        Some("https://x.example/a?b='c'&d=%00")
    );
    assert_eq!(u.username, "obrien");
    let found = find_by_identity(&pool, &Identity::parse("clerk", nasty_sub).unwrap())
        .await
        .unwrap();
    assert_eq!(found.map(|f| f.id), Some(u.id));

    // 10 000 characters: a display name is cut to 100, anything else is refused.
    let huge = "😀".repeat(10_000);
    let p = Profile::parse("clerk", "emoji", "emoji@example.com", Some(&huge), None).unwrap();
    let emoji = sign_in(&pool, &p).await.unwrap().user;
    assert_eq!(emoji.display_name.unwrap(), "😀".repeat(100));
    for (field, result) in [
        (
            "subject",
            Profile::parse("clerk", &huge, "a@b.c", None, None),
        ),
        (
            "email",
            Profile::parse("clerk", "s", &format!("{huge}@b.c"), None, None),
        ),
        ("provider", Profile::parse(&huge, "s", "a@b.c", None, None)),
        (
            "picture_url",
            Profile::parse(
                "clerk",
                "s",
                "a@b.c",
                None,
                Some(&format!("https://a/{huge}")),
            ),
        ),
        (
            "subject",
            Profile::parse("clerk", "a\0b", "a@b.c", None, None),
        ),
        ("email", Profile::parse("clerk", "s", "a\0@b.c", None, None)),
        (
            "display_name",
            Profile::parse("clerk", "s", "a@b.c", Some("nul\0"), None),
        ),
        (
            "provider",
            Profile::parse("clerk'; --", "s", "a@b.c", None, None),
        ),
    ] {
        match result {
            Err(Error::InvalidInput { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected InvalidInput for {field}, got {other:?}"),
        }
    }

    // The table is intact.
    assert_eq!(user_count(&pool).await, 2);
    let columns = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM information_schema.columns WHERE table_name = 'users'"#
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(columns, 17);
}

/// A pool of its own (the test harness's pool options share a small parent pool) with 50 live
/// connections, so 50 tasks really run their statements at once.
async fn race_pool(connect: PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(50)
        .min_connections(50)
        .connect_with(connect)
        .await
        .expect("a pool of 50 connections")
}

#[sqlx::test]
async fn fifty_concurrent_sign_ins_of_one_new_identity_make_one_user(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = race_pool(connect).await;
    let barrier = Arc::new(Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (pool, barrier) = (pool.clone(), barrier.clone());
            tokio::spawn(async move {
                let p = profile("clerk", "user_race", "race@example.com");
                barrier.wait().await;
                sign_in(&pool, &p).await
            })
        })
        .collect();
    let mut ids = Vec::new();
    let mut created = 0;
    for t in tasks {
        let done = t.await.unwrap().expect("every concurrent sign-in succeeds");
        ids.push(done.user.id);
        created += usize::from(done.created);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1, "all 50 return the same id");
    assert_eq!(created, 1, "exactly one of them created the user");
    assert_eq!(user_count(&pool).await, 1);
}

#[sqlx::test]
async fn fifty_concurrent_new_users_sharing_a_local_part_get_distinct_usernames(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = race_pool(connect).await;
    let barrier = Arc::new(Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (pool, barrier) = (pool.clone(), barrier.clone());
            tokio::spawn(async move {
                let p = profile(
                    "google",
                    &format!("g-{i}"),
                    &format!("trader@firm{i}.example"),
                );
                barrier.wait().await;
                sign_in(&pool, &p).await
            })
        })
        .collect();
    let mut usernames = Vec::new();
    for t in tasks {
        let done = t.await.unwrap().expect("every concurrent sign-in succeeds");
        assert!(done.created);
        assert!(
            done.user.username.starts_with("trader"),
            "{}",
            done.user.username
        );
        usernames.push(done.user.username);
    }
    usernames.sort();
    usernames.dedup();
    assert_eq!(usernames.len(), 50);
    assert_eq!(user_count(&pool).await, 50);
}
