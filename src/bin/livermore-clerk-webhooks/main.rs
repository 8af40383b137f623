//! `livermore-clerk-webhooks`: the Clerk webhook service. It verifies each delivery's signature and
//! applies the event to the Livermore database through livermore-db (feature `webhook-service`).
//!
//! `livermore-clerk-webhooks --help` lists its settings; `docs/operations.md` says how to deploy it.
//! Exit status: 0 after a clean shutdown (SIGTERM or SIGINT, every request in flight finished), 1
//! when it could not serve or the shutdown grace ran out with requests still in flight, 2 on bad
//! configuration. Nothing it prints holds a secret, the database URL or a value from a request body.

mod service;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use livermore_db::clerk::WebhookVerifier;
use sqlx::postgres::PgConnectOptions;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use service::{AppState, Settings};

/// The Clerk webhook service of livermore-db: `POST /webhooks/clerk`, `GET /healthz`, `GET /readyz`,
/// `GET /metrics` (Prometheus).
#[derive(Parser)]
#[command(
    name = "livermore-clerk-webhooks",
    version,
    after_help = "secrets (from the environment only, never a flag):
  CLERK_WEBHOOK_SECRET  the endpoint's signing secret (whsec_...); while rotating, the new and the
                        old one, space-separated
  DATABASE_URL          the Livermore database, migrated (postgres://user:password@host/db)

Serve it behind a TLS-terminating proxy; see docs/operations.md."
)]
struct Args {
    /// Where to listen (host:port).
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Seconds a delivery may take, from its headers to its answer; past it: 503, rolled back.
    #[arg(long, env = "REQUEST_DEADLINE_SECS", default_value_t = 10.0, value_parser = seconds)]
    request_deadline: f64,
    /// Seconds given to requests in flight to finish after SIGTERM or SIGINT.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 10.0, value_parser = seconds)]
    shutdown_grace: f64,
    /// Deliveries handled at once; one more is answered 503 at once.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_in_flight: u32,
    /// Database connections, at most.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    max_connections: u32,
}

/// A positive number of seconds, at most a day.
fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 86_400.0 => Ok(s),
        _ => Err("a number of seconds above 0 and at most 86400".to_owned()),
    }
}

/// Reads a variable that must be set and not empty; says which is missing, never its value.
fn required(name: &str) -> Result<String, String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| format!("{name} is not set"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    let verifier = match required("CLERK_WEBHOOK_SECRET").and_then(|s| {
        WebhookVerifier::from_list(&s).map_err(|e| format!("CLERK_WEBHOOK_SECRET: {e}"))
    }) {
        Ok(verifier) => verifier,
        Err(e) => return bad_configuration(&e),
    };
    let connect = match required("DATABASE_URL").and_then(|url| {
        // sqlx's parse error may quote the URL, password included: not shown.
        PgConnectOptions::from_str(&url)
            .map_err(|_| "DATABASE_URL is not a PostgreSQL URL".to_owned())
    }) {
        Ok(options) => options,
        Err(e) => return bad_configuration(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(args, verifier, connect))
}

fn bad_configuration(message: &str) -> ExitCode {
    error!("configuration: {message}");
    ExitCode::from(2)
}

fn init_logging() {
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn serve(args: Args, verifier: WebhookVerifier, connect: PgConnectOptions) -> ExitCode {
    let metrics = match metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(service::APPLY_SECONDS.to_owned()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )
        .and_then(|b| b.install_recorder())
    {
        Ok(handle) => handle,
        Err(e) => {
            error!("cannot set up metrics: {e}");
            return ExitCode::FAILURE;
        }
    };
    let deadline = Duration::from_secs_f64(args.request_deadline);
    // Lazily connected: the service starts, and `/readyz` says so, while the database is down.
    let pool = livermore_db::pool_options()
        .max_connections(args.max_connections)
        .acquire_timeout(deadline)
        .connect_lazy_with(connect);
    let settings = Settings {
        deadline,
        max_in_flight: args.max_in_flight as usize,
        ..Settings::default()
    };
    let state = AppState::new(pool.clone(), verifier, settings, Some(metrics));
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            error!("cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(addr) => info!("listening on {addr}"),
        Err(e) => warn!("listening, address unknown: {e}"),
    }

    let stop = std::sync::Arc::new(tokio::sync::Notify::new());
    let server = tokio::spawn({
        let stop = stop.clone();
        let app = service::router(state.clone());
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.notified().await })
                .await
        }
    });
    let signal = match shutdown_signal().await {
        Ok(name) => name,
        Err(e) => {
            error!("cannot listen for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::pin!(server);
    let ended_early = tokio::select! {
        name = signal => { info!("{name}: shutting down, finishing requests in flight"); None }
        ended = &mut server => Some(ended),
    };
    if let Some(ended) = ended_early {
        error!("the server stopped: {ended:?}");
        return ExitCode::FAILURE;
    }
    state.start_draining();
    stop.notify_one();
    let grace = Duration::from_secs_f64(args.shutdown_grace);
    let code = match tokio::time::timeout(grace, &mut server).await {
        Ok(Ok(Ok(()))) => {
            info!("stopped: every request in flight finished");
            ExitCode::SUCCESS
        }
        Ok(Ok(Err(e))) => {
            error!("the server failed while stopping: {e}");
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            error!("the server task failed: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            warn!("stopped: the shutdown grace ran out with requests in flight (rolled back)");
            ExitCode::FAILURE
        }
    };
    // Connections a request still holds when the grace ran out are not waited for.
    let _ = tokio::time::timeout(Duration::from_secs(1), pool.close()).await;
    code
}

/// Resolves with the signal's name at the first SIGTERM or SIGINT.
async fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = &'static str>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}
