//! Clerk sync against a real PostgreSQL: replays, every delivery order, stale and deleted events, roles,
//! bad records, and bulk backfills.
use livermore_db::clerk::*;
use livermore_db::{Error, Identity, Role, RoleSource, find_by_identity, set_role};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};

use crate::support::clerk::{T0, clerk_user, deleted, event};

mod addresses;
mod batches;
mod events;
mod races;
mod random;
mod roles;

/// The row of a Clerk identity, without what legitimately differs between runs (ids, write times).
async fn row_of(conn: &mut PgConnection, sub: &str) -> Option<String> {
    sqlx::query_scalar::<_, String>(
        "SELECT (to_jsonb(u) - 'id' - 'created_at' - 'updated_at')::text FROM users u
         WHERE identity_provider = 'clerk' AND identity_sub = $1",
    )
    .bind(sub)
    .fetch_optional(conn)
    .await
    .unwrap()
}

/// The stored user of a Clerk identity, which must exist.
async fn stored(pool: &PgPool, sub: &str) -> livermore_db::User {
    find_by_identity(pool, &Identity::parse("clerk", sub).unwrap())
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no user for {sub}"))
}

/// A pool for concurrency tests: many connections, so that racing calls really run at once.
async fn wide(pool: &PgPool) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(24)
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .unwrap()
}

/// How many Clerk identities in `subs` are active despite a tombstone.
async fn deleted_but_active(pool: &PgPool) -> i64 {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM users u JOIN identity_tombstones t
             ON t.identity_provider = u.identity_provider AND t.identity_sub = u.identity_sub
           WHERE u.is_active"#
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A small deterministic generator (xorshift64*), so that a failing seed can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Every Clerk user's row, by identity, without what legitimately differs (ids, write times, and
/// with `username` unless asked: the creating record, and so the name, depends on the order).
async fn all_rows(conn: &mut PgConnection, with_username: bool) -> Vec<String> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT (to_jsonb(u) - 'id' - 'created_at' - 'updated_at')::text FROM users u
         WHERE identity_provider = 'clerk' ORDER BY identity_sub",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    rows.into_iter()
        .map(|r| {
            let mut v: Value = serde_json::from_str(&r).unwrap();
            if !with_username {
                v.as_object_mut().unwrap().remove("username");
            }
            v.to_string()
        })
        .collect()
}

/// Compares two sets of rows, naming the first that differs rather than printing them all.
fn assert_same_rows(actual: &[String], expected: &[String], context: &str) {
    assert_eq!(actual.len(), expected.len(), "{context}: number of rows");
    if let Some((a, e)) = actual.iter().zip(expected).find(|(a, e)| a != e) {
        panic!("{context}: a row differs\n  got      {a}\n  expected {e}");
    }
}

async fn one_by_one(conn: &mut PgConnection, events: &[ClerkEvent]) {
    for e in events {
        match apply_event(&mut *conn, e).await {
            Ok(_) | Err(Error::EmailTaken { .. }) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
}

fn numbered(events: &[ClerkEvent]) -> Vec<(usize, ClerkEvent)> {
    events.iter().cloned().enumerate().collect()
}

fn shuffled_with_replays(rng: &mut Rng, events: &[ClerkEvent]) -> Vec<ClerkEvent> {
    let mut out: Vec<ClerkEvent> = events
        .iter()
        .chain(events.iter().step_by(3))
        .cloned()
        .collect();
    for i in (1..out.len()).rev() {
        out.swap(i, rng.below(i as u64 + 1) as usize);
    }
    out
}

fn by_time(events: &[ClerkEvent]) -> Vec<ClerkEvent> {
    let mut sorted = events.to_vec();
    sorted.sort_by_key(|e| e.data["updated_at"].as_i64().unwrap_or_default());
    sorted
}

fn users(records: Vec<Value>) -> Vec<(usize, ClerkUser)> {
    records
        .into_iter()
        .enumerate()
        .map(|(i, v)| (i + 1, serde_json::from_value(v).expect("a Clerk user")))
        .collect()
}
