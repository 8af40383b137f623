//! `Db` when its server restarts under load: on a cluster of its own (`scripts/scratch-db.sh`), so
//! that the other tests' server stays up.
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use livermore_db::{Db, Error, Identity, Profile};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use crate::support::run_script;

fn scratch(command: &str) -> String {
    run_script("scratch-db.sh", &[command])
}

/// One call's outcome, as seen by a client task.
struct Call {
    at: Instant,
    ok: bool,
}

/// 16 tasks sign users in and look them up through one `Db` while the server is restarted
/// (`pg_ctl restart -m fast`): calls fail while it is down, each with a database error (no panic, no
/// hang), and the handle recovers by itself: within 5 s of the server being back every call
/// succeeds again.
#[tokio::test]
#[ignore = "timing: make test runs it alone (cargo test -- --ignored --test-threads=1)"]
async fn a_restarted_primary_fails_calls_while_down_and_the_handle_recovers() {
    let url = scratch("up");
    let server = PgConnectOptions::from_str(&url).unwrap();
    {
        let mut admin = PgConnection::connect_with(&server).await.unwrap();
        sqlx::raw_sql("DROP DATABASE IF EXISTS livermore_restart WITH (FORCE)")
            .execute(&mut admin)
            .await
            .unwrap();
        sqlx::raw_sql("CREATE DATABASE livermore_restart")
            .execute(&mut admin)
            .await
            .unwrap();
    }
    let options = server.database("livermore_restart");
    let db = Db::builder(options).build().await.unwrap();
    db.migrate().await.unwrap();
    let profiles: Arc<Vec<Profile>> = Arc::new(
        (0..64)
            .map(|n| {
                Profile::parse(
                    "clerk",
                    &format!("user_restart_{n}"),
                    &format!("restart{n}@example.com"),
                    None,
                    None,
                )
                .unwrap()
            })
            .collect(),
    );
    for p in profiles.iter() {
        db.sign_in(p).await.unwrap();
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16 {
        let (db, profiles, stop) = (db.clone(), profiles.clone(), stop.clone());
        tasks.spawn(async move {
            let mut calls = Vec::new();
            let mut k = t;
            while !stop.load(Ordering::Relaxed) {
                let p = &profiles[k % profiles.len()];
                let result = if k % 4 == 0 {
                    db.sign_in(p).await.map(|_| ())
                } else {
                    let identity = Identity::parse("clerk", p.identity.subject.as_str()).unwrap();
                    db.find_by_identity(&identity).await.map(|found| {
                        assert!(found.is_some());
                    })
                };
                match &result {
                    Ok(()) => {}
                    Err(Error::Database(_) | Error::Lookup(_)) => {
                        // While the server is down, calls fail fast: back off a little.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(other) => panic!("not a database error: {other:?}"),
                }
                calls.push(Call {
                    at: Instant::now(),
                    ok: result.is_ok(),
                });
                k += 1;
            }
            calls
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarting = Instant::now();
    tokio::task::spawn_blocking(|| scratch("restart"))
        .await
        .unwrap();
    let back = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);
    let mut calls = Vec::new();
    while let Some(done) = tasks.join_next().await {
        calls.extend(done.unwrap());
    }
    calls.sort_by_key(|c| c.at);
    let failed: Vec<&Call> = calls.iter().filter(|c| !c.ok).collect();
    let last_failure = failed.last().map(|c| c.at);
    let recovered_after =
        last_failure.map_or(Duration::ZERO, |at| at.saturating_duration_since(back));
    println!(
        "restart took {:?}; {} calls, {} failed; last failure {:?} after the server was back",
        back - restarting,
        calls.len(),
        failed.len(),
        recovered_after
    );
    assert!(
        !failed.is_empty(),
        "no call failed: the server was not restarted under the load"
    );
    assert!(
        recovered_after < Duration::from_secs(5),
        "calls still failed {recovered_after:?} after the server was back"
    );
    let late = calls
        .iter()
        .filter(|c| c.at > back + Duration::from_secs(5))
        .count();
    assert!(
        late > 100,
        "only {late} calls in the last second: the handle did not recover"
    );
    db.close().await;
}
