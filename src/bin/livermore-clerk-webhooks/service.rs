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
use sqlx::pool::PoolConnection;
use sqlx::{Connection as _, PgConnection, PgPool, Postgres};
use tokio::sync::Semaphore;
use tracing::{info, warn};

/// The request counter: `outcome` and `status` labels.
pub const DELIVERIES: &str = "clerk_webhook_deliveries_total";
/// The histogram of the time an applied event took in the database, in seconds: from asking the
/// pool for a connection to the commit (not the body's reading or the signature check).
pub const APPLY_SECONDS: &str = "clerk_webhook_apply_seconds";
/// The gauge of requests to the webhook route being handled (reading, verifying or applying).
pub const IN_FLIGHT: &str = "clerk_webhook_requests_in_flight";

/// Every `outcome` this program counts, with its status: each series is exported from the start,
/// at 0, so that a rate or an alert over it has a series before the first such answer.
const OUTCOMES: &[(&str, u16)] = &[
    ("created", 200),
    ("updated", 200),
    ("stale", 200),
    ("deactivated", 200),
    ("already_deactivated", 200),
    ("deleted_before_seen", 200),
    ("no_verified_email", 200),
    ("ignored", 200),
    ("other", 200),
    ("body_not_read", 400),
    ("invalid", 400),
    ("not_a_clerk_event", 400),
    ("unauthenticated", 401),
    ("body_timeout", 408),
    ("conflict", 409),
    ("too_large", 413),
    ("not_applied", 500),
    ("database", 503),
    ("deadline", 503),
    ("overloaded", 503),
];

/// Describes the metrics (Prometheus' `# HELP` lines) and creates every series at 0. Called once,
/// after the recorder is installed.
pub fn describe_metrics() {
    metrics::describe_counter!(
        DELIVERIES,
        "Requests to the webhook route, by outcome and HTTP status"
    );
    metrics::describe_histogram!(
        APPLY_SECONDS,
        metrics::Unit::Seconds,
        "Time an applied event took in the database, from asking for a connection to the commit"
    );
    metrics::describe_gauge!(
        IN_FLIGHT,
        "Requests to the webhook route being read, verified or applied"
    );
    for (outcome, status) in OUTCOMES {
        metrics::counter!(DELIVERIES, "outcome" => *outcome, "status" => status.to_string())
            .increment(0);
    }
    metrics::gauge!(IN_FLIGHT).set(0.0);
    // A histogram is exported once it holds a value; registering it is enough for its empty
    // buckets to be there from the start.
    let _ = metrics::histogram!(APPLY_SECONDS);
}

/// What `Retry-After` says on a 503: Svix retries on its own schedule, but a proxy or a person
/// replaying by hand reads it.
const RETRY_AFTER_SECS: &str = "5";

/// How the handler behaves; `main` fills it from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The longest a delivery may take from its headers to its answer; past it: 503, rolled back.
    pub deadline: Duration,
    /// Verified deliveries applied at once (each holds a database connection); one more is
    /// answered 503 at once.
    pub max_in_flight: usize,
    /// Request bodies being read at once, before any is verified; one more is answered 503 at once.
    /// Kept apart from `max_in_flight`: unauthenticated clients trickling bodies can fill this one,
    /// never the slots of verified deliveries.
    pub max_reading: usize,
    /// The longest a request's body may take to arrive; past it: 408 (a body trickled a byte a
    /// second holds its slot this long at most).
    pub body_timeout: Duration,
    /// How long `/readyz` waits for the database.
    pub ready_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            deadline: Duration::from_secs(10),
            max_in_flight: 64,
            max_reading: 256,
            body_timeout: Duration::from_secs(5),
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
    /// Verified deliveries being applied.
    in_flight: Arc<Semaphore>,
    /// Bodies being read (not yet verified).
    reading: Arc<Semaphore>,
    metrics: Option<PrometheusHandle>,
    draining: Arc<AtomicBool>,
    readiness: Arc<Readiness>,
}

