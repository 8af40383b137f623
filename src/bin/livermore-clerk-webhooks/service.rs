//! The HTTP side of the service: routes, the webhook handler and what it logs and counts.
//!
//! Kept apart from `main` (arguments, signals, start-up) so that the tests can serve these routes
//! in-process too (`tests/it/webhook.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use livermore_db::clerk::{Outcome, WebhookError, WebhookHeaders, WebhookVerifier, apply_event};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tracing::{info, warn};

/// The request counter: `outcome` and `status` labels.
pub const DELIVERIES: &str = "clerk_webhook_deliveries_total";
/// The histogram of the time from the request to the answer, in seconds, for applied events.
pub const APPLY_SECONDS: &str = "clerk_webhook_apply_seconds";
/// The gauge of requests being handled.
pub const IN_FLIGHT: &str = "clerk_webhook_requests_in_flight";

/// What `Retry-After` says on a 503: Svix retries on its own schedule, but a proxy or a person
/// replaying by hand reads it.
const RETRY_AFTER_SECS: &str = "5";

/// How the handler behaves; `main` fills it from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The longest a delivery may take from its headers to its answer; past it: 503, rolled back.
    pub deadline: Duration,
    /// Deliveries handled at once; one more is answered 503 at once.
    pub max_in_flight: usize,
    /// How long `/readyz` waits for the database.
    pub ready_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            deadline: Duration::from_secs(10),
            max_in_flight: 64,
            ready_timeout: Duration::from_secs(1),
        }
    }
}

/// What every request shares.
#[derive(Clone)]
pub struct AppState {
    pool: PgPool,
    verifier: Arc<WebhookVerifier>,
    settings: Arc<Settings>,
    in_flight: Arc<Semaphore>,
    metrics: Option<PrometheusHandle>,
    draining: Arc<AtomicBool>,
}

impl AppState {
    /// The state for [`router`]. `metrics`: the installed Prometheus recorder's handle, which
    /// `/metrics` renders (`None`: `/metrics` answers 404).
    pub fn new(
        pool: PgPool,
        verifier: WebhookVerifier,
        settings: Settings,
        metrics: Option<PrometheusHandle>,
    ) -> Self {
        AppState {
            pool,
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight)),
            verifier: Arc::new(verifier),
            settings: Arc::new(settings),
            metrics,
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    /// From now on `/readyz` answers 503, so that a load balancer stops sending (at shutdown).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
}

/// The routes: `POST /webhooks/clerk`, `GET /healthz`, `GET /readyz`, `GET /metrics`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/webhooks/clerk", post(clerk_webhook))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(state)
}

/// Ready when the database answers within the ready timeout, and not shutting down.
async fn readyz(State(state): State<AppState>) -> Response {
    if state.draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let ping = sqlx::query_scalar!(r#"SELECT 1 AS "one!""#).fetch_one(&state.pool);
    match tokio::time::timeout(state.settings.ready_timeout, ping).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready").into_response(),
        Ok(Err(_)) | Err(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, "database not answering").into_response()
        }
    }
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(handle) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            )],
            handle.render(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// One delivery's answer and what its log line and counters say. `reason` and `field` are words of
/// this program's, never a value from the request.
struct Answer {
    status: StatusCode,
    outcome: &'static str,
    reason: Option<String>,
    user_id: Option<i32>,
}

impl Answer {
    fn refused(status: StatusCode, outcome: &'static str, reason: impl Into<String>) -> Self {
        Answer {
            status,
            outcome,
            reason: Some(reason.into()),
            user_id: None,
        }
    }

    fn response(&self) -> Response {
        let body = match self.status {
            StatusCode::OK => json!({ "outcome": self.outcome, "user_id": self.user_id }),
            // An unauthenticated caller learns nothing of why (not how far its clock is off).
            StatusCode::UNAUTHORIZED => json!({ "error": "unauthenticated" }),
            _ => json!({ "error": self.outcome }),
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}

/// What the log line names of the request once it is authenticated.
#[derive(Default)]
struct Seen {
    message_id: Option<String>,
    event_type: Option<&'static str>,
}

async fn clerk_webhook(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let mut seen = Seen::default();
    let answer = match state.in_flight.clone().try_acquire_owned() {
        Err(_) => Answer::refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests in flight",
        ),
        Ok(_permit) => {
            metrics::gauge!(IN_FLIGHT).increment(1.0);
            let answer = handle(&state, &headers, body, started, &mut seen).await;
            metrics::gauge!(IN_FLIGHT).decrement(1.0);
            answer
        }
    };
    let latency = started.elapsed();
    let status = answer.status.as_u16();
    metrics::counter!(DELIVERIES, "outcome" => answer.outcome, "status" => status.to_string())
        .increment(1);
    let message_id = seen.message_id.as_deref().unwrap_or("-");
    let event_type = seen.event_type.unwrap_or("-");
    let latency_ms = latency.as_millis() as u64;
    let reason = answer.reason.as_deref();
    if answer.status.is_success() {
        info!(
            message_id,
            event_type,
            outcome = answer.outcome,
            status,
            latency_ms,
            user_id = answer.user_id,
            reason,
            "clerk webhook"
        );
    } else {
        warn!(
            message_id,
            event_type,
            outcome = answer.outcome,
            status,
            latency_ms,
            reason,
            "clerk webhook"
        );
    }
    answer.response()
}

/// The event types this service names in logs: any other is `other` (the type is the sender's
/// text).
fn known_type(event_type: &str) -> &'static str {
    match event_type {
        "user.created" => "user.created",
        "user.updated" => "user.updated",
        "user.deleted" => "user.deleted",
        _ => "other",
    }
}

async fn handle(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
    seen: &mut Seen,
) -> Answer {
    let verifier = &state.verifier;
    let lookup = |name: &str| headers.get(name)?.to_str().ok();
    // Headers first: without the three signature headers, or with a timestamp that cannot be
    // right, the body (up to 1 MiB) is never read.
    if let Err(e) = WebhookHeaders::from_lookup(lookup)
        .and_then(|h| verifier.check_headers(&h, SystemTime::now()))
    {
        return Answer::refused(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string());
    }
    let limit = verifier.max_body_bytes();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Answer::refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "declared body over the limit",
        );
    }
    let deadline = started + state.settings.deadline;
    let within = tokio::time::timeout_at(deadline.into(), async {
        let bytes = match axum::body::to_bytes(body, limit).await {
            Ok(bytes) => bytes,
            Err(e) => {
                let too_large = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                return if too_large {
                    Answer::refused(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        "body over the limit",
                    )
                } else {
                    Answer::refused(StatusCode::BAD_REQUEST, "body_not_read", "body not read")
                };
            }
        };
        let headers = match WebhookHeaders::from_lookup(lookup) {
            Ok(h) => h,
            Err(e) => {
                return Answer::refused(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string());
            }
        };
        let verified = match verifier.verify(&headers, &bytes) {
            Ok(verified) => verified,
            Err(e) => return refused_by_verifier(&e),
        };
        seen.message_id = Some(verified.message_id.clone());
        seen.event_type = Some(known_type(&verified.event.event_type));
        apply(state, &verified.event, deadline).await
    });
    match within.await {
        Ok(answer) => answer,
        // The transaction (if one was open) is dropped with the future: rolled back. The server
        // side ends by itself too: the statement timeout set in it runs out at the deadline.
        Err(_) => Answer::refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "deadline",
            "the request deadline passed",
        ),
    }
}

