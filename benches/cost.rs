//! `make bench-cost`: the client's instructions per identity look-up, counted by callgrind, through
//! one held connection (`find_by_identity(&mut conn, …)`), through `Db` with its defaults and
//! through a pool. A measurement, not a test: it asserts nothing about the figures.
//!
//! Seconds on this project's 2 shared cores swing by a third from run to run (BENCHMARKS.md), and
//! the client, the server and pgbench compete for them; instructions executed by the client are the
//! same from run to run for the same binary and inputs, whatever else the machine is doing. So this
//! is how a change to `Db`'s own path (its lease, deadline, routing, futures) is judged: each way is
//! run under `valgrind --tool=callgrind` twice, with N and 2N sequential look-ups from one task, and
//! the difference divided by N is its cost per look-up (start-up, connecting and SCRAM cancel out).
//! The server's work is not counted: it is the same statement on every side.
// The scratch database's CREATE and DROP (shared with the other benches) run runtime strings.
#![allow(clippy::disallowed_methods)]
// Only the scratch database of the shared helpers is used here.
#[allow(dead_code)]
mod support;

use std::process::Command;
use std::str::FromStr;

use livermore_db::{Db, Identity, Profile};
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

const DATABASE: &str = "livermore_cost";
const USERS: usize = 100;

fn identities() -> Vec<Identity> {
    (0..USERS)
        .map(|i| Identity::parse("clerk", &format!("user_cost_{i}")).expect("an identity"))
        .collect()
}

/// The child: `way` look-ups, `n` of them, one after another from one task.
async fn child(o: PgConnectOptions, way: &str, n: usize) {
    let ids = identities();
    let mut found = 0;
    match way {
        "held" => {
            let mut conn = o.connect().await.expect("connect");
            for i in 0..n {
                let user = livermore_db::find_by_identity(&mut conn, &ids[i % USERS]).await;
                found += usize::from(user.expect("look-up").is_some());
            }
        }
        "db" => {
            let db = Db::builder(o).build().await.expect("connect Db");
            for i in 0..n {
                let user = db.find_by_identity(&ids[i % USERS]).await;
                found += usize::from(user.expect("look-up").is_some());
            }
        }
        "pool" => {
            let pool = livermore_db::pool_options()
                .max_connections(1)
                .connect_with(o)
                .await
                .expect("connect");
            for i in 0..n {
                let user = livermore_db::find_by_identity(&pool, &ids[i % USERS]).await;
                found += usize::from(user.expect("look-up").is_some());
            }
        }
        other => panic!("unknown way {other}"),
    }
    assert_eq!(found, n, "every look-up finds its user");
}

/// Runs the child under callgrind; the instructions it executed.
fn counted(url: &str, way: &str, n: usize) -> u64 {
    let out = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            &std::env::current_exe()
                .expect("this program")
                .display()
                .to_string(),
            "--bench",
        ])
        .env("COST_CHILD", format!("{way}:{n}"))
        .env("DATABASE_URL", url)
        .output()
        .expect("run valgrind (Debian's package valgrind)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the {way} run failed:\n{stderr}");
    stderr
        .lines()
        .find_map(|l| {
            l.split_once("Collected :")
                .map(|(_, n)| n.trim().to_owned())
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("callgrind printed no count:\n{stderr}"))
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/cost.rs is a benchmark: run it with `make bench-cost`");
        return;
    }
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL (make bench-cost sets it)");
    let server = PgConnectOptions::from_str(&url).expect("DATABASE_URL parses");
    if let Ok(spec) = std::env::var("COST_CHILD") {
        let (way, n) = spec.split_once(':').expect("way:n");
        child(server, way, n.parse().expect("a count")).await;
        return;
    }
    let scratch = support::Scratch::create(&server, DATABASE).await;
    let o = server.clone().database(DATABASE);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(o.clone())
        .await
        .expect("connect");
    livermore_db::MIGRATOR.run(&pool).await.expect("migrate");
    for (i, identity) in identities().iter().enumerate() {
        let email = format!("cost{i}@example.com");
        let profile = Profile::parse("clerk", identity.subject.as_str(), &email, None, None)
            .expect("a profile");
        livermore_db::sign_in(&pool, &profile)
            .await
            .expect("sign in");
    }
    pool.close().await;
    let child_url = o.to_url_lossy().to_string();
    let n: usize = std::env::var("COST_LOOKUPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000);
    println!(
        "client instructions per identity look-up (callgrind; one task; {n} vs {} look-ups)",
        2 * n
    );
    let mut held = None;
    for way in ["held", "db", "pool"] {
        let per = (counted(&child_url, way, 2 * n) as f64 - counted(&child_url, way, n) as f64)
            / n as f64;
        let base = *held.get_or_insert(per);
        println!(
            "{way:>5}: {per:>8.0} instructions ({:+.0} over a held connection, {:.2}x)",
            per - base,
            per / base
        );
    }
    scratch.drop().await;
}
