//! Deletions racing creations, backfills and sign-ins, on many connections at once: a deleted user
//! never ends active, its address never comes back.
use super::*;

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
