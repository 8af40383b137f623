//! The pool's per-call cost in sqlx alone, for an upstream report (see BENCHMARKS.md): the same
//! `SELECT 1` in a loop for 3 seconds on one connection held for the run, then through a one-connection
//! `PgPool` (each call acquires and releases), on a multi-thread and a current-thread runtime.
//!
//! `DATABASE_URL=postgres://… cargo run --release --example pool_cost`
#![allow(clippy::disallowed_methods)] // a reproduction with sqlx alone: plain runtime SQL
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection};

async fn measure(url: &str) -> (f64, f64) {
    let run = Duration::from_secs(3);
    let mut conn = PgConnection::connect(url).await.expect("connect");
    let (mut n, started) = (0u64, Instant::now());
    while started.elapsed() < run {
        let _: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        n += 1;
    }
    let held = n as f64 / started.elapsed().as_secs_f64();
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect(url)
        .await
        .expect("connect");
    let (mut n, started) = (0u64, Instant::now());
    while started.elapsed() < run {
        let _: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
        n += 1;
    }
    (held, n as f64 / started.elapsed().as_secs_f64())
}

fn main() {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    for (name, mut builder) in [
        ("multi-thread", tokio::runtime::Builder::new_multi_thread()),
        (
            "current-thread",
            tokio::runtime::Builder::new_current_thread(),
        ),
    ] {
        let rt = builder.enable_all().build().unwrap();
        let (held, pooled) = rt.block_on(measure(&url));
        println!(
            "{name:>14}: held connection {held:>7.0}/s, one-connection pool {pooled:>7.0}/s ({:.2}x)",
            pooled / held
        );
    }
}
