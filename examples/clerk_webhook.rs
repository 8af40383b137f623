//! A ready Clerk webhook service: `POST /webhooks/clerk` verifies the request's signature, parses the
//! event and applies it through livermore-db; `GET /healthz` answers 200 while the process runs.
//!
//! Configuration, from the environment:
//! - `CLERK_WEBHOOK_SECRET`: the endpoint's signing secret from Clerk's dashboard (`whsec_…`); while
//!   rotating, several, space-separated (a request signed by any of them is accepted);
//! - `DATABASE_URL`: the Livermore database (migrated: `make migrate`);
//! - `LISTEN_ADDR`: where to listen, default `127.0.0.1:8080`.
//!
//! Run it with `make webhook` (the local database), or `cargo run --features clerk-webhook --example
//! clerk_webhook`. Behind it sits your TLS-terminating proxy; Clerk posts to
//! `https://<your host>/webhooks/clerk`.
//!
//! The responses steer Svix's retries (it retries every non-2xx for days, with back-off):
//!
//! | status | when | Svix |
//! |---|---|---|
//! | 200 | applied: created, updated, deactivated; stale (a replay, or out of order), already deactivated, deleted before seen, no verified address, an event type not handled | done |
//! | 400 | signed, but not a Clerk event, or a field with a value the database cannot hold | retries, then shows a failed delivery |
//! | 401 | a header missing, no valid signature, a timestamp out of tolerance | retries, then shows a failed delivery |
//! | 409 | the address belongs to another user (it may be released by a later event) | retries |
//! | 413 | a body over the limit (1 MiB) | retries, then shows a failed delivery |
//! | 503 | the database failed (unreachable, timed out, …) | retries |
//!
//! Logs name the message id, the event type and the outcome: never the body, an address or a secret.
//!
//! The router is a library of its own in this file (`router`, `Config`): the tests in
//! `tests/it/webhook.rs` serve it on an ephemeral port and talk to it over HTTP.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use livermore_db::clerk::{Outcome, WebhookError, WebhookHeaders, WebhookVerifier, apply_event};
use serde_json::json;
use sqlx::PgPool;
use tracing::{info, warn};

/// The service's configuration, read once at start-up.
pub struct Config {
    /// The verifier, holding the decoded signing secrets.
    pub verifier: WebhookVerifier,
    /// The database to apply events to.
    pub database_url: String,
    /// Where to listen.
    pub listen: SocketAddr,
}

/// Why the service cannot start. Never shows a secret or the database URL.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The variable is unset or empty.
    #[error("{0} is not set")]
    Missing(&'static str),
    /// CLERK_WEBHOOK_SECRET holds a malformed secret.
    #[error("CLERK_WEBHOOK_SECRET: {0}")]
    Secret(#[from] WebhookError),
    /// LISTEN_ADDR is not `host:port`.
    #[error("LISTEN_ADDR is not an address and port (such as 127.0.0.1:8080)")]
    Listen,
}

impl Config {
    /// Reads the configuration through `get` (`|name| std::env::var(name).ok()` in `main`).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let present = |name: &'static str| {
            get(name)
                .filter(|v| !v.trim().is_empty())
                .ok_or(ConfigError::Missing(name))
        };
        let verifier = WebhookVerifier::from_list(&present("CLERK_WEBHOOK_SECRET")?)?;
        let database_url = present("DATABASE_URL")?;
        let listen = match get("LISTEN_ADDR").filter(|v| !v.is_empty()) {
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
            Some(addr) => addr.parse().map_err(|_| ConfigError::Listen)?,
        };
        Ok(Config {
            verifier,
            database_url,
            listen,
        })
    }
}

#[derive(Clone)]
struct AppState {
    pool: PgPool,
    verifier: Arc<WebhookVerifier>,
}

/// The service's routes: `POST /webhooks/clerk`, `GET /healthz`.
pub fn router(pool: PgPool, verifier: WebhookVerifier) -> Router {
    // The body limit is enforced while reading: a larger body is never buffered (413).
    let limit = verifier.max_body_bytes();
    let state = AppState {
        pool,
        verifier: Arc::new(verifier),
    };
    Router::new()
        .route("/webhooks/clerk", post(clerk_webhook))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

async fn clerk_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let status = rejection.status();
            warn!(
                status = status.as_u16(),
                "webhook refused: body not read ({rejection})"
            );
            return reply(status, json!({ "error": "body not read" }));
        }
    };
    let verified = WebhookHeaders::from_lookup(|name| headers.get(name)?.to_str().ok())
        .and_then(|h| state.verifier.verify(&h, &body));
    let verified = match verified {
        Ok(verified) => verified,
        Err(e) => {
            let status = match &e {
                WebhookError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                e if e.is_unauthenticated() => StatusCode::UNAUTHORIZED,
                _ => StatusCode::BAD_REQUEST,
            };
            // The message id is logged only once the signature is good: before, it is anyone's text.
            warn!(status = status.as_u16(), "webhook refused: {e}");
            return reply(status, json!({ "error": e.to_string() }));
        }
    };
    let id = verified.message_id.as_str();
    let event_type = verified.event.event_type.as_str();
    match apply_event(&state.pool, &verified.event).await {
        Ok(applied) => {
            let (outcome, user_id) = describe(&applied.outcome);
            info!(
                message = id,
                event_type, outcome, user_id, "webhook applied"
            );
            if let Some(note) = &applied.role_note {
                warn!(message = id, user_id, "role not taken from Clerk: {note}");
            }
            reply(
                StatusCode::OK,
                json!({ "outcome": outcome, "user_id": user_id }),
            )
        }
        Err(e) => {
            let (status, error) = match &e {
                livermore_db::Error::InvalidInput { field, .. } => {
                    (StatusCode::BAD_REQUEST, format!("invalid {field}"))
                }
                livermore_db::Error::InvalidRole { .. } => {
                    (StatusCode::BAD_REQUEST, "invalid role".to_owned())
                }
                livermore_db::Error::EmailTaken { .. }
                | livermore_db::Error::IdentityTaken { .. } => {
                    (StatusCode::CONFLICT, e.to_string())
                }
                livermore_db::Error::Database(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database unavailable".to_owned(),
                ),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "not applied".to_owned()),
            };
            // Errors of this crate name fields, never values; database errors carry no row data.
            warn!(
                message = id,
                event_type,
                status = status.as_u16(),
                "webhook not applied: {e}"
            );
            reply(status, json!({ "error": error }))
        }
    }
}

/// The outcome's name and the user it concerns, for the log line and the response.
fn describe(outcome: &Outcome) -> (&'static str, Option<i32>) {
    match outcome {
        Outcome::Created(id) => ("created", Some(id.0)),
        Outcome::Updated(id) => ("updated", Some(id.0)),
        Outcome::Stale(id) => ("stale", Some(id.0)),
        Outcome::Deactivated(id) => ("deactivated", Some(id.0)),
        Outcome::AlreadyDeactivated(id) => ("already_deactivated", Some(id.0)),
        Outcome::DeletedBeforeSeen => ("deleted_before_seen", None),
        Outcome::NoVerifiedEmail => ("no_verified_email", None),
        Outcome::Ignored(_) => ("ignored", None),
        _ => ("other", None),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = match Config::from_lookup(|name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("clerk_webhook: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let served = async {
        let pool = livermore_db::pool_options()
            .max_connections(8)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(&config.database_url)
            .await?;
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        info!(
            "listening on http://{}/webhooks/clerk",
            listener.local_addr()?
        );
        axum::serve(listener, router(pool, config.verifier))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    };
    match served.await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clerk_webhook: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
