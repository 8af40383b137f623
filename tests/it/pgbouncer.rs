//! Behind PgBouncer (Debian's package, `scripts/pgbouncer.sh`), two server connections shared by many
//! client connections: what works, shown rather than claimed.
//!
//! sqlx runs every statement as a protocol-level prepared statement (Parse, then Bind/Execute, with a
//! Sync between them), and caches it per connection. PgBouncer in transaction mode may give each of
//! those steps a different server connection: before 1.21, which cannot carry prepared statements
//! across server connections, statements fail with "prepared statement … does not exist". Session
//! mode keeps one server connection per client connection and carries everything.
use std::str::FromStr;
use std::time::Duration;

use livermore_db::clerk::{ClerkUser, apply_batch, apply_event, apply_events, apply_user};
use livermore_db::{
    Email, Identity, Profile, Role, deactivate, find_by_email, find_by_id, find_by_identities,
    find_by_identity, link_identity, list_by_role, record_login, set_role, sign_in,
};
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};

use crate::support::clerk::{T0, clerk_user, event};

use crate::support::{key_values, local_cluster_only, run_script};

struct Bouncer {
    options: PgConnectOptions,
    version: (u32, u32),
}

/// Starts (if needed) the PgBouncer of `mode` and gives its options for the test's database.
async fn bouncer(mode: &str, primary: &PgPool) -> Bouncer {
    local_cluster_only("PgBouncer in front");
    let printed = key_values(&run_script("pgbouncer.sh", &["up", mode]));
    let value = |key: &str| {
        printed
            .get(key)
            .unwrap_or_else(|| panic!("scripts/pgbouncer.sh printed no {key}"))
            .clone()
    };
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(primary)
        .await
        .unwrap();
    let version = value("PGBOUNCER_VERSION");
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap());
    Bouncer {
        options: PgConnectOptions::from_str(&value("PGBOUNCER_URL"))
            .unwrap()
            .database(&database),
        version: (parts.next().unwrap(), parts.next().unwrap()),
    }
}

/// A pool of `connections` through the bouncer.
async fn pool_through(options: &PgConnectOptions, connections: u32) -> PgPool {
    livermore_db::pool_options()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options.clone())
        .await
        .expect("connect through PgBouncer")
}

/// 16 tasks, each on its own connection through the bouncer, signing in, looking up and changing
/// roles: the errors they met.
async fn workload(pool: &PgPool, tag: &str) -> Vec<String> {
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..16 {
        let pool = pool.clone();
        let tag = tag.to_owned();
        tasks.spawn(async move {
            let mut errors = Vec::new();
            let sub = format!("user_{tag}_{task}");
            let profile = Profile::parse(
                "clerk",
                &sub,
                &format!("{tag}{task}@example.com"),
                None,
                None,
            )
            .unwrap();
            let identity = Identity::parse("clerk", &sub).unwrap();
            for i in 0..40 {
                let result = async {
                    let signed = sign_in(&pool, &profile).await?;
                    let role = [Role::Admin, Role::User][i % 2];
                    set_role(&pool, signed.user.id, role).await?;
                    let found = find_by_identity(&pool, &identity).await?;
                    assert_eq!(found.map(|u| u.role), Some(role));
                    Ok::<_, livermore_db::Error>(())
                }
                .await;
                if let Err(e) = result {
                    errors.push(e.to_string());
                }
            }
            errors
        });
    }
    let mut errors = Vec::new();
    while let Some(result) = tasks.join_next().await {
        errors.extend(result.unwrap());
    }
    errors
}

#[sqlx::test]
async fn session_mode_carries_the_crate(primary: PgPool) {
    let bouncer = bouncer("session", &primary).await;
    // In session mode each client connection holds a server connection for its whole life: a pool
    // larger than PgBouncer's (default_pool_size = 2) waits for ever (query_wait_timeout) on the rest.
    let pool = pool_through(&bouncer.options, 2).await;
    let errors = workload(&pool, "session").await;
    assert!(
        errors.is_empty(),
        "behind PgBouncer in session mode: {errors:?}"
    );
    // And Db's held connections and write-position reads pass through it too (with a replica
    // configured, so that writes read the position; no look-up, so no check task connects).
    let identity = Identity::parse("clerk", "user_session_0").unwrap();
    let user = livermore_db::find_by_identity(&pool, &identity)
        .await
        .unwrap()
        .unwrap();
    pool.close().await;
    let db = livermore_db::Db::builder(bouncer.options.clone())
        .connections(1)
        .replicas([bouncer.options.clone()])
        .build()
        .await
        .unwrap();
    db.set_role(user.id, Role::SubscriberPro).await.unwrap();
    assert!(db.last_write().is_some());
    db.close().await;
    release(pool, &primary).await;
}

