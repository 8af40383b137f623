//! `find_by_identities`, and `Db`'s coalesced identity look-ups, with real concurrency.
use std::sync::Arc;

use livermore_db::{Db, Error, Identity, Profile, Role, find_by_identities, set_role, sign_in};
use sqlx::PgPool;

use crate::common::lock_users;

async fn users(pool: &PgPool, n: usize) -> Vec<(Identity, livermore_db::UserId)> {
    let mut out = Vec::new();
    for i in 0..n {
        let profile = Profile::parse(
            "clerk",
            &format!("user_look_{i}"),
            &format!("look{i}@example.com"),
            None,
            None,
        )
        .unwrap();
        let id = sign_in(pool, &profile).await.unwrap().user.id;
        out.push((profile.identity, id));
    }
    out
}

fn options(pool: &PgPool) -> sqlx::postgres::PgConnectOptions {
    pool.connect_options().as_ref().clone()
}

/// A handle of `connections` connections on the test's database.
async fn handle(options: sqlx::postgres::PgConnectOptions, connections: usize) -> Db {
    Db::builder(options)
        .connections(connections)
        .build()
        .await
        .unwrap()
}

#[sqlx::test]
async fn find_by_identities_answers_each_input_in_order(pool: PgPool) {
    let known = users(&pool, 3).await;
    let unknown = Identity::parse("clerk", "user_nobody").unwrap();
    let other_provider = Identity::parse("google", "user_look_1").unwrap();
    let asked = [
        known[2].0.clone(),
        unknown.clone(),
        known[0].0.clone(),
        other_provider,
        known[2].0.clone(),
    ];
    let found = find_by_identities(&pool, &asked).await.unwrap();
    let ids: Vec<Option<livermore_db::UserId>> =
        found.iter().map(|u| u.as_ref().map(|u| u.id)).collect();
    assert_eq!(
        ids,
        [
            Some(known[2].1),
            None,
            Some(known[0].1),
            None,
            Some(known[2].1)
        ]
    );
    assert!(find_by_identities(&pool, &[]).await.unwrap().is_empty());
}

