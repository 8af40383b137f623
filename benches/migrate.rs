//! `make bench-migrate`: the pending migrations applied by the operator command (`livermore-db
//! migrate`, as `make migrate` runs it) to a `users` of N rows while pgbench reads and writes that
//! table at a fixed rate. A measurement, not a test: it prints a table and asserts nothing.
//!
//! For each path a database takes to the migrations, and each migration on it:
//! - its duration, as the command prints it;
//! - the longest a pgbench transaction waited while it ran: from pgbench's per-transaction log (`-l`),
//!   the transaction's time, which under `-R` (a fixed rate) runs from its scheduled start (a
//!   transaction that could not start on time waited too), over the transactions scheduled to start
//!   while the migration ran (a backlog a stall leaves counts for that stall);
//! - the strongest lock on `users` seen held by the migrating session (polled every 5 ms; a lock
//!   held for less than a poll can be missed), beside the one `migrate` declares
//!   (`src/bin/livermore-db/locks.rs`, checked by `tests/it/locks.rs`);
//! - per run, the step where the longest wait fell, what pgbench's active sessions were sampled
//!   waiting on meanwhile (`pg_stat_activity` wait events, polled with the locks: a lock, or I/O such
//!   as a commit's `IO:WALSync`), and the buffers checkpoints wrote during that step
//!   (`pg_stat_bgwriter`).
//!
//! The paths: `created` (0001 by this crate, the table then filled, 0002-0009 pending), `with-iam`
//! (an Atlas-era table with the IAM columns: 0001-0002 adopted, 0003-0009 applied) and `pre-iam`
//! (an Atlas-era table without them: 0001 adopted, 0002-0009 applied). Rows are realistic: 90 % with
//! a Clerk identity where the columns exist, 2 % deactivated, long names and picture URLs.
//!
//! pgbench runs a read (`SELECT id, username, email, … WHERE email`, through the e-mail's unique
//! index, as a sign-in's look-up by address) and a write (`UPDATE … SET updated_at … WHERE id`), 4 to 1, at `BENCH_MIGRATE_RATE` transactions a second (default 200) on
//! 4 connections, as prepared statements. Not the crate's own look-up and sign-in statements: they
//! name columns the pending migrations add, so they cannot run before them. The read takes the lock
//! the crate's look-up takes (ACCESS SHARE), the write the sign-in upsert's (ROW EXCLUSIVE and a row
//! lock): the same conflicts with a migration. The read names its columns, as the crate's
//! statements do: a prepared `SELECT *` fails once a migration adds a column ("cached plan must not
//! change result type").
//!
//! Every path runs `BENCH_MIGRATE_RUNS` times (default 5), interleaved (each path once, then each
//! again), each run on a database filled anew; each figure is reported as its median over the runs
//! with its spread (min-max), and a step is flagged when any run waited over 1 s.
//!
//! Environment: DATABASE_URL (the server; make sets it to the local cluster), BENCH_MIGRATE_ROWS
//! (default 1 000 000), BENCH_MIGRATE_RATE, BENCH_MIGRATE_PATHS (comma-separated, default all three),
//! BENCH_MIGRATE_RUNS, BENCH_MIGRATE_SETTLE (`vacuum`: VACUUM ANALYZE and CHECKPOINT after the load;
//! by default the command starts right after it, hint bits unset and the load's checkpoint under
//! way, as a table just bulk-loaded or restored is met), BENCH_MIGRATE_READER_SECS (a report's
//! transaction, `BEGIN; SELECT count(*) FROM users`, held open that many seconds from just before
//! the command starts: the migrations' locks wait behind it, in short attempts, and the reads and
//! writes must not queue behind those waits; issue 31's "20 s reader").
#![allow(clippy::disallowed_methods)]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Executor, PgConnection};
use support::{Scratch, conn_args, password, pg_tool};

#[path = "../src/bin/livermore-db/locks.rs"]
#[allow(dead_code)]
mod declared;

use declared::Mode;

const DATABASE: &str = "livermore_bench_migrate";

/// The longest wait the issue allows a sign-in or look-up during a migration.
const GOAL: Duration = Duration::from_secs(1);

/// Microseconds since the epoch (pgbench's log uses the same clock).
fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// One pgbench transaction: when its wait began (its scheduled start) and ended, and its script
/// (0 read, 1 write).
struct Transaction {
    from_us: i64,
    to_us: i64,
    script: u32,
}