/// Every function of the crate on one client connection (each of them a prepared statement, or
/// several, on whatever server connection PgBouncer gave this client), for `n`'s own users.
async fn every_function(conn: &mut PgConnection, n: usize) -> Result<(), livermore_db::Error> {
    let sub = format!("user_short_{n}");
    let email = format!("short{n}@example.com");
    let profile = Profile::parse("clerk", &sub, &email, Some("Short"), None)?;
    let identity = profile.identity.clone();
    let user = sign_in(&mut *conn, &profile).await?.user.id;
    find_by_identity(&mut *conn, &identity).await?;
    find_by_identities(&mut *conn, std::slice::from_ref(&identity)).await?;
    find_by_id(&mut *conn, user).await?;
    find_by_email(&mut *conn, &Email::parse(&email)?).await?;
    link_identity(&mut *conn, user, &identity).await?;
    record_login(&mut *conn, user).await?;
    set_role(&mut *conn, user, Role::SubscriberBasic).await?;
    list_by_role(&mut *conn, Role::SubscriberBasic, None, 10).await?;
    let clerk_sub = format!("user_short_clerk_{n}");
    let record = clerk_user(
        &clerk_sub,
        &format!("shortclerk{n}@example.com"),
        T0,
        json!({}),
    );
    apply_event(&mut *conn, &event("user.created", record.clone(), T0)).await?;
    let later = clerk_user(
        &clerk_sub,
        &format!("shortclerk{n}@example.com"),
        T0 + 1,
        json!({}),
    );
    let parsed: ClerkUser = serde_json::from_value(later.clone()).unwrap();
    apply_user(&mut *conn, &parsed.to_profile()?).await?;
    apply_batch(&mut *conn, &[(0, parsed)]).await?;
    apply_events(&mut *conn, &[(0, event("user.updated", later, T0 + 2))]).await?;
    let mut tx = conn.begin().await?;
    set_role(&mut *tx, user, Role::Admin).await?;
    deactivate(&mut *tx, user).await?;
    tx.commit().await?;
    Ok(())
}

/// Session mode shares its two server connections among many short-lived clients: 8 tasks each
/// connect, run every function of the crate and disconnect, 5 times over (40 client connections,
/// at most 2 server connections). PgBouncer resets a server connection (`server_reset_query`,
/// `DISCARD ALL`) before the next client gets it, so one client's prepared statements never meet
/// the next client's (sqlx names them `sqlx_s_1`, `sqlx_s_2`, … on every connection).
#[sqlx::test]
async fn session_mode_shares_server_connections_among_short_clients(primary: PgPool) {
    let bouncer = bouncer("session", &primary).await;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..8 {
        let options = bouncer.options.clone();
        tasks.spawn(async move {
            let mut servers = Vec::new();
            for round in 0..5 {
                let mut conn = PgConnection::connect_with(&options).await.unwrap();
                let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                servers.push(pid);
                let result = every_function(&mut conn, task * 10 + round).await;
                conn.close().await.unwrap();
                if let Err(e) = result {
                    panic!("task {task}, client {round}: {e}");
                }
            }
            servers
        });
    }
    let mut servers = std::collections::HashSet::new();
    let mut clients = 0;
    while let Some(done) = tasks.join_next().await {
        let seen = done.unwrap();
        clients += seen.len();
        servers.extend(seen);
    }
    assert_eq!(clients, 40);
    assert!(
        servers.len() <= 2,
        "{} server connections for 40 clients: PgBouncer did not share them",
        servers.len()
    );
    // The server connections stay in PgBouncer's pool; end them so the database can be dropped.
    let idle = livermore_db::pool_options()
        .max_connections(1)
        .connect_lazy_with(bouncer.options);
    release(idle, &primary).await;
}

/// Closes the pool and ends PgBouncer's server connections to the test's database, so that
/// `#[sqlx::test]` can drop it.
async fn release(pool: PgPool, primary: &PgPool) {
    pool.close().await;
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(primary)
    .await
    .unwrap();
}

/// PgBouncer before 1.21 in transaction mode cannot carry sqlx's prepared statements; 1.21 and
/// newer can, with `max_prepared_statements` (which the script sets). This test expects whichever
/// the installed version should do, so a newer package turns it into the proof that it works.
#[sqlx::test]
async fn transaction_mode_needs_pgbouncer_1_21(primary: PgPool) {
    let bouncer = bouncer("transaction", &primary).await;
    let pool = pool_through(&bouncer.options, 16).await;
    let errors = workload(&pool, "tx").await;
    if bouncer.version >= (1, 21) {
        assert!(
            errors.is_empty(),
            "PgBouncer {:?}, transaction mode: {errors:?}",
            bouncer.version
        );
        release(pool, &primary).await;
        return;
    }
    assert!(
        errors.iter().any(|e| e.contains("prepared statement")),
        "PgBouncer {:?} in transaction mode was expected to lose prepared statements; errors: {errors:?}",
        bouncer.version
    );
    println!(
        "PgBouncer {:?}, transaction mode: {} of 640 calls failed, e.g. {:?}",
        bouncer.version,
        errors.len(),
        errors[0]
    );
    // Turning sqlx's statement cache off does not help: each statement is still prepared (named) in
    // one step and run in another.
    let uncached = pool_through(&bouncer.options.clone().statement_cache_capacity(0), 16).await;
    let errors = workload(&uncached, "txnocache").await;
    assert!(
        errors.iter().any(|e| e.contains("prepared statement")),
        "without a statement cache: {errors:?}"
    );
    release(pool, &primary).await;
    release(uncached, &primary).await;
}
