//! Usernames from addresses: collisions get suffixes, exhaustion is a typed error, and concurrent
//! sign-ins make one user per identity and distinct usernames.
use super::*;

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

/// The suffix is the smallest free one, however many are taken: the search widens its window
/// round by round (1, 2, 4, … candidates) without skipping any. Here `ada` to `ada_7` are taken,
/// which takes three rounds, and `ada_8` is free.
#[sqlx::test]
async fn the_suffix_is_the_smallest_free_one(pool: PgPool) {
    legacy_user(&pool, "ada", "ada@old.example").await;
    for n in 2..=7 {
        legacy_user(&pool, &format!("ada_{n}"), &format!("ada{n}@old.example")).await;
    }
    // Free beyond the gap too: a search that skipped would find one of these.
    for n in 9..=20 {
        legacy_user(&pool, &format!("ada_{n}"), &format!("ada{n}@old.example")).await;
    }
    let user = sign_in(&pool, &profile("clerk", "1", "ada@example.com"))
        .await
        .unwrap()
        .user;
    assert_eq!(user.username, "ada_8");
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
