//! `make bench`: the library's hot paths measured side by side with PostgreSQL's own tools, in the same
//! run, on the same database. A benchmark, not a test: it prints numbers and ratios and asserts nothing.
//!
//! 1. Loads 100 000 users (90 % with a Clerk identity) into a scratch database `livermore_bench`.
//! 2. Identity look-up: `find_by_identity` from 1, 4 and 16 concurrent tasks, against `pgbench -M
//!    prepared` running the same SELECT with as many clients.
//! 3. Sign-in upsert: `sign_in` of returning users, against pgbench running the same INSERT … ON
//!    CONFLICT … DO UPDATE.
//! 4. Backfill: `clerk::apply_batch` of 100 000 new Clerk users into `users`, against `psql \copy` of the
//!    same rows into a table of the same shape (`LIKE users INCLUDING ALL`) holding the same 100 000
//!    users beforehand.
//!
//! Environment: DATABASE_URL (the server; make sets it to the local cluster), BENCH_SECONDS (per
//! measurement, default 5), BENCH_ONLY (`lookup`, `upsert` or `backfill`: that part alone), BENCH_BATCH (backfill batch size, default `clerk::DEFAULT_BATCH_SIZE`).
// The harness sets up databases and tables at run time (clippy.toml forbids that in the crate).
#![allow(clippy::disallowed_methods)]
use std::io::Write;
use std::process::Command;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use livermore_db::clerk::{ClerkUser, apply_batch};
use livermore_db::{Identity, Profile, find_by_identity, sign_in};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Executor, PgPool};

const USERS: u32 = 100_000;
const WITH_IDENTITY: u32 = 90_000;
const CLIENTS: [u32; 3] = [1, 4, 16];
const DATABASE: &str = "livermore_bench";

/// The server's password, for psql and pgbench (through PGPASSWORD).
static PASSWORD: std::sync::OnceLock<String> = std::sync::OnceLock::new();

const LOOKUP_SQL: &str = r#"\set n random(1, 90000)
SELECT id, username, email, is_active, created_at, updated_at, identity_provider, identity_sub,
       display_name, identity_picture_url, role, last_login_at, identity_updated_at
FROM users WHERE identity_provider = 'clerk' AND identity_sub = 'user_bench_' || :n;
"#;

const UPSERT_SQL: &str = r#"\set n random(1, 90000)
INSERT INTO users (username, email, identity_provider, identity_sub, display_name, identity_picture_url)
VALUES ('bench' || :n, 'bench' || :n || '@example.com', 'clerk', 'user_bench_' || :n, 'Bench User ' || :n, NULL)
ON CONFLICT (identity_provider, identity_sub) WHERE identity_provider IS NOT NULL
DO UPDATE SET email = EXCLUDED.email, display_name = EXCLUDED.display_name,
              identity_picture_url = EXCLUDED.identity_picture_url, updated_at = now() AT TIME ZONE 'UTC'
RETURNING id, username, email, is_active, created_at, updated_at, identity_provider, identity_sub,
          display_name, identity_picture_url, role, last_login_at, identity_updated_at, (xmax = 0) AS created;
"#;

struct Row {
    what: String,
    library: f64,
    tool: f64,
    unit: &'static str,
    tool_name: &'static str,
    target: f64,
}

/// A small, fast, seedable generator for picking users.
struct XorShift(u64);
impl XorShift {
    fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % u64::from(n)) as u32
    }
}

fn pg_tool(name: &str) -> String {
    let mut dirs: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin").join(name))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| name.to_owned())
}

/// Host, port and user for psql and pgbench, and the database as the last, positional argument: in
/// pgbench `-d` is `--debug`, not the database. The password goes through PGPASSWORD ([`password`]),
/// never the command line.
fn conn_args(o: &PgConnectOptions) -> Vec<String> {
    vec![
        "-h".into(),
        o.get_host().into(),
        "-p".into(),
        o.get_port().to_string(),
        "-U".into(),
        o.get_username().into(),
        DATABASE.into(),
    ]
}

