//! The webhook service as operators run it: the `livermore-clerk-webhooks` program started as a
//! process, talked to over real HTTP (and raw TCP where a client would hide the timing), its log
//! lines read from its stderr.
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use livermore_db::clerk::WebhookVerifier;
use livermore_db::{Identity, Role, find_by_identity, set_role};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

use crate::support::clerk::{T0, clerk_user, created_body, event_body};
use crate::support::webhook::{SECRET, now, signed};

mod load;
mod operation;

const BIN: &str = env!("CARGO_BIN_EXE_livermore-clerk-webhooks");

/// The URL of the test's own database (the `#[sqlx::test]` one), from `DATABASE_URL`.
fn url_of(pool: &PgPool) -> reqwest::Url {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL: `make test` sets it");
    let mut url = reqwest::Url::parse(&base).expect("DATABASE_URL is a URL");
    let database = pool.connect_options().get_database().unwrap().to_owned();
    url.set_path(&database);
    url
}

/// The program, running, with every line it wrote to stderr.
struct Program {
    child: Child,
    http: Http,
    logs: Arc<Mutex<Vec<String>>>,
}

/// Where the program answers, and a client: cheap to clone into tasks.
#[derive(Clone)]
struct Http {
    base: String,
    client: reqwest::Client,
}

impl std::ops::Deref for Program {
    type Target = Http;
    fn deref(&self) -> &Http {
        &self.http
    }
}

impl Program {
    /// Starts it on 127.0.0.1:0 with `database_url` and `args`; waits for its "listening on" line.
    async fn start(database_url: &str, args: &[&str]) -> Program {
        let mut child = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_clear()
            .env("CLERK_WEBHOOK_SECRET", SECRET)
            .env("DATABASE_URL", database_url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the program starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let stderr = child.stderr.take().unwrap();
        tokio::spawn({
            let logs = logs.clone();
            async move {
                let mut lines = BufReader::new(stderr).lines();
                let mut addr_tx = Some(addr_tx);
                while let Ok(Some(line)) = lines.next_line().await {
                    if let (Some(addr), Some(tx)) =
                        (line.split("listening on ").nth(1), addr_tx.take())
                    {
                        let _ = tx.send(addr.trim().to_owned());
                    }
                    logs.lock().unwrap().push(line);
                }
            }
        });
        let addr = tokio::time::timeout(Duration::from_secs(20), addr_rx)
            .await
            .expect("the program says where it listens within 20 s")
            .expect("the program says where it listens");
        Program {
            child,
            http: Http {
                base: format!("http://{addr}"),
                client: reqwest::Client::new(),
            },
            logs,
        }
    }

    fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    async fn exit_code(mut self, within: Duration) -> Option<i32> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .expect("the program exits in time")
            .unwrap()
            .code()
    }
}

impl Http {
    fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("a response");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// Delivers `body` signed now, as Svix does: (status, Retry-After, body).
    async fn deliver(&self, id: &str, body: &str) -> (u16, Option<String>, Value) {
        let t = now();
        let signature = WebhookVerifier::from_list(SECRET)
            .unwrap()
            .sign(id, t, body.as_bytes());
        let response = self
            .client
            .post(format!("{}/webhooks/clerk", self.base))
            .header("content-type", "application/json")
            .header("svix-id", id)
            .header("svix-timestamp", t.to_string())
            .header("svix-signature", signature)
            .body(body.to_owned())
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("a response");
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, retry_after, body)
    }
}

async fn user_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Holds the per-identity lock every writer of `sub` takes, until the transaction ends.
async fn hold_identity(pool: &PgPool, sub: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(1281456210, hashtext('clerk:' || $1))")
        .bind(sub)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

/// Sessions of the test's database waiting for an advisory lock (deliveries inside their apply).
async fn waiting_for_locks(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Waits until `waiting_for_locks` satisfies `done`, for at most `within`; else fails with `what`.
async fn until_locks(pool: &PgPool, within: Duration, what: &str, done: impl Fn(i64) -> bool) {
    let started = Instant::now();
    loop {
        let waiting = waiting_for_locks(pool).await;
        if done(waiting) {
            return;
        }
        assert!(started.elapsed() < within, "{what} ({waiting} waiting)");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `n` deliveries wait for the lock.
async fn until_waiting(pool: &PgPool, n: i64) {
    let what = format!("{n} deliveries do not all wait for the lock after 10 s");
    until_locks(pool, Duration::from_secs(10), &what, |w| w >= n).await;
}

async fn until_no_waiting(pool: &PgPool) {
    let what = "a delivery still waits on the server 2 s after its deadline";
    until_locks(pool, Duration::from_secs(2), what, |w| w == 0).await;
}