/// What the readiness task found last: `/readyz` reads it, costing no round trip and no connection
/// of the deliveries' pool (eight deliveries waiting on one user's lock used to make every replica
/// not ready).
#[derive(Default)]
struct Readiness {
    /// 0: not checked yet; 1: ready; 2: the database does not answer; 3: not migrated.
    state: std::sync::atomic::AtomicU8,
    /// When it was found, in milliseconds since `epoch`.
    at_ms: std::sync::atomic::AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
}

const READY: u8 = 1;
const DATABASE_DOWN: u8 = 2;
const NOT_MIGRATED: u8 = 3;

impl Readiness {
    fn now_ms(&self) -> u64 {
        self.epoch.get_or_init(Instant::now).elapsed().as_millis() as u64
    }

    fn set(&self, state: u8) {
        self.at_ms.store(self.now_ms(), Ordering::SeqCst);
        self.state.store(state, Ordering::SeqCst);
    }

    /// The last finding, if it is recent enough to go by.
    fn current(&self, max_age: Duration) -> u8 {
        let age = self
            .now_ms()
            .saturating_sub(self.at_ms.load(Ordering::SeqCst));
        if age > max_age.as_millis() as u64 {
            return 0;
        }
        self.state.load(Ordering::SeqCst)
    }
}

/// How often the readiness task checks the database.
const READINESS_EVERY: Duration = Duration::from_millis(500);

/// Checks the database every [`READINESS_EVERY`] on a connection of its own (opened again after a
/// failure): that it answers within the ready timeout, and that every migration this build knows
/// is applied (an unmigrated database fails every delivery with 42P01). Ends when the state is
/// dropped.
async fn watch_readiness(
    options: sqlx::postgres::PgConnectOptions,
    readiness: std::sync::Weak<Readiness>,
    timeout: Duration,
) {
    use sqlx::Connection;
    let known: Vec<i64> = livermore_db::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .collect();
    let mut conn: Option<sqlx::PgConnection> = None;
    loop {
        let Some(readiness) = readiness.upgrade() else {
            return;
        };
        let check = async {
            if conn.is_none() {
                conn = Some(sqlx::PgConnection::connect_with(&options).await?);
            }
            let Some(c) = conn.as_mut() else {
                unreachable!("opened above")
            };
            // Two statements: one naming a table that does not exist fails as a whole.
            let recorded = sqlx::query_scalar!(
                r#"SELECT to_regclass('_sqlx_migrations') IS NOT NULL AS "recorded!""#
            )
            .fetch_one(&mut *c)
            .await?;
            if !recorded {
                return Ok(0);
            }
            let applied = sqlx::query_scalar!(
                r#"SELECT count(*) AS "applied!" FROM _sqlx_migrations
                   WHERE success AND version = ANY($1)"#,
                &known
            )
            .fetch_one(c)
            .await?;
            Ok::<_, sqlx::Error>(applied)
        };
        let state = match tokio::time::timeout(timeout, check).await {
            Ok(Ok(applied)) if applied == known.len() as i64 => READY,
            Ok(Ok(_)) => NOT_MIGRATED,
            Ok(Err(_)) | Err(_) => {
                conn = None;
                DATABASE_DOWN
            }
        };
        readiness.set(state);
        drop(readiness);
        tokio::time::sleep(READINESS_EVERY).await;
    }
}

impl AppState {
    /// What the readiness task found last, if recent (within a few checks).
    fn database_state(&self) -> u8 {
        let max_age = self.settings.ready_timeout + 4 * READINESS_EVERY;
        self.readiness.current(max_age)
    }