/// The password in a `postgres://user:password@…` URL, percent-decoded; empty when there is none.
fn password(url: &str) -> String {
    let userinfo = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?']).next())
        .and_then(|authority| authority.rsplit_once('@'))
        .map_or("", |(userinfo, _)| userinfo);
    let raw = userinfo.split_once(':').map_or("", |(_, p)| p);
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%')
            .then(|| raw.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs pgbench with a script; returns transactions per second.
fn pgbench(o: &PgConnectOptions, script: &str, clients: u32, seconds: u64) -> f64 {
    let path = std::env::temp_dir().join(format!("livermore-bench-{}.sql", std::process::id()));
    std::fs::write(&path, script).expect("write the pgbench script");
    let out = Command::new(pg_tool("pgbench"))
        .args(["-n", "-M", "prepared"])
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ])
        .args(["-T", &seconds.to_string(), "-f"])
        .arg(&path)
        .args(conn_args(o))
        .env("PGPASSWORD", PASSWORD.get().map_or("", String::as_str))
        .output()
        .expect("run pgbench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("pgbench printed tps")
}

/// Runs `op` from `clients` tasks for `seconds`; returns operations per second.
async fn library<F, Fut>(clients: u32, seconds: u64, op: F) -> f64
where
    F: Fn(u32) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (op, done) = (op.clone(), done.clone());
            tokio::spawn(async move {
                let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ ((u64::from(c) + 1) * 0x2545_F491));
                while Instant::now() < deadline {
                    op(rng.below(WITH_IDENTITY) + 1).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a benchmark task");
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn pool(o: &PgConnectOptions, clients: u32) -> PgPool {
    livermore_db::pool_options()
        .max_connections(clients)
        .min_connections(clients)
        .connect_with(o.clone())
        .await
        .expect("connect")
}

fn clerk_user(n: u32) -> ClerkUser {
    serde_json::from_value(serde_json::json!({
        "id": format!("user_fill_{n}"),
        "email_addresses": [{"id": "e", "email_address": format!("fill{n}@example.com")}],
        "primary_email_address_id": "e",
        "first_name": "Fill", "last_name": format!("User {n}"),
        "image_url": format!("https://img.example.com/{n}.png"),
        "last_sign_in_at": 1_700_000_000_000_i64,
        "updated_at": 1_700_000_000_000_i64 + i64::from(n),
    }))
    .expect("a Clerk user")
}

#[tokio::main]
async fn main() {
    // `cargo test --all-targets` builds and runs bench targets too, without `--bench`: then only say so.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "benches/iam.rs is a benchmark: run it with `make bench` (cargo bench --bench iam)"
        );
        return;
    }
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL (make bench sets it)");
    PASSWORD.get_or_init(|| password(&url));
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let batch: usize = std::env::var("BENCH_BATCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(livermore_db::clerk::DEFAULT_BATCH_SIZE);
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let runs = |part: &str| only.is_empty() || only == part;
    let server = PgConnectOptions::from_str(&url).expect("DATABASE_URL parses");
    let o = server.clone().database(DATABASE);

    // A scratch database, migrated, with 100 000 users.
    let mut admin = server
        .clone()
        .database("postgres")
        .connect()
        .await
        .expect("connect");
    admin
        .execute("DROP DATABASE IF EXISTS livermore_bench WITH (FORCE)")
        .await
        .unwrap();
    admin
        .execute("CREATE DATABASE livermore_bench")
        .await
        .unwrap();
    let setup = pool(&o, 2).await;
    livermore_db::MIGRATOR.run(&setup).await.expect("migrate");
    let loaded = Instant::now();
    setup
        .execute(
            "INSERT INTO users (username, email, identity_provider, identity_sub, display_name)
             SELECT 'bench' || n, 'bench' || n || '@example.com',
                    CASE WHEN n <= 90000 THEN 'clerk' END,
                    CASE WHEN n <= 90000 THEN 'user_bench_' || n END,
                    'Bench User ' || n
             FROM generate_series(1, 100000) AS n",
        )
        .await
        .unwrap();
    setup.execute("VACUUM ANALYZE users").await.unwrap();
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&setup)
        .await
        .unwrap();
    println!(
        "loaded {USERS} users ({WITH_IDENTITY} with a Clerk identity) in {:.1} s; PostgreSQL {version}; {} cores; {seconds} s per measurement",
        loaded.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let identities: Arc<Vec<Identity>> = Arc::new(
        (1..=WITH_IDENTITY)
            .map(|n| Identity::parse("clerk", &format!("user_bench_{n}")).unwrap())
            .collect(),
    );
    let profiles: Arc<Vec<Profile>> = Arc::new(
        (1..=WITH_IDENTITY)
            .map(|n| {
                let (sub, email, name) = (
                    format!("user_bench_{n}"),
                    format!("bench{n}@example.com"),
                    format!("Bench User {n}"),
                );
                Profile::parse("clerk", &sub, &email, Some(&name), None).unwrap()
            })
            .collect(),
    );

    let mut rows = Vec::new();
    for clients in CLIENTS.into_iter().filter(|_| runs("lookup")) {
        let p = pool(&o, clients).await;
        let ids = identities.clone();
        let lib = library(clients, seconds, move |n| {
            let (p, ids) = (p.clone(), ids.clone());
            async move {
                let found = find_by_identity(&p, &ids[(n - 1) as usize])
                    .await
                    .expect("look-up");
                assert!(found.is_some());
            }
        })
        .await;
        let tool = pgbench(&o, LOOKUP_SQL, clients, seconds);
        rows.push(Row {
            what: format!("identity look-up, {clients:>2} clients"),
            library: lib,
            tool,
            unit: "/s",
            tool_name: "pgbench",
            target: 0.9,
        });
    }
    for clients in CLIENTS.into_iter().filter(|_| runs("upsert")) {
        let p = pool(&o, clients).await;
        let profiles = profiles.clone();
        let lib = library(clients, seconds, move |n| {
            let (p, profiles) = (p.clone(), profiles.clone());
            async move {
                let done = sign_in(&p, &profiles[(n - 1) as usize])
                    .await
                    .expect("sign-in");
                assert!(!done.created);
            }
        })
        .await;
        let tool = pgbench(&o, UPSERT_SQL, clients, seconds);
        rows.push(Row {
            what: format!("sign-in upsert,   {clients:>2} clients"),
            library: lib,
            tool,
            unit: "/s",
            tool_name: "pgbench",
            target: 0.9,
        });
    }

    if runs("backfill") {
        // Backfill: 100 000 new Clerk users through the library, and the same rows through \copy.
        let users: Vec<(usize, ClerkUser)> =
            (1..=USERS).map(|n| (n as usize, clerk_user(n))).collect();
        // Both start from the same state: the 100 000 users loaded above, in a table of the same shape.
        setup
            .execute("CREATE TABLE users_copy (LIKE users INCLUDING ALL)")
            .await
            .unwrap();
        setup
            .execute("INSERT INTO users_copy SELECT * FROM users")
            .await
            .unwrap();
        setup
            .execute("VACUUM ANALYZE users, users_copy")
            .await
            .unwrap();
        let mut conn = setup.acquire().await.unwrap();
        let started = Instant::now();
        let mut created = 0;
        for chunk in users.chunks(batch) {
            created += apply_batch(&mut *conn, chunk)
                .await
                .expect("backfill")
                .created;
        }
        let lib = f64::from(USERS) / started.elapsed().as_secs_f64();
        assert_eq!(created, USERS as usize);

        let csv = std::env::temp_dir().join(format!("livermore-bench-{}.csv", std::process::id()));
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&csv).unwrap());
            for (_, u) in &users {
                let p = u.to_profile().unwrap();
                let email = p.email.expect("bench users have an address");
                writeln!(
                    f,
                    "{},{},clerk,{},{},{},user,{},{},true",
                    livermore_db::username_from_email(&email),
                    email,
                    p.subject,
                    p.display_name.as_ref().map(|d| d.as_str()).unwrap_or(""),
                    p.picture_url.as_ref().map(|u| u.as_str()).unwrap_or(""),
                    p.last_sign_in_at.unwrap().naive_utc(),
                    p.updated_at.naive_utc(),
                )
                .unwrap();
            }
        }
        let copy = format!(
            "\\copy users_copy (username, email, identity_provider, identity_sub, display_name, identity_picture_url, role, last_login_at, identity_updated_at, is_active) FROM '{}' WITH (FORMAT csv)",
            csv.display()
        );
        let started = Instant::now();
        let out = Command::new(pg_tool("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", &copy])
            .args(conn_args(&o))
            .env("PGPASSWORD", PASSWORD.get().map_or("", String::as_str))
            .output()
            .expect("run psql");
        let tool = f64::from(USERS) / started.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "psql \\copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_file(&csv);
        rows.push(Row {
            what: format!("backfill 100k users (batch {batch})"),
            library: lib,
            tool,
            unit: " rows/s",
            tool_name: "psql \\copy",
            target: 0.5,
        });
    }

    println!();
    println!(
        "{:<36} {:>16} {:>26} {:>7} {:>8}",
        "benchmark", "library", "PostgreSQL's tool", "ratio", "target"
    );
    for r in &rows {
        let ratio = r.library / r.tool;
        println!(
            "{:<36} {:>16} {:>26} {:>6.2}x {:>6}{}",
            r.what,
            format!("{:.0}{}", r.library, r.unit),
            format!("{:.0}{} ({})", r.tool, r.unit, r.tool_name),
            ratio,
            format!(">={}x", r.target),
            if ratio >= r.target {
                ""
            } else {
                "  BELOW TARGET"
            }
        );
    }
    setup.close().await;
    admin
        .execute("DROP DATABASE IF EXISTS livermore_bench WITH (FORCE)")
        .await
        .unwrap();
}