fn refused_by_verifier(e: &WebhookError) -> Answer {
    let (status, outcome) = match e {
        WebhookError::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        e if e.is_unauthenticated() => (StatusCode::UNAUTHORIZED, "unauthenticated"),
        _ => (StatusCode::BAD_REQUEST, "not_a_clerk_event"),
    };
    // The verifier's messages hold no secret, signature or body value.
    Answer::refused(status, outcome, e.to_string())
}

/// Applies the event in a transaction whose statements the server ends at the deadline, so that a
/// delivery waiting for its identity's lock gives up on both sides at once.
async fn apply(
    state: &AppState,
    event: &livermore_db::clerk::ClerkEvent,
    deadline: Instant,
) -> Answer {
    let applied = async {
        let mut tx = state.pool.begin().await?;
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = format!("{}ms", left.as_millis().max(1));
        sqlx::query_scalar!(
            r#"SELECT set_config('statement_timeout', $1, true) AS "set!""#,
            timeout
        )
        .fetch_one(&mut *tx)
        .await?;
        let applied = apply_event(&mut *tx, event).await?;
        tx.commit().await?;
        Ok::<_, livermore_db::Error>(applied)
    };
    let started = Instant::now();
    match applied.await {
        Ok(applied) => {
            metrics::histogram!(APPLY_SECONDS).record(started.elapsed().as_secs_f64());
            let (outcome, user_id) = describe(&applied.outcome);
            Answer {
                status: StatusCode::OK,
                outcome,
                // Only that the role was not taken: the note describes the metadata.
                reason: applied
                    .role_note
                    .map(|_| "public_metadata.role not taken as a role".to_owned()),
                user_id,
            }
        }
        Err(e) => refused_by_library(&e),
    }
}

/// The library's error as an answer. Only fixed words and field names reach the log: a database
/// error's text can quote values, so only its SQLSTATE is named.
fn refused_by_library(e: &livermore_db::Error) -> Answer {
    use livermore_db::Error;
    match e {
        Error::InvalidInput { field, .. } => Answer::refused(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("invalid {field}"),
        ),
        Error::InvalidRole { .. } => {
            Answer::refused(StatusCode::BAD_REQUEST, "invalid", "invalid role")
        }
        Error::EmailTaken { .. } => Answer::refused(
            StatusCode::CONFLICT,
            "conflict",
            "the address belongs to another user",
        ),
        Error::IdentityTaken { .. } => Answer::refused(
            StatusCode::CONFLICT,
            "conflict",
            "the identity belongs to another user",
        ),
        Error::Database(db) => {
            let reason = match db.as_database_error().and_then(|d| d.code()) {
                Some(code) => format!("database error, SQLSTATE {code}"),
                None => "database unreachable or failed".to_owned(),
            };
            Answer::refused(StatusCode::SERVICE_UNAVAILABLE, "database", reason)
        }
        _ => Answer::refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            "not_applied",
            "not applied",
        ),
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