/// One poll of the server: the wait events of pgbench's active sessions (`type:event`), and the
/// buffers checkpoints have written so far (`pg_stat_bgwriter.buffers_checkpoint`).
struct Sample {
    at_us: i64,
    waits: Vec<String>,
    checkpoint_buffers: i64,
}

/// One migration as the command applied it.
struct Applied {
    label: String,
    version: i64,
    from_us: i64,
    to_us: i64,
}

/// What a path measured.
struct Measured {
    path: &'static str,
    rows: u64,
    applied: Vec<Applied>,
    transactions: Vec<Transaction>,
    /// (when, strongest lock on users held by the migrating session).
    locks: Vec<(i64, Mode)>,
    /// What pgbench's sessions waited on, and the checkpointer's progress, polled with the locks.
    samples: Vec<Sample>,
    /// The longest wait of the transactions scheduled in the lead-in, before the command started
    /// (the floor on this machine).
    floor: Duration,
    /// When the command started: from then to the first migration it connects, reads what is
    /// applied and, on a database it adopts, tries every pending migration in a transaction it rolls
    /// back (the adoption check).
    launched_us: i64,
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "benches/migrate.rs is a benchmark: run it with `make bench-migrate` (cargo bench --bench migrate)"
        );
        return;
    }
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL (make bench-migrate sets it)");
    let server = PgConnectOptions::from_str(&url).expect("DATABASE_URL parses");
    let rows: u64 = env_num("BENCH_MIGRATE_ROWS", 1_000_000);
    let rate: u64 = env_num("BENCH_MIGRATE_RATE", 200);
    let paths = std::env::var("BENCH_MIGRATE_PATHS")
        .unwrap_or_else(|_| "created,with-iam,pre-iam".to_owned());
    let runs = env_num("BENCH_MIGRATE_RUNS", 5);
    let paths: Vec<&'static str> = paths
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|path| match path {
            "created" => "created",
            "with-iam" => "with-iam",
            "pre-iam" => "pre-iam",
            other => {
                panic!("BENCH_MIGRATE_PATHS: unknown path {other:?} (created, with-iam, pre-iam)")
            }
        })
        .collect();
    idle_slots_refused(&server).await;
    let secret = password(&url);
    // Interleaved: every path once, then every path again.
    let mut results = Vec::new();
    for run in 1..=runs {
        for &path in &paths {
            eprintln!("run {run} of {runs}, {path}");
            results.push(measure(&server, &secret, path, rows, rate).await);
        }
    }
    report(&results, &paths);
}