    /// The state for [`router`]. `metrics`: the installed Prometheus recorder's handle, which
    /// `/metrics` renders (`None`: `/metrics` answers 404). Starts the readiness task (on the
    /// current Tokio runtime) on a connection of its own, with the pool's connect options.
    pub fn new(
        pool: PgPool,
        verifier: WebhookVerifier,
        settings: Settings,
        metrics: Option<PrometheusHandle>,
    ) -> Self {
        let readiness = Arc::new(Readiness::default());
        tokio::spawn(watch_readiness(
            pool.connect_options().as_ref().clone(),
            Arc::downgrade(&readiness),
            settings.ready_timeout,
        ));
        AppState {
            pool,
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight)),
            reading: Arc::new(Semaphore::new(settings.max_reading)),
            verifier: Arc::new(verifier),
            settings: Arc::new(settings),
            metrics,
            draining: Arc::new(AtomicBool::new(false)),
            readiness,
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

/// Ready when the readiness task last found the database answering and migrated (within the last
/// few checks), and not shutting down. Answers from what the task found: no round trip, whoever asks.
async fn readyz(State(state): State<AppState>) -> Response {
    if state.draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    match state.database_state() {
        READY => (StatusCode::OK, "ready").into_response(),
        NOT_MIGRATED => (StatusCode::SERVICE_UNAVAILABLE, "database not migrated").into_response(),
        DATABASE_DOWN => {
            (StatusCode::SERVICE_UNAVAILABLE, "database not answering").into_response()
        }
        _ => (StatusCode::SERVICE_UNAVAILABLE, "database not checked yet").into_response(),
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
    let answer = {
        let _gauge = InFlightGauge::enter();
        handle(&state, &headers, body, started, &mut seen).await
    };
    let latency = started.elapsed();
    let status = answer.status.as_u16();
    debug_assert!(
        OUTCOMES.contains(&(answer.outcome, status)),
        "{} {status} is not in OUTCOMES",
        answer.outcome
    );
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

/// Counts a request in [`IN_FLIGHT`] while it lives: dropped with the handler's future too (a client
/// that hangs up), so the gauge never stays raised.
struct InFlightGauge;

impl InFlightGauge {
    fn enter() -> InFlightGauge {
        metrics::gauge!(IN_FLIGHT).increment(1.0);
        InFlightGauge
    }
}

impl Drop for InFlightGauge {
    fn drop(&mut self) {
        metrics::gauge!(IN_FLIGHT).decrement(1.0);
    }
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
    let phase = Phase::default();
    debug_assert_eq!(phase.get(), Phase::BEFORE);
    let within = tokio::time::timeout_at(deadline.into(), async {
        // A slot for reading the body, apart from the verified deliveries' slots: whoever sends
        // headers that look signed can take one, for the body timeout at most.
        let Ok(reading) = state.reading.try_acquire() else {
            return Answer::refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "too many bodies being read",
            );
        };
        let read = tokio::time::timeout(
            state.settings.body_timeout,
            axum::body::to_bytes(body, limit),
        )
        .await;
        drop(reading);
        let Ok(read) = read else {
            return Answer::refused(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the body did not arrive in time",
            );
        };
        let bytes = match read {
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
        // Only a verified delivery takes one of the slots that hold database connections.
        let Ok(_applying) = state.in_flight.try_acquire() else {
            return Answer::refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "too many deliveries in flight",
            );
        };
        apply(state, &verified.event, deadline, &phase).await
    });
    match within.await {
        Ok(answer) => answer,
        // The transaction (if one was open) is dropped with the future, its connection closed:
        // the server rolls it back within 100 ms (see `apply`).
        Err(_) => past_deadline(phase.get(), state.database_state()),
    }
}

/// The answer to a delivery whose deadline passed in `phase`: an outage (`database`) when it was
/// still waiting for a connection and the readiness task does not find the database ready;
/// otherwise `deadline` (a lock wait, a slow statement: what alerts on deadlines are for).
fn past_deadline(phase: u8, database_state: u8) -> Answer {
    if phase == Phase::CONNECTING && database_state != READY {
        Answer::refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "database",
            "database unreachable",
        )
    } else {
        Answer::refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "deadline",
            "the request deadline passed",
        )
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

/// Applies the event in a transaction, bounded on the server as on the client: the statements end at
/// the deadline (`statement_timeout`, the time left when the transaction starts), and if the
/// deadline passes first, the connection is closed rather than returned, so that the server, which
/// checks its client every 100 ms (`client_connection_check_interval`), ends the statement and
/// rolls back at once instead of going on for up to the whole deadline again.
async fn apply(
    state: &AppState,
    event: &livermore_db::clerk::ClerkEvent,
    deadline: Instant,
    phase: &Phase,
) -> Answer {
    let applied = async {
        phase.set(Phase::CONNECTING);
        let mut conn = Abandonable::new(state.pool.acquire().await?);
        phase.set(Phase::APPLYING);
        let applied = apply_in_transaction(&mut conn, event, deadline).await;
        conn.finished = true;
        applied
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

async fn apply_in_transaction(
    conn: &mut PgConnection,
    event: &livermore_db::clerk::ClerkEvent,
    deadline: Instant,
) -> Result<livermore_db::clerk::Applied, livermore_db::Error> {
    let mut tx = conn.begin().await?;
    let left = deadline.saturating_duration_since(Instant::now());
    let timeout = format!("{}ms", left.as_millis().max(1));
    sqlx::query_scalar!(
        r#"SELECT set_config('statement_timeout', $1, true)
                  || set_config('client_connection_check_interval', '100ms', true) AS "set!""#,
        timeout
    )
    .fetch_one(&mut *tx)
    .await?;
    let applied = apply_event(&mut *tx, event).await?;
    tx.commit().await?;
    Ok(applied)
}

/// A pooled connection that is closed, not returned to the pool, when dropped before its work
/// finished (the deadline passed mid-statement). Returned, sqlx would wait for the statement to end
/// before reusing it, and the server would go on with it until its `statement_timeout`.
struct Abandonable {
    conn: PoolConnection<Postgres>,
    finished: bool,
}

impl Abandonable {
    fn new(conn: PoolConnection<Postgres>) -> Abandonable {
        Abandonable {
            conn,
            finished: false,
        }
    }
}

impl std::ops::Deref for Abandonable {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for Abandonable {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

impl Drop for Abandonable {
    fn drop(&mut self) {
        if !self.finished {
            self.conn.close_on_drop();
        }
    }
}

/// Where a delivery is when its deadline passes, which tells a database outage (no connection could
/// be had while the readiness check finds the database down) from waiting (locks, a busy pool).
#[derive(Default)]
struct Phase(std::sync::atomic::AtomicU8);

impl Phase {
    const BEFORE: u8 = 0;
    const CONNECTING: u8 = 1;
    const APPLYING: u8 = 2;

    fn set(&self, phase: u8) {
        self.0.store(phase, Ordering::Relaxed);
    }

    fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
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
        // The statement timeout (the deadline, on the server's side) or a lock wait given up.
        Error::Database(db)
            if db
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|code| code == "57014" || code == "55P03") =>
        {
            Answer::refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "deadline",
                "the request deadline passed",
            )
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `/readyz` goes by the readiness task's last finding only while it is recent: a task that
    /// stopped checking (stuck on a connect, panicked) makes the service not ready, not ready
    /// forever. `make mutants` found no test of the age.
    #[test]
    fn a_readiness_finding_goes_stale() {
        let readiness = Readiness::default();
        assert_eq!(
            readiness.current(Duration::from_secs(60)),
            0,
            "never checked"
        );
        readiness.set(READY);
        assert_eq!(readiness.current(Duration::from_secs(60)), READY);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(readiness.current(Duration::from_millis(10)), 0, "30 ms old");
        assert_eq!(readiness.current(Duration::from_secs(60)), READY);
        readiness.set(NOT_MIGRATED);
        assert_eq!(readiness.current(Duration::from_secs(60)), NOT_MIGRATED);
    }

    /// Past the deadline, only a wait for a connection while the database is not ready is an
    /// outage; a wait for a lock or a statement is a deadline whatever the readiness task finds,
    /// and so is a wait for a connection of a busy pool while the database is ready.
    #[test]
    fn past_the_deadline_an_outage_only_while_connecting_to_a_database_not_ready() {
        for phase in [Phase::BEFORE, Phase::CONNECTING, Phase::APPLYING] {
            for state in [0, READY, DATABASE_DOWN, NOT_MIGRATED] {
                let answer = past_deadline(phase, state);
                let outage = phase == Phase::CONNECTING && state != READY;
                assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
                assert_eq!(
                    answer.outcome,
                    if outage { "database" } else { "deadline" },
                    "phase {phase}, database state {state}"
                );
            }
        }
    }

    /// What each library error is answered, with the database's errors raised by a real
    /// PostgreSQL (`DATABASE_URL`, as every test has it): a statement timeout (57014) and a lock
    /// wait given up (55P03) are the deadline, any other SQLSTATE an outage naming only its code.
    #[tokio::test]
    #[allow(clippy::disallowed_methods)] // fixed statements that must fail, as in tests/it
    async fn library_errors_become_the_answers_the_alerts_expect() {
        use livermore_db::Error;
        use sqlx::{Connection, Executor};
        let url = std::env::var("DATABASE_URL")
            .expect("DATABASE_URL: this test needs PostgreSQL's own errors (make test sets it)");
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
        let failed = |r: Result<sqlx::postgres::PgQueryResult, sqlx::Error>| {
            Error::Database(r.expect_err("the statement should fail"))
        };
        let timeout = failed(
            conn.execute("SET statement_timeout = 1; SELECT pg_sleep(1)")
                .await,
        );
        conn.execute("RESET statement_timeout").await.unwrap();
        other
            .execute("SELECT pg_advisory_lock(814003)")
            .await
            .unwrap();
        let lock = failed(
            conn.execute("SET lock_timeout = 1; SELECT pg_advisory_lock(814003)")
                .await,
        );
        let other_code = failed(conn.execute("SELECT 1 / 0").await);
        let cases = [
            (
                Error::InvalidRole {
                    value: "moderator".into(),
                    valid: "user",
                },
                400,
                "invalid",
            ),
            (
                Error::EmailTaken {
                    email: "a@example.com".into(),
                },
                409,
                "conflict",
            ),
            (
                Error::IdentityTaken {
                    provider: "clerk".into(),
                    subject: "user_1".into(),
                },
                409,
                "conflict",
            ),
            (timeout, 503, "deadline"),
            (lock, 503, "deadline"),
            (other_code, 503, "database"),
        ];
        for (error, status, outcome) in cases {
            let answer = refused_by_library(&error);
            assert_eq!(
                (answer.status.as_u16(), answer.outcome),
                (status, outcome),
                "{error:?}"
            );
            if outcome == "database" {
                assert_eq!(
                    answer.reason.as_deref(),
                    Some("database error, SQLSTATE 22012")
                );
            }
        }
    }

    /// Each outcome has its own name in the response, the log line and the metric's label.
    #[test]
    fn every_outcome_is_named() {
        use livermore_db::UserId;
        let cases = [
            (Outcome::Created(UserId(1)), ("created", Some(1))),
            (Outcome::Updated(UserId(2)), ("updated", Some(2))),
            (Outcome::Stale(UserId(3)), ("stale", Some(3))),
            (Outcome::Deactivated(UserId(4)), ("deactivated", Some(4))),
            (
                Outcome::AlreadyDeactivated(UserId(5)),
                ("already_deactivated", Some(5)),
            ),
            (Outcome::DeletedBeforeSeen, ("deleted_before_seen", None)),
            (Outcome::NoVerifiedEmail, ("no_verified_email", None)),
            (
                Outcome::Ignored("session.created".into()),
                ("ignored", None),
            ),
        ];
        for (outcome, named) in cases {
            assert_eq!(describe(&outcome), named, "{outcome:?}");
        }
    }

    /// Logs name an event's type only when it is one this service knows (the type is the sender's
    /// text): anything else is `other`.
    #[test]
    fn only_known_event_types_are_named() {
        for known in ["user.created", "user.updated", "user.deleted"] {
            assert_eq!(known_type(known), known);
        }
        for unknown in ["session.created", "", "user.created ", "USER.CREATED"] {
            assert_eq!(known_type(unknown), "other", "{unknown:?}");
        }
    }
}
