//! Sign a user in through an identity provider, twice, record the login, change the role, and print
//! the user. Run it with `make example` (after `make migrate`), or against your own database with
//! `DATABASE_URL=… cargo run --example sign_in`.
use livermore_db::{Profile, Role, record_login, set_role, sign_in};
use sqlx::postgres::PgPoolOptions;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| "set DATABASE_URL (make example does it for the local database)")?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await?;

    // What Clerk (or Google) tells us about the user, parsed once.
    let profile = Profile::parse(
        "clerk",
        "user_example_ada",
        "ada@example.com",
        Some("Ada Lovelace"),
        Some("https://img.clerk.com/ada.png"),
    )?;

    let first = sign_in(&pool, &profile).await?;
    println!(
        "first sign-in:  user {} ({})",
        first.user.id,
        if first.created {
            "created"
        } else {
            "already there"
        }
    );
    let second = sign_in(&pool, &profile).await?;
    println!(
        "second sign-in: user {} (created: {})",
        second.user.id, second.created
    );
    assert_eq!(
        first.user.id, second.user.id,
        "the same identity is the same user"
    );

    let user = record_login(&pool, second.user.id).await?;
    println!("login recorded at {:?} (UTC)", user.last_login_at);

    let user = set_role(&pool, user.id, Role::SubscriberPro).await?;
    println!("{user:#?}");
    Ok(())
}