/// Stops before loading anything while a replication slot is inactive (the tests' standby stopped,
/// say): the server keeps every WAL segment for it, and the loads write gigabytes (a run at
/// 10 000 000 rows filled the disk that way).
async fn idle_slots_refused(server: &PgConnectOptions) {
    let mut conn = server.clone().database("postgres").connect().await.unwrap();
    let idle: Vec<String> =
        sqlx::query_scalar("SELECT slot_name::text FROM pg_replication_slots WHERE NOT active")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert!(
        idle.is_empty(),
        "inactive replication slots {idle:?} would keep all the WAL the loads write: start their \
         standby (scripts/standby.sh up) or drop them, then run again"
    );
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// A fresh database in the path's starting shape, filled with `rows` users, and a connection to it.
async fn prepare(server: &PgConnectOptions, path: &str, rows: u64) -> (Scratch, PgConnection) {
    let scratch = Scratch::create(server, DATABASE).await;
    let mut conn = server.clone().database(DATABASE).connect().await.unwrap();
    let loaded = Instant::now();
    let with_iam = match path {
        "created" => {
            livermore_db::MIGRATOR
                .run_to(1, &mut conn)
                .await
                .expect("0001");
            false
        }
        "with-iam" => {
            conn.execute(include_str!("../tests/it/fixtures/old_schema_with_iam.sql"))
                .await
                .unwrap();
            true
        }
        _ => {
            conn.execute(include_str!("../tests/it/fixtures/old_schema_pre_iam.sql"))
                .await
                .unwrap();
            false
        }
    };
    let fill = if with_iam {
        "INSERT INTO users (username, email, is_active, created_at, updated_at, identity_provider,
                            identity_sub, display_name, identity_picture_url, role, last_login_at)
         SELECT 'user' || n, 'user' || n || '@example.com', n % 50 <> 0,
                now() - n * interval '1 second', now() - (n % 1000) * interval '1 minute',
                CASE WHEN n % 10 <> 0 THEN 'clerk' END,
                CASE WHEN n % 10 <> 0 THEN 'user_' || md5(n::text) END,
                left('Display Name ' || n || ' ' || repeat(md5(n::text), 3), 100),
                'https://img.clerk.com/' || md5(n::text) || '/' || repeat(md5((n + 1)::text), 2) || '.png',
                CASE WHEN n % 100 = 0 THEN 'admin' WHEN n % 10 = 1 THEN 'subscriber_pro'
                     WHEN n % 10 = 2 THEN 'subscriber_basic' ELSE 'user' END,
                now() - (n % 5000) * interval '1 hour'
         FROM generate_series(1, $1) AS n"
    } else {
        "INSERT INTO users (username, email, is_active, created_at, updated_at)
         SELECT 'user' || n, 'user' || n || '@example.com', n % 50 <> 0,
                now() - n * interval '1 second', now() - (n % 1000) * interval '1 minute'
         FROM generate_series(1, $1) AS n"
    };
    sqlx::query(fill)
        .bind(i64::try_from(rows).unwrap_or(i64::MAX))
        .execute(&mut conn)
        .await
        .expect("fill users");
    // By default the command starts right after the load, as on a table just restored or bulk
    // loaded: its rows' hint bits not yet set (the first reads of every page write it again), and a
    // checkpoint of the load's WAL under way. BENCH_MIGRATE_SETTLE=vacuum settles the table first
    // (VACUUM ANALYZE, CHECKPOINT), as the figures before 2026-12-05 did.
    let settle = std::env::var("BENCH_MIGRATE_SETTLE").unwrap_or_default() == "vacuum";
    if settle {
        conn.execute("VACUUM ANALYZE users").await.unwrap();
        conn.execute("CHECKPOINT").await.unwrap();
    }
    eprintln!(
        "{path}: {rows} users loaded in {:.0} s{}",
        loaded.elapsed().as_secs_f64(),
        if settle {
            ", vacuumed and checkpointed"
        } else {
            ""
        }
    );
    quiet(&mut conn).await;
    (scratch, conn)
}

