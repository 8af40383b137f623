//! `make bench-cost`: the client's instructions per identity look-up, counted by callgrind, through
//! one held connection (`find_by_identity(&mut conn, …)`), through `Db` with its defaults and
//! through a pool. A measurement, not a test: it asserts nothing about the figures.
//!
//! Seconds on this project's 2 shared cores swing by a third from run to run (BENCHMARKS.md), and
//! the client, the server and pgbench compete for them; instructions executed by the client are the
//! same from run to run for the same binary and inputs, whatever else the machine is doing. So this
//! is how a change to `Db`'s own path (its lease, deadline, routing, queue, futures) is judged: each
//! way is run under `valgrind --tool=callgrind` twice, with N and 2N look-ups shared by T tasks at
//! once (`COST_TASKS`, default 1, 4, 8, 16 and 64; held connections: one per task), and the
//! difference divided by N is its cost per look-up (start-up, connecting and SCRAM cancel out). For
//! `Db` it prints the look-ups a statement carried too: under callgrind the client runs tens of times
//! slower than the server, so batches are smaller than at full speed.
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

/// The child: `n` look-ups the `way` from `tasks` tasks at once (`n / tasks` each); prints, for
/// `Db`, how many statements answered them.
async fn child(o: PgConnectOptions, way: &str, n: usize, tasks: usize) {
    let ids = std::sync::Arc::new(identities());
    let each = n / tasks;
    let mut found = 0;
    match way {
        "held" => {
            found = in_tasks(tasks, |t| {
                let (o, ids) = (o.clone(), ids.clone());
                async move {
                    let mut conn = o.connect().await.expect("connect");
                    let mut found = 0;
                    for i in 0..each {
                        let user =
                            livermore_db::find_by_identity(&mut conn, &ids[(t + i) % USERS]).await;
                        found += usize::from(user.expect("look-up").is_some());
                    }
                    found
                }
            })
            .await;
        }
        "db" => {
            let db = Db::builder(o.clone()).build().await.expect("connect Db");
            found = in_tasks(tasks, |t| {
                let (db, ids) = (db.clone(), ids.clone());
                async move {
                    let mut found = 0;
                    for i in 0..each {
                        let user = db.find_by_identity(&ids[(t + i) % USERS]).await;
                        found += usize::from(user.expect("look-up").is_some());
                    }
                    found
                }
            })
            .await;
            let stats = db.stats();
            eprintln!(
                "COST_STATEMENTS {} {}",
                stats.lookup_statements, stats.lookups
            );
            // `Db` opens connections as the load asks for them: the parent compares only runs that
            // opened as many (their opening is not counted, but what follows one is).
            let mut conn = o.connect().await.expect("connect");
            let opened: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .fetch_one(&mut conn)
            .await
            .expect("count the connections");
            eprintln!("COST_CONNECTIONS {opened}");
        }
        "pool" => {
            let pool = livermore_db::pool_options()
                .max_connections(1)
                .connect_with(o)
                .await
                .expect("connect");
            for i in 0..each * tasks {
                let user = livermore_db::find_by_identity(&pool, &ids[i % USERS]).await;
                found += usize::from(user.expect("look-up").is_some());
            }
        }
        other => panic!("unknown way {other}"),
    }
    assert_eq!(found, each * tasks, "every look-up finds its user");
}

/// Runs `task(0)` to `task(tasks - 1)` at once, each in a task of its own; the sum of what they
/// return (the users they found).
async fn in_tasks<F, Fut>(tasks: usize, task: F) -> usize
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = usize> + Send + 'static,
{
    let mut running = tokio::task::JoinSet::new();
    for t in 0..tasks {
        running.spawn(task(t));
    }
    running.join_all().await.into_iter().sum()
}

/// What one run of the child under callgrind counted.
struct Counted {
    /// Instructions the client executed.
    instructions: u64,
    /// `Db`'s look-up statements and the look-ups they answered (zero for the other ways).
    statements: u64,
    lookups: u64,
    /// The connections `Db` had open at the end (zero for the other ways).
    connections: u64,
}

/// Runs the child under callgrind.
fn counted(url: &str, way: &str, n: usize, tasks: usize) -> Counted {
    let out = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            // Not counted: opening connections (sqlx's `establish`, the SCRAM handshake's
            // millions of instructions), whose number may differ between the two runs. (The
            // toggle alone would count only inside it: `--collect-atstart=yes` inverts that.)
            "--toggle-collect=*establish*",
            "--collect-atstart=yes",
            &std::env::current_exe()
                .expect("this program")
                .display()
                .to_string(),
            "--bench",
        ])
        .env("COST_CHILD", format!("{way}:{n}:{tasks}"))
        .env("DATABASE_URL", url)
        .output()
        .expect("run valgrind (Debian's package valgrind)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the {way} run failed:\n{stderr}");
    let instructions = stderr
        .lines()
        .find_map(|l| {
            l.split_once("Collected :")
                .map(|(_, n)| n.trim().to_owned())
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("callgrind printed no count:\n{stderr}"));
    let (statements, lookups) = stderr
        .lines()
        .find_map(|l| l.strip_prefix("COST_STATEMENTS "))
        .and_then(|l| l.split_once(' '))
        .map(|(s, l)| (s.parse().unwrap_or(0), l.parse().unwrap_or(0)))
        .unwrap_or((0, 0));
    let connections = stderr
        .lines()
        .find_map(|l| l.strip_prefix("COST_CONNECTIONS "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Counted {
        instructions,
        statements,
        lookups,
        connections,
    }
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
        let mut parts = spec.split(':');
        let mut next = || parts.next().expect("way:n:tasks");
        let way = next().to_owned();
        let (n, tasks) = (
            next().parse().expect("a count"),
            next().parse().expect("tasks"),
        );
        child(server, &way, n, tasks).await;
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
    let tasks: Vec<usize> = std::env::var("COST_TASKS")
        .unwrap_or_else(|_| "1 4 8 16 64".to_owned())
        .split_whitespace()
        .map(|t| t.parse().expect("COST_TASKS: task counts"))
        .collect();
    println!(
        "client instructions per identity look-up (callgrind; {n} vs {} look-ups, shared by the tasks)",
        2 * n
    );
    for &t in &tasks {
        let ways: &[&str] = if t == 1 {
            &["held", "db", "pool"]
        } else {
            &["held", "db"]
        };
        let mut held = None;
        for way in ways {
            // Runs that opened as many connections, or the last of a few tries (marked).
            let mut tries = 0;
            let (small, large) = loop {
                let small = counted(&child_url, way, n, t);
                let large = counted(&child_url, way, 2 * n, t);
                tries += 1;
                if small.connections == large.connections || tries == 5 {
                    break (small, large);
                }
            };
            let unequal = if small.connections == large.connections {
                ""
            } else {
                " [connections differ: not comparable]"
            };
            let per = (large.instructions as f64 - small.instructions as f64) / n as f64;
            let base = *held.get_or_insert(per);
            let batch = match large.statements {
                0 => String::new(),
                s => format!(
                    ", {:.2} look-ups a statement",
                    large.lookups as f64 / s as f64
                ),
            };
            println!(
                "{t:>3} tasks {way:>5}: {per:>8.0} instructions ({:+.0} over held connections, {:.2}x{batch}){unequal}",
                per - base,
                per / base
            );
        }
    }
    scratch.drop().await;
}