#[sqlx::test]
async fn concurrent_lookups_are_answered_right_and_share_statements(pool: PgPool) {
    let known = Arc::new(users(&pool, 50).await);
    let lookup = handle(options(&pool), 2).await;
    let mut tasks = Vec::new();
    for t in 0..64 {
        let (lookup, known) = (lookup.clone(), known.clone());
        tasks.push(tokio::spawn(async move {
            for k in 0..50 {
                let (identity, id) = &known[(t * 7 + k) % known.len()];
                let user = lookup
                    .find_by_identity(identity)
                    .await
                    .unwrap()
                    .expect("a known user");
                assert_eq!(user.id, *id);
            }
            let nobody = Identity::parse("clerk", &format!("user_none_{t}")).unwrap();
            assert!(lookup.find_by_identity(&nobody).await.unwrap().is_none());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = lookup.stats();
    assert_eq!(stats.lookups, 64 * 51);
    assert!(
        stats.lookup_statements * 2 < stats.lookups,
        "concurrent calls go out together: {stats:?}"
    );

    // One call at a time goes out alone, at once.
    let before = lookup.stats();
    lookup.find_by_identity(&known[0].0).await.unwrap();
    let after = lookup.stats();
    assert_eq!(
        (
            after.lookup_statements - before.lookup_statements,
            after.lookups - before.lookups
        ),
        (1, 1)
    );
}

/// A task that commits a role change sees it in its next look-up, while 64 others look up all the
/// time: every answer comes from a statement sent after the call.
#[sqlx::test]
async fn a_committed_change_is_seen_by_the_next_lookup(pool: PgPool) {
    let known = Arc::new(users(&pool, 64).await);
    let lookup = handle(options(&pool), 3).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for t in 0..64 {
        let (lookup, known, stop) = (lookup.clone(), known.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut k = t;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                lookup
                    .find_by_identity(&known[k % known.len()].0)
                    .await
                    .unwrap();
                k += 1;
            }
        }));
    }
    // Commits need not wait for the disk here: what is tested is visibility, which does not depend on it.
    let mut writer = pool.acquire().await.unwrap();
    sqlx::query("SET synchronous_commit = off")
        .execute(&mut *writer)
        .await
        .unwrap();
    let (identity, id) = known[0].clone();
    let roles = [
        Role::Admin,
        Role::SubscriberBasic,
        Role::User,
        Role::SubscriberPro,
    ];
    for i in 0..10_000 {
        let role = roles[i % roles.len()];
        set_role(&mut *writer, id, role).await.unwrap();
        let seen = lookup.find_by_identity(&identity).await.unwrap().unwrap();
        assert_eq!(seen.role, role, "iteration {i}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    assert!(lookup.stats().lookup_statements < lookup.stats().lookups);
}

#[sqlx::test]
async fn a_broken_connection_fails_only_its_calls_and_is_replaced(pool: PgPool) {
    let known = users(&pool, 2).await;
    let lookup = handle(options(&pool).application_name("lookup-under-test"), 2).await;
    lookup.find_by_identity(&known[0].0).await.unwrap().unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = 'lookup-under-test'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        !killed.is_empty() && killed.iter().all(|k| *k),
        "{killed:?}"
    );
    // Each dead connection fails the one statement it carries, then is replaced.
    let mut failures = 0;
    for _ in 0..10 {
        match lookup.find_by_identity(&known[1].0).await {
            Ok(found) => assert_eq!(found.unwrap().id, known[1].1),
            Err(Error::Lookup(_) | Error::Database(_)) => failures += 1,
            Err(other) => panic!("{other:?}"),
        }
    }
    assert!(failures <= 2, "{failures} failures");
    lookup.find_by_identity(&known[0].0).await.unwrap().unwrap();
}

#[sqlx::test]
async fn callers_that_go_away_break_nothing(pool: PgPool) {
    let known = Arc::new(users(&pool, 5).await);
    let lookup = handle(options(&pool), 1).await;
    // Hundreds of calls abandoned at once, some before and some after they went out.
    let mut tasks = Vec::new();
    for t in 0..300 {
        let (lookup, known) = (lookup.clone(), known.clone());
        tasks.push(tokio::spawn(async move {
            lookup.find_by_identity(&known[t % 5].0).await.ok();
        }));
    }
    for (i, t) in tasks.iter().enumerate() {
        if i % 2 == 0 {
            t.abort();
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    for (identity, id) in known.iter() {
        assert_eq!(
            lookup.find_by_identity(identity).await.unwrap().unwrap().id,
            *id
        );
    }
}

/// The server's `statement_timeout` firing before the handle's deadline is the deadline: the call
/// fails with `Error::Timeout` (the call timeout). A statement cancelled for another reason (SQLSTATE
/// 57014 too, "due to user request") is not a timeout: its database error is kept. `users` is
/// locked meanwhile, so that each look-up waits on the server.
#[sqlx::test]
#[allow(clippy::disallowed_methods)]
async fn a_statement_timeout_is_the_deadline_and_a_cancel_is_not(pool: PgPool) {
    let known = users(&pool, 1).await;
    let identity = known[0].0.clone();
    let call_timeout = std::time::Duration::from_secs(30);
    let handle = |statement_timeout| {
        Db::builder(options(&pool).application_name("lookup-cancelled"))
            .connections(1)
            .call_timeout(call_timeout)
            .statement_timeout(statement_timeout)
            .build()
    };
    let db = handle(std::time::Duration::from_millis(300)).await.unwrap();
    let locker = lock_users(&pool).await;

    let timed_out = db.find_by_identity(&identity).await;
    assert!(
        matches!(timed_out, Err(Error::Timeout(d)) if d == call_timeout),
        "{timed_out:?}"
    );

    // The same wait on a handle whose statements time out with the call, cancelled by another
    // session meanwhile.
    let db = handle(call_timeout).await.unwrap();
    let waiting = {
        let db = db.clone();
        let identity = identity.clone();
        tokio::spawn(async move { db.find_by_identity(&identity).await })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let cancelled = loop {
        let cancelled: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity, pg_cancel_backend(pid)
             WHERE application_name = 'lookup-cancelled' AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if cancelled > 0 || std::time::Instant::now() > deadline {
            break cancelled;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    let result = waiting.await.unwrap();
    assert_eq!(
        cancelled, 1,
        "no waiting look-up was found to cancel: {result:?}"
    );
    let code = match &result {
        Err(e) => std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<sqlx::Error>())
            .and_then(|s| s.as_database_error())
            .and_then(|d| d.code().map(|c| c.into_owned())),
        Ok(_) => None,
    };
    assert!(!matches!(result, Err(Error::Timeout(_))), "{result:?}");
    assert_eq!(code.as_deref(), Some("57014"), "{result:?}");
    locker.rollback().await.unwrap();
    assert!(db.find_by_identity(&identity).await.unwrap().is_some());
}

/// The handle's statements waiting on a lock of `users`, by application name: (single look-ups,
/// batches, whose text has `unnest`).
#[allow(clippy::disallowed_methods)]
async fn waiting_on_lock(pool: &PgPool, application: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE query NOT LIKE '%unnest%'),
                count(*) FILTER (WHERE query LIKE '%unnest%')
         FROM pg_stat_activity
         WHERE application_name = $1 AND wait_event_type = 'Lock'",
    )
    .bind(application)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// What waits on the lock once `expected` is there (or after 20 s), and half a second later, so
/// that any statement beyond it has had the time to arrive.
async fn settled_waiting(pool: &PgPool, application: &str, expected: (i64, i64)) -> (i64, i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while waiting_on_lock(pool, application).await != expected
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    waiting_on_lock(pool, application).await
}

/// Look-ups in tasks of their own, each answering with the id it expects.
type Callers = tokio::task::JoinSet<(
    Result<Option<livermore_db::User>, Error>,
    livermore_db::UserId,
)>;

/// Each known user looked up from a task of its own.
fn look_up_each(db: &Db, known: &[(Identity, livermore_db::UserId)]) -> Callers {
    let mut callers = tokio::task::JoinSet::new();
    for (identity, id) in known.iter().cloned() {
        let db = db.clone();
        callers.spawn(async move { (db.find_by_identity(&identity).await, id) });
    }
    callers
}

/// A handle of 8 connections, 1 look-up connection (so 1 look-up alone at most) and batches of
/// `max_batch`, its sessions named `application`.
async fn one_sender_handle(pool: &PgPool, application: &str, max_batch: usize) -> Db {
    Db::builder(options(pool).application_name(application))
        .connections(8)
        .lookup_connections(1)
        .max_batch(max_batch)
        .call_timeout(std::time::Duration::from_secs(60))
        .build()
        .await
        .unwrap()
}

/// Waits for every caller: each found the user it asked for.
async fn all_answered(mut callers: Callers, what: &str) {
    while let Some(done) = callers.join_next().await {
        let (found, id) = done.unwrap();
        assert_eq!(found.unwrap().map(|u| u.id), Some(id), "{what}");
    }
}

/// However many callers wait, at most `lookup_connections` look-ups run alone and at most
/// `lookup_connections` batches are in flight; the rest queue in the handle. With `users` locked, 24
/// callers on a handle of 8 connections, 1 look-up connection and batches of 4 leave exactly 1 single
/// look-up and 1 batch waiting on the lock, and all 24 are answered once it goes. Twice: a sender
/// that ended gives its place back, or the second burst would find none. (More senders, or one more
/// caller alone, would take the connections the handle's writes need.)
#[sqlx::test]
async fn lookups_in_flight_stay_within_their_bounds(pool: PgPool) {
    let known = users(&pool, 24).await;
    let db = one_sender_handle(&pool, "lookup-bounds", 4).await;
    for burst in 0..2 {
        let locker = lock_users(&pool).await;
        let callers = look_up_each(&db, &known);
        let seen = settled_waiting(&pool, "lookup-bounds", (1, 1)).await;
        locker.rollback().await.unwrap();
        all_answered(callers, &format!("burst {burst}")).await;
        assert_eq!(
            seen,
            (1, 1),
            "burst {burst}: (single look-ups, batches) waiting on the lock"
        );
    }
}

/// No statement carries more than `max_batch` look-ups: with `max_batch(1)` and 24 callers queued
/// behind a lock, every statement answers exactly one.
#[sqlx::test]
async fn a_statement_carries_at_most_max_batch_lookups(pool: PgPool) {
    let known = users(&pool, 24).await;
    let db = one_sender_handle(&pool, "lookup-max-batch", 1).await;
    let before = db.stats();
    let locker = lock_users(&pool).await;
    let callers = look_up_each(&db, &known);
    // Batches of one are single statements: 1 alone and the sender's one.
    settled_waiting(&pool, "lookup-max-batch", (2, 0)).await;
    locker.rollback().await.unwrap();
    all_answered(callers, "max_batch 1").await;
    let after = db.stats();
    let lookups = after.lookups - before.lookups;
    let statements = after.lookup_statements - before.lookup_statements;
    assert_eq!((lookups, statements), (24, 24), "{after:?}");
}

/// The look-ups of callers that went away while queued are not sent: 24 callers behind a lock (1
/// alone, a batch of at most 4 sent, the rest queued), all of them gone before the lock is released,
/// and what the handle then sends answers at most those 5 (and one look-up made afterwards).
#[sqlx::test]
async fn the_lookups_of_callers_gone_are_not_sent(pool: PgPool) {
    let known = users(&pool, 24).await;
    let db = one_sender_handle(&pool, "lookup-gone", 4).await;
    let before = db.stats();
    let locker = lock_users(&pool).await;
    let mut callers = look_up_each(&db, &known);
    settled_waiting(&pool, "lookup-gone", (1, 1)).await;
    callers.abort_all();
    while callers.join_next().await.is_some() {}
    locker.rollback().await.unwrap();
    // The sender finds the rest of the queue gone; a look-up now is answered (after it, if any).
    assert_eq!(
        db.find_by_identity(&known[0].0)
            .await
            .unwrap()
            .map(|u| u.id),
        Some(known[0].1)
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let after = db.stats();
    let sent = after.lookups - before.lookups;
    assert!(
        sent <= 1 + 4 + 1,
        "{sent} look-ups sent for 6 at most: {after:?}"
    );
}

/// When no connection can be opened, queued look-ups fail with the reason at once, as those that
/// run alone do, rather than waiting for their deadline.
#[sqlx::test]
async fn queued_lookups_fail_at_once_without_a_connection(pool: PgPool) {
    let known = users(&pool, 24).await;
    let call_timeout = std::time::Duration::from_secs(30);
    // Nothing listens on port 1.
    let db = Db::builder(options(&pool).port(1))
        .connections(8)
        .lookup_connections(1)
        .call_timeout(call_timeout)
        .connect_timeout(std::time::Duration::from_secs(5))
        .build_lazy();
    let started = std::time::Instant::now();
    let mut callers = look_up_each(&db, &known);
    while let Some(done) = callers.join_next().await {
        let (found, _) = done.unwrap();
        assert!(
            matches!(found, Err(ref e) if !matches!(e, Error::Timeout(_))),
            "{found:?}"
        );
    }
    assert!(
        started.elapsed() < call_timeout / 2,
        "{:?} to fail 24 look-ups",
        started.elapsed()
    );
}

/// No caller waits past its own answer: under a steady stream (64 tasks on 3 connections, each
/// looking up again as soon as it is answered, so that the queue is seldom empty) queued look-ups
/// are sent by a task, not by a caller. Before, a caller that took a combiner's place sent the
/// queue for as long as the stream lasted and failed at its deadline, answered long before.
#[sqlx::test]
#[ignore = "timing: make test runs it alone (cargo test -- --ignored --test-threads=1)"]
async fn a_caller_sending_the_queue_returns_once_answered(pool: PgPool) {
    let known = Arc::new(users(&pool, 64).await);
    // One statement of queued look-ups at a time.
    let lookup = Db::builder(options(&pool))
        .connections(3)
        .lookup_connections(1)
        .build()
        .await
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for t in 0..64 {
        let (lookup, known, stop) = (lookup.clone(), known.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut k = t;
            let mut slowest = std::time::Duration::ZERO;
            let mut count = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let asked = std::time::Instant::now();
                lookup
                    .find_by_identity(&known[k % known.len()].0)
                    .await
                    .unwrap();
                slowest = slowest.max(asked.elapsed());
                count += 1;
                k += 1;
            }
            (slowest, count)
        }));
    }
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut slowest = std::time::Duration::ZERO;
    let mut count = 0;
    for r in readers {
        let (s, c) = r.await.unwrap();
        slowest = slowest.max(s);
        count += c;
    }
    // Answered in milliseconds; before, one caller sent the queue for the whole 3 s.
    assert!(
        slowest < std::time::Duration::from_secs(1),
        "slowest {slowest:?} of {count}"
    );
}

/// A sender task dropped unfinished, with its runtime, gives its place up: look-ups queued later,
/// from another runtime, still find a sender. (Were the place lost, with one place every later
/// queued look-up would wait until its deadline.)
#[sqlx::test]
async fn a_sender_dropped_with_its_runtime_gives_its_place_up(pool: PgPool) {
    let known = Arc::new(users(&pool, 32).await);
    let deadline = std::time::Duration::from_secs(5);
    let db = Db::builder(options(&pool))
        .connections(2)
        .lookup_connections(1)
        .call_timeout(deadline)
        .build_lazy();
    // A runtime of its own, looking up from 32 tasks (so that a sender is running), shut down.
    let (other, shared) = (db.clone(), known.clone());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            for t in 0..32 {
                let (db, known) = (other.clone(), shared.clone());
                tokio::spawn(async move {
                    loop {
                        let _ = db.find_by_identity(&known[t].0).await;
                    }
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        });
        // Waits until its workers have dropped every task (shutdown_background returns before,
        // and leases then came back from the dying runtime while this test's look-ups ran).
        runtime.shutdown_timeout(std::time::Duration::from_secs(10));
    })
    .join()
    .unwrap();
    assert!(db.stats().lookup_statements > 0, "{:?}", db.stats());

    // Connections opened on the runtime that is gone fail once here and are replaced; what must not
    // happen is a look-up waiting for a sender until its deadline.
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (db, known) = (db.clone(), known.clone());
        tasks.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            for _ in 0..5 {
                match db.find_by_identity(&known[t].0).await {
                    Ok(found) if found.as_ref().map(|u| u.id) == Some(known[t].1) => {
                        return Ok(());
                    }
                    Ok(found) => return Err(format!("wrong answer {found:?}")),
                    Err(e @ Error::Timeout(_)) => return Err(format!("{e}")),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            Err(format!("5 errors: {errors:?}"))
        }));
    }
    for task in tasks {
        let answered = task.await.unwrap();
        assert!(answered.is_ok(), "{answered:?} {:?}", db.stats());
    }
}