/// Waits until every standby streaming from this server (the tests' own, `scripts/standby.sh`) has
/// replayed the load: its replay competes for the same cores, and measured under it a lead-in with no
/// migration at all showed waits of 1 to 2.5 s.
async fn quiet(conn: &mut PgConnection) {
    let started = Instant::now();
    loop {
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_replication
             WHERE replay_lsn IS NULL OR replay_lsn < pg_current_wal_flush_lsn()",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        if behind == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "a standby did not catch up in 15 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if started.elapsed() > Duration::from_secs(1) {
        eprintln!(
            "  waited {:.0} s for the standby to replay the load",
            started.elapsed().as_secs_f64()
        );
    }
}

/// pgbench at a fixed rate, one 5-second run after another (each with its own per-transaction log)
/// until `stop`: a run waits for its blocked transactions before it ends, so none is lost.
fn load(
    o: &PgConnectOptions,
    secret: &str,
    rows: u64,
    rate: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Transaction>> {
    let dir = std::env::temp_dir().join(format!("livermore-bench-migrate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a folder for pgbench");
    std::fs::write(
        dir.join("read.sql"),
        "\\set id random(1, :rows)\nSELECT id, username, email, is_active, updated_at FROM users WHERE email = 'user' || :id || '@example.com';\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("write.sql"),
        "\\set id random(1, :rows)\nUPDATE users SET updated_at = now() WHERE id = :id;\n",
    )
    .unwrap();
    let args = conn_args(o, DATABASE);
    let secret = secret.to_owned();
    std::thread::spawn(move || {
        let mut run = 0;
        while !stop.load(Ordering::Acquire) {
            run += 1;
            let out = Command::new(pg_tool("pgbench"))
                .args(["-n", "-M", "prepared", "-c", "4", "-j", "2", "-T", "5"])
                .args(["-R", &rate.to_string(), "-D", &format!("rows={rows}")])
                .arg("-f")
                .arg(format!("{}@4", dir.join("read.sql").display()))
                .arg("-f")
                .arg(format!("{}@1", dir.join("write.sql").display()))
                .arg("-l")
                .arg(format!(
                    "--log-prefix={}",
                    dir.join(format!("run{run}")).display()
                ))
                .args(&args)
                .env("PGPASSWORD", &secret)
                .output()
                .expect("run pgbench");
            assert!(
                out.status.success(),
                "pgbench failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut transactions = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("pgbench's logs").flatten() {
            if !entry.file_name().to_string_lossy().starts_with("run") {
                continue;
            }
            let log = std::fs::read_to_string(entry.path()).unwrap_or_default();
            // client_id transaction_no time script_no time_epoch time_us schedule_lag
            for line in log.lines() {
                let f: Vec<i64> = line
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                if f.len() < 7 {
                    continue;
                }
                // Under -R, `time` runs from the scheduled start: it holds the schedule lag.
                let to_us = f[4] * 1_000_000 + f[5];
                transactions.push(Transaction {
                    from_us: to_us - f[2],
                    to_us,
                    script: u32::try_from(f[3]).unwrap_or(0),
                });
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        transactions
    })
}

/// Polls, every 5 ms, until `stop`: the strongest lock on `users` held by a session other than
/// pgbench's and this one; what pgbench's active sessions wait on; the checkpointer's buffers.
async fn watch(o: PgConnectOptions, stop: Arc<AtomicBool>) -> (Vec<(i64, Mode)>, Vec<Sample>) {
    let mut conn = o.database(DATABASE).connect().await.expect("connect");
    let mut seen = Vec::new();
    let mut samples = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let modes: Vec<String> = sqlx::query_scalar(
            "SELECT l.mode FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'relation' AND l.granted AND l.relation = to_regclass('users')
               AND a.pid <> pg_backend_pid() AND a.application_name NOT LIKE 'pgbench%'",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default();
        let at_us = now_us();
        if let Some(mode) = modes.iter().filter_map(|m| Mode::from_pg(m)).max() {
            seen.push((at_us, mode));
        }
        let polled: Result<(Vec<String>, i64), _> = sqlx::query_as(
            "SELECT ARRAY(SELECT wait_event_type || ':' || wait_event FROM pg_stat_activity
                          WHERE application_name LIKE 'pgbench%' AND state = 'active'
                            AND wait_event IS NOT NULL),
                    (SELECT buffers_checkpoint FROM pg_stat_bgwriter)",
        )
        .fetch_one(&mut conn)
        .await;
        if let Ok((waits, checkpoint_buffers)) = polled {
            samples.push(Sample {
                at_us,
                waits,
                checkpoint_buffers,
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (seen, samples)
}

/// One path: prepare, start the load, apply the pending migrations with the operator command, stop.
async fn measure(
    server: &PgConnectOptions,
    secret: &str,
    path: &'static str,
    rows: u64,
    rate: u64,
) -> Measured {
    let (scratch, setup) = prepare(server, path, rows).await;
    let stop = Arc::new(AtomicBool::new(false));
    let pgbench = load(server, secret, rows, rate, stop.clone());
    let watcher = tokio::spawn(watch(server.clone(), stop.clone()));
    // A lead-in under load alone: the floor of the waits on this machine.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // A report holding users' ACCESS SHARE lock: every migration that needs more waits for it.
    let reader_secs = env_num("BENCH_MIGRATE_READER_SECS", 0);
    let reader = if reader_secs > 0 {
        let mut report = server
            .clone()
            .database(DATABASE)
            .application_name("long-report")
            .connect()
            .await
            .unwrap();
        report.execute("BEGIN").await.unwrap();
        report.execute("SELECT count(*) FROM users").await.unwrap();
        eprintln!("  a report holds users for {reader_secs} s");
        Some(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(reader_secs)).await;
            report.execute("COMMIT").await.unwrap();
        }))
    } else {
        None
    };

    // The server's URL with the benchmark's database (the password included: sqlx keeps it).
    let database_url = server.clone().database(DATABASE).to_url_lossy().to_string();
    let launched_us = now_us();
    let mut child = Command::new(env!("CARGO_BIN_EXE_livermore-db"))
        .args(["--env", "local", "migrate"])
        .env("LIVERMORE_DATABASE_URL", &database_url)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run livermore-db migrate");
    let stdout = child.stdout.take().expect("its output");
    let lines = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .map(|line| (now_us(), line))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let status = child.wait().expect("livermore-db migrate");
    assert!(status.success(), "livermore-db migrate failed on {path}");
    if let Some(reader) = reader {
        reader.await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Release);
    let transactions = pgbench.join().expect("pgbench's thread");
    let (locks, samples) = watcher.await.unwrap();
    drop(setup);
    scratch.drop().await;

    // "applied 0002 users iam (1234 ms)", printed as each migration commits.
    let applied: Vec<Applied> = lines
        .iter()
        .filter_map(|(at, line)| {
            let rest = line.strip_prefix("applied ")?;
            let (label, ms) = rest.rsplit_once(" (")?;
            let ms: i64 = ms.strip_suffix(" ms)")?.parse().ok()?;
            let version: i64 = label.get(..4)?.parse().ok()?;
            Some(Applied {
                label: label.to_owned(),
                version,
                from_us: at - ms * 1000,
                to_us: *at,
            })
        })
        .collect();
    let floor = longest(&transactions, None, i64::MIN, launched_us);
    if std::env::var_os("BENCH_DEBUG").is_some() {
        let start = transactions.iter().map(|t| t.from_us).min().unwrap_or(0);
        let mut slow: Vec<&Transaction> = transactions.iter().collect();
        slow.sort_by_key(|t| std::cmp::Reverse(t.to_us - t.from_us));
        for t in slow.iter().take(8) {
            eprintln!(
                "  slow: scheduled at +{:.3} s, waited {:.3} s, script {} (command at +{:.3} s)",
                (t.from_us - start) as f64 / 1e6,
                (t.to_us - t.from_us) as f64 / 1e6,
                t.script,
                (launched_us - start) as f64 / 1e6
            );
        }
    }
    Measured {
        path,
        rows,
        applied,
        transactions,
        locks,
        samples,
        floor,
        launched_us,
    }
}

/// The longest wait of the transactions (of `script`, or all) scheduled to start in `[from, to)`:
/// a wait belongs to what ran when the transaction should have started, so a backlog a stall left
/// behind counts for that stall.
fn longest(
    transactions: &[Transaction],
    script: Option<u32>,
    from_us: i64,
    to_us: i64,
) -> Duration {
    transactions
        .iter()
        .filter(|t| {
            script.is_none_or(|s| t.script == s) && t.from_us >= from_us && t.from_us < to_us
        })
        .map(|t| t.to_us - t.from_us)
        .max()
        .map_or(Duration::ZERO, |us| {
            Duration::from_micros(u64::try_from(us).unwrap_or(0))
        })
}

fn mode_name(mode: Option<Mode>) -> &'static str {
    match mode {
        None => "-",
        Some(Mode::AccessShare) => "ACCESS SHARE",
        Some(Mode::RowExclusive) => "ROW EXCLUSIVE",
        Some(Mode::ShareUpdateExclusive) => "SHARE UPDATE EXCL.",
        Some(Mode::Share) => "SHARE",
        Some(Mode::AccessExclusive) => "ACCESS EXCLUSIVE",
    }
}

/// One row of a run: a step (the command's start-up, or a migration) and what it measured.
struct Step {
    label: String,
    duration: Duration,
    read: Duration,
    write: Duration,
    seen: Option<Mode>,
    declared: Option<Mode>,
    /// pgbench's wait events sampled during the step, most frequent first.
    waits: Vec<(String, usize)>,
    /// Buffers checkpoints wrote during the step.
    checkpoint_buffers: i64,
}

/// The steps of one run: the command's start-up (to its first migration), then each migration.
fn steps(m: &Measured) -> Vec<Step> {
    let micros = |us: i64| Duration::from_micros(u64::try_from(us).unwrap_or(0));
    let seen = |from_us: i64, to_us: i64| {
        m.locks
            .iter()
            .filter(|(at, _)| *at >= from_us && *at <= to_us)
            .map(|(_, mode)| *mode)
            .max()
    };
    let waits = |from_us: i64, to_us: i64| {
        let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
        for s in m
            .samples
            .iter()
            .filter(|s| s.at_us >= from_us && s.at_us <= to_us)
        {
            for w in &s.waits {
                *counts.entry(w.clone()).or_default() += 1;
            }
        }
        let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
        counts.sort_by_key(|c| std::cmp::Reverse(c.1));
        counts
    };
    let checkpointed = |from_us: i64, to_us: i64| {
        let within: Vec<i64> = m
            .samples
            .iter()
            .filter(|s| s.at_us >= from_us && s.at_us <= to_us)
            .map(|s| s.checkpoint_buffers)
            .collect();
        within.last().zip(within.first()).map_or(0, |(l, f)| l - f)
    };
    let first = m.applied.first().map_or(m.launched_us, |a| a.from_us);
    let mut out = vec![Step {
        label: "(start-up, adoption check)".to_owned(),
        duration: micros(first - m.launched_us),
        read: longest(&m.transactions, Some(0), m.launched_us, first),
        write: longest(&m.transactions, Some(1), m.launched_us, first),
        seen: seen(m.launched_us, first - 1),
        declared: None,
        waits: waits(m.launched_us, first - 1),
        checkpoint_buffers: checkpointed(m.launched_us, first - 1),
    }];
    for a in &m.applied {
        out.push(Step {
            label: a.label.clone(),
            duration: micros(a.to_us - a.from_us),
            read: longest(&m.transactions, Some(0), a.from_us, a.to_us),
            write: longest(&m.transactions, Some(1), a.from_us, a.to_us),
            seen: seen(a.from_us, a.to_us),
            declared: declared::of(a.version).and_then(|locks| {
                locks
                    .iter()
                    .filter(|l| l.table == "users")
                    .map(|l| l.mode)
                    .max()
            }),
            waits: waits(a.from_us, a.to_us),
            checkpoint_buffers: checkpointed(a.from_us, a.to_us),
        });
    }
    out
}

/// `median (min-max)` of one figure over the runs.
fn spread(values: &[Duration]) -> String {
    let mut v: Vec<f64> = values.iter().map(Duration::as_secs_f64).collect();
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    format!("{median:.2} ({:.2}-{:.2})", v[0], v[v.len() - 1])
}

/// Per path and step, each figure's median over the runs with its spread (min-max); the strongest
/// lock seen in any run; flagged when any run waited over the goal.
fn report(results: &[Measured], paths: &[&'static str]) {
    println!();
    println!(
        "seconds, median (min-max) over {} interleaved runs",
        results.len() / paths.len().max(1)
    );
    println!(
        "{:<9} {:>10} {:<26} {:>18} {:>18} {:>18} {:<18} {:<18}",
        "path",
        "rows",
        "step",
        "duration",
        "longest read",
        "longest write",
        "lock seen",
        "lock declared"
    );
    for &path in paths {
        let runs: Vec<&Measured> = results.iter().filter(|m| m.path == path).collect();
        let Some(first) = runs.first() else { continue };
        let per_run: Vec<Vec<Step>> = runs.iter().map(|m| steps(m)).collect();
        for (i, step) in per_run[0].iter().enumerate() {
            let all: Vec<&Step> = per_run.iter().filter_map(|r| r.get(i)).collect();
            let figure = |f: fn(&Step) -> Duration| all.iter().map(|s| f(s)).collect::<Vec<_>>();
            let over = all.iter().any(|s| s.read.max(s.write) > GOAL);
            println!(
                "{:<9} {:>10} {:<26} {:>18} {:>18} {:>18} {:<18} {:<18}{}",
                path,
                first.rows,
                step.label,
                spread(&figure(|s| s.duration)),
                spread(&figure(|s| s.read)),
                spread(&figure(|s| s.write)),
                mode_name(all.iter().filter_map(|s| s.seen).max()),
                mode_name(step.declared),
                if over { "  OVER 1 s" } else { "" }
            );
        }
        // Where each run's longest wait fell, and what pgbench waited on then: a lock, or I/O
        // (the WAL flush of a commit, a data file read) while a checkpoint was writing.
        for (k, steps) in per_run.iter().enumerate() {
            let Some(worst) = steps.iter().max_by_key(|s| s.read.max(s.write)) else {
                continue;
            };
            let waits = worst
                .waits
                .iter()
                .take(4)
                .map(|(w, n)| format!("{w} x{n}"))
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "{:<9} {:>10}   run {}: longest wait {:.2} s in {}; pgbench's sessions sampled waiting on: {}; checkpoint buffers written meanwhile: {}",
                path,
                first.rows,
                k + 1,
                worst.read.max(worst.write).as_secs_f64(),
                worst.label,
                if waits.is_empty() {
                    "nothing".to_owned()
                } else {
                    waits
                },
                worst.checkpoint_buffers
            );
        }
        let floors: Vec<Duration> = runs.iter().map(|m| m.floor).collect();
        let transactions: usize = runs.iter().map(|m| m.transactions.len()).sum();
        println!(
            "{:<9} {:>10} {:<26} longest wait in the 3 s before the command (the floor): {}; {transactions} transactions",
            path,
            first.rows,
            "",
            spread(&floors)
        );
    }
}
