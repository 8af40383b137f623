//! The identity data-access API against a real PostgreSQL: every function, its error paths, races,
//! time zones and hostile input, with the rows checked afterwards.
use std::sync::Arc;

use chrono::{DateTime, Utc};
use livermore_db::*;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::Barrier;

mod sign_in;
mod usernames;
mod values;

fn profile(provider: &str, sub: &str, email: &str) -> Profile {
    Profile::parse(
        provider,
        sub,
        email,
        Some("Ada Lovelace"),
        Some("https://img.example/a.png"),
    )
    .expect("valid profile")
}

async fn user_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM users"#)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Inserts a user the way pre-IAM tooling did: no identity.
async fn legacy_user(pool: &PgPool, username: &str, email: &str) -> UserId {
    sqlx::query_scalar!(
        r#"INSERT INTO users (username, email) VALUES ($1, $2) RETURNING id AS "id: UserId""#,
        username,
        email
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Sets `updated_at` far in the past, so a test can see a write bump it.
async fn age(pool: &PgPool, id: UserId) {
    sqlx::query!(
        "UPDATE users SET updated_at = '2000-01-01' WHERE id = $1",
        id.0
    )
    .execute(pool)
    .await
    .unwrap();
}

fn assert_recent(t: DateTime<Utc>, what: &str) {
    let skew = (Utc::now() - t).num_seconds().abs();
    assert!(skew <= 5, "{what} = {t} is {skew}s away from UTC now");
}
