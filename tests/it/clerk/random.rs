//! Random records (a seeded generator, so that a failing seed can be replayed): a batch ends like its
//! records one by one, any delivery like delivery in order.
use super::*;

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
