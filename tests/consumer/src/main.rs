//! A small service using livermore-db as a dependency. `make test` builds it (with no database variable,
//! and with a DATABASE_URL of its own that points nowhere) and then runs it against a scratch database
//! given in DATABASE_URL.
//!
//! Compiling [`spawn_everything`] is the check that every public async function of the library can be
//! spawned (`tokio::spawn` needs `Send + 'static` futures, as axum handlers do) with each kind of
//! executor a service has: `&PgPool`, `&mut PgConnection` and a transaction. Running it checks that they
//! work there too.
use livermore_db::clerk::{
    ClerkEvent, ClerkUser, apply_batch, apply_event, apply_events, apply_user,
};
use livermore_db::{
    Email, Error, Identity, Profile, Role, UserId, deactivate, find_by_email, find_by_id,
    find_by_identities, find_by_identity, link_identity, list_by_role, record_login, set_role,
    sign_in,
};
use sqlx::{Connection, PgPool};
use tokio::task::JoinHandle;

type Task = JoinHandle<Result<(), Error>>;

fn profile(n: u32) -> Profile {
    Profile::parse(
        "clerk",
        &format!("user_consumer_{n}"),
        &format!("consumer{n}@example.com"),
        Some("Consumer"),
        None,
    )
    .expect("a valid profile")
}

fn clerk_user(n: u32, updated_at: i64) -> ClerkUser {
    serde_json::from_value(serde_json::json!({
        "id": format!("user_clerk_consumer_{n}"),
        "email_addresses": [{"id": "idn_1", "email_address": format!("clerk{n}@example.com")}],
        "primary_email_address_id": "idn_1",
        "first_name": "Clerk",
        "updated_at": updated_at,
    }))
    .expect("a Clerk user")
}

fn clerk_event(n: u32) -> ClerkEvent {
    serde_json::from_value(serde_json::json!({
        "type": "user.created",
        "data": serde_json::to_value(serde_json::json!({
            "id": format!("user_clerk_consumer_{n}"),
            "email_addresses": [{"id": "idn_1", "email_address": format!("clerk{n}@example.com")}],
            "primary_email_address_id": "idn_1",
            "updated_at": 1_700_000_000_000_i64,
        })).unwrap(),
    }))
    .expect("a Clerk event")
}

/// A user of its own for one task to deactivate (the others keep theirs active).
fn throwaway(n: u32, kind: u32) -> Profile {
    profile(1000 + 10 * n + kind)
}

/// Every public async function, spawned, with a pool, a pooled connection and a transaction.
fn spawn_everything(pool: PgPool, user: UserId, n: u32) -> Vec<Task> {
    let identity = profile(n).identity.clone();
    let email = Email::parse(&format!("consumer{n}@example.com")).unwrap();
    let mut tasks: Vec<Task> = Vec::new();

    // With &PgPool.
    {
        let (pool, identity, email) = (pool.clone(), identity.clone(), email.clone());
        tasks.push(tokio::spawn(async move {
            let p = &pool;
            sign_in(p, &profile(n)).await?;
            find_by_identity(p, &identity).await?;
            find_by_id(p, user).await?;
            find_by_email(p, &email).await?;
            link_identity(p, user, &identity).await?;
            record_login(p, user).await?;
            set_role(p, user, Role::SubscriberBasic).await?;
            list_by_role(p, Role::SubscriberBasic, None, 10).await?;
            apply_event(p, &clerk_event(n)).await?;
            apply_user(p, &clerk_user(n, 1_700_000_000_001).to_profile()?).await?;
            apply_batch(p, &[(1, clerk_user(n, 1_700_000_000_002))]).await?;
            apply_events(p, &[(1, clerk_event(n))]).await?;
            find_by_identities(p, std::slice::from_ref(&identity)).await?;
            let other = sign_in(p, &throwaway(n, 1)).await?.user.id;
            deactivate(p, other).await?;
            livermore_db::migrate(p).await?;
            Ok(())
        }));
    }
    // With &mut PgConnection (a pooled connection).
    {
        let (pool, identity, email) = (pool.clone(), identity.clone(), email.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            let c = &mut *conn;
            sign_in(&mut *c, &profile(n)).await?;
            find_by_identity(&mut *c, &identity).await?;
            find_by_id(&mut *c, user).await?;
            find_by_email(&mut *c, &email).await?;
            link_identity(&mut *c, user, &identity).await?;
            record_login(&mut *c, user).await?;
            set_role(&mut *c, user, Role::SubscriberPro).await?;
            list_by_role(&mut *c, Role::SubscriberPro, None, 10).await?;
            apply_event(&mut *c, &clerk_event(n)).await?;
            apply_user(&mut *c, &clerk_user(n, 1_700_000_000_003).to_profile()?).await?;
            apply_batch(&mut *c, &[(1, clerk_user(n, 1_700_000_000_004))]).await?;
            apply_events(&mut *c, &[(1, clerk_event(n))]).await?;
            find_by_identities(&mut *c, std::slice::from_ref(&identity)).await?;
            let other = sign_in(&mut *c, &throwaway(n, 2)).await?.user.id;
            deactivate(&mut *c, other).await?;
            livermore_db::prepare_to_migrate(&mut *c).await?;
            Ok(())
        }));
    }
    // Inside a transaction, committed at the end.
    tasks.push(tokio::spawn(async move {
        let mut tx = pool.begin().await?;
        sign_in(&mut *tx, &profile(n)).await?;
        find_by_identity(&mut *tx, &identity).await?;
        find_by_id(&mut *tx, user).await?;
        find_by_email(&mut *tx, &email).await?;
        link_identity(&mut *tx, user, &identity).await?;
        record_login(&mut *tx, user).await?;
        set_role(&mut *tx, user, Role::Admin).await?;
        list_by_role(&mut *tx, Role::Admin, None, 10).await?;
        apply_event(&mut *tx, &clerk_event(n)).await?;
        apply_user(&mut *tx, &clerk_user(n, 1_700_000_000_005).to_profile()?).await?;
        apply_batch(&mut *tx, &[(1, clerk_user(n, 1_700_000_000_006))]).await?;
        apply_events(&mut *tx, &[(1, clerk_event(n))]).await?;
        find_by_identities(&mut *tx, std::slice::from_ref(&identity)).await?;
        deactivate(&mut *tx, user).await?;
        tx.commit().await?;
        Ok(())
    }));
    tasks
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL")?;
    let pool = livermore_db::pool_options()
        .max_connections(8)
        .connect(&url)
        .await?;

    // The service's own table beside livermore's, with its own (runtime) SQL.
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS orders (id bigserial PRIMARY KEY, user_id int NOT NULL)",
    )
    .execute(&pool)
    .await?;
    livermore_db::migrate(&pool).await?;

    let signed_in = sign_in(&pool, &profile(0)).await?;
    assert!(signed_in.created, "a new user");
    let applied = apply_event(&pool, &clerk_event(0)).await?;
    println!(
        "consumer: signed in user {}, Clerk event: {:?}",
        signed_in.user.id, applied.outcome
    );

    // A backfill from a spawned task.
    let batch: Vec<(usize, ClerkUser)> = (1..=20)
        .map(|n| (n as usize, clerk_user(100 + n, 1)))
        .collect();
    let report = tokio::spawn({
        let pool = pool.clone();
        async move { apply_batch(&pool, &batch).await }
    })
    .await??;
    assert_eq!(report.created, 20, "{report:?}");

    // Every public function from spawned tasks, for several users at once.
    let mut tasks = Vec::new();
    for n in 1..=4 {
        let user = sign_in(&pool, &profile(n)).await?.user.id;
        tasks.extend(spawn_everything(pool.clone(), user, n));
    }
    for task in tasks {
        task.await??;
    }
    let mut conn = pool.acquire().await?;
    let identity = Identity::parse("clerk", "user_consumer_1")?;
    let user = find_by_identity(&mut *conn, &identity)
        .await?
        .ok_or("user 1 is gone")?;
    assert!(!user.is_active, "deactivated in the last task");
    conn.ping().await?;
    sqlx::query("INSERT INTO orders (user_id) VALUES ($1)")
        .bind(user.id.0)
        .execute(&pool)
        .await?;
    // Db, the service's handle: built, used and closed from spawned tasks (every future `Send`).
    let options: sqlx::postgres::PgConnectOptions = url.parse()?;
    let db = tokio::spawn({
        let options = options.clone();
        async move { livermore_db::Db::connect(options).await }
    })
    .await??;
    let built = tokio::spawn({
        let options = options.clone();
        async move {
            livermore_db::Db::builder(options.clone())
                .replicas([options])
                .connections(2)
                .build()
                .await
        }
    })
    .await??;
    let mut routed = Vec::new();
    for n in 1..=4 {
        let (db, built, pool) = (db.session(), built.clone(), pool.clone());
        routed.push(tokio::spawn(async move {
            let identity = Identity::parse("clerk", &format!("user_consumer_{n}"))?;
            let batch = livermore_db::find_by_identities(&pool, &[identity.clone()]).await?;
            assert!(batch[0].is_some());
            let user = db
                .find_by_identity(&identity)
                .await?
                .expect("signed in above");
            built.find_by_identity(&identity).await?;
            db.sign_in(&profile(n)).await?;
            db.record_login(user.id).await?;
            db.set_role(user.id, Role::SubscriberBasic).await?;
            db.link_identity(user.id, &identity).await?;
            db.apply_clerk_event(&clerk_event(n)).await?;
            db.find_by_identities(std::slice::from_ref(&identity))
                .await?;
            db.find_by_id(user.id).await?;
            db.find_by_email(&Email::parse(&format!("consumer{n}@example.com"))?)
                .await?;
            db.list_by_role(Role::SubscriberBasic, None, 10).await?;
            db.deactivate(user.id).await?;
            let seen = db.find_by_identity(&identity).await?.expect("still there");
            assert!(!seen.is_active);
            // A transaction of the caller's own on the handle's pool.
            let mut tx = db.pool().begin().await?;
            livermore_db::deactivate(&mut *tx, user.id).await?;
            tx.commit().await?;
            db.primary_only().find_by_identity(&identity).await?;
            let after = db.session_after(db.last_write().unwrap_or_default());
            after.find_by_identity(&identity).await?;
            assert!(after.session_stats().primary + after.session_stats().replicas == 1);
            let _ = (db.stats(), db.serving_replicas());
            db.migrate().await?;
            Ok::<(), Error>(())
        }));
    }
    for r in routed {
        r.await??;
    }
    tokio::spawn(async move {
        db.close().await;
        built.close().await;
    })
    .await?;
    println!("consumer: every public function ran from spawned tasks");
    Ok(())
}
