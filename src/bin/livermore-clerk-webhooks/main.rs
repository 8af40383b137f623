//! `livermore-clerk-webhooks`: the Clerk webhook service. It verifies each delivery's signature and
//! applies the event to the Livermore database through livermore-db (feature `webhook-service`).
//!
//! `livermore-clerk-webhooks --help` lists its settings; `docs/webhook-service.md` says how to deploy
//! it.
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

/// How often the Prometheus recorder's upkeep runs (its own default when it runs it itself).
const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The Clerk webhook service of livermore-db: `POST /webhooks/clerk`, `GET /healthz`, `GET /readyz`,
/// `GET /metrics` (Prometheus).
#[derive(Parser)]
#[command(
    name = "livermore-clerk-webhooks",
    version,
    after_help = "secrets (from the environment only, never a flag; or from a file: NAME_FILE=path):
  CLERK_WEBHOOK_SECRET  the endpoint's signing secret (whsec_...); while rotating, the new and the
                        old one, space-separated
  DATABASE_URL          the Livermore database, migrated (postgres://user:password@host/db)
logging: RUST_LOG (default info; for example warn, or info,sqlx=warn)

Serve it behind a TLS-terminating proxy; see docs/webhook-service.md."
)]
struct Args {
    /// Where to listen (host:port).
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Seconds a delivery may take, from its headers to its answer; past it: 503, rolled back. At
    /// most 15: Svix gives up on a delivery after 15 s, and work past that is wasted.
    #[arg(long, env = "REQUEST_DEADLINE_SECS", default_value_t = 10.0, value_parser = deadline_seconds)]
    request_deadline: f64,
    /// Seconds given to requests in flight to finish after SIGTERM or SIGINT.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 10.0, value_parser = seconds)]
    shutdown_grace: f64,
    /// Seconds after SIGTERM or SIGINT during which `/readyz` answers 503 and everything else is
    /// served as before, so that a load balancer stops sending; then the listener closes and the
    /// requests in flight get the shutdown grace. A second signal stops at once.
    #[arg(long, env = "DRAIN_DELAY_SECS", default_value_t = 5.0, value_parser = seconds_or_zero)]
    drain_delay: f64,
    /// Verified deliveries applied at once; one more is answered 503 at once.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_in_flight: u32,
    /// Request bodies read at once, before their signature is checked (apart from the deliveries
    /// in flight); one more is answered 503 at once.
    #[arg(long, env = "MAX_READING", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_reading: u32,
    /// Seconds a request's body may take to arrive; past it: 408.
    #[arg(long, env = "BODY_TIMEOUT_SECS", default_value_t = 5.0, value_parser = seconds)]
    body_timeout: f64,
    /// Seconds a client may take to send a request's head, and an idle kept-alive connection may
    /// wait for its next request; past it the connection is closed.
    #[arg(long, env = "HEADER_TIMEOUT_SECS", default_value_t = 5.0, value_parser = seconds)]
    header_timeout: f64,
    /// Client connections open at once; past it a new connection is closed at once.
    #[arg(long, env = "MAX_CONNECTIONS_OPEN", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections_open: u32,
    /// Database connections, at most.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    max_connections: u32,
}

/// A positive number of seconds, at most Svix's 15 s delivery timeout.
fn deadline_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 15.0 => Ok(s),
        _ => Err("a number of seconds above 0 and at most 15 (Svix's delivery timeout)".to_owned()),
    }
}

/// A number of seconds from 0 to a day.
fn seconds_or_zero(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if (0.0..=86_400.0).contains(&s) => Ok(s),
        _ => Err("a number of seconds from 0 to 86400".to_owned()),
    }
}

/// A positive number of seconds, at most a day.
fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 86_400.0 => Ok(s),
        _ => Err("a number of seconds above 0 and at most 86400".to_owned()),
    }
}

/// Reads a variable that must be set and not empty; says which is missing, never its value.
/// A secret from the environment: `NAME`, or the file `NAME_FILE` names (as container orchestrators
/// mount secrets; its trailing newline dropped). Setting both is refused. Messages name the variable,
/// never the value.
fn required(name: &str) -> Result<String, String> {
    let set = |var: &str| std::env::var(var).ok().filter(|v| !v.trim().is_empty());
    let file_var = format!("{name}_FILE");
    match (set(name), set(&file_var)) {
        (Some(_), Some(_)) => Err(format!("set {name} or {file_var}, not both")),
        (Some(value), None) => Ok(value),
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => {
                Ok(text.trim_end_matches(['\n', '\r']).to_owned())
            }
            Ok(_) => Err(format!("{file_var}: the file is empty")),
            Err(e) => Err(format!("{file_var}: cannot read the file ({})", e.kind())),
        },
        (None, None) => Err(format!("{name} is not set")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = init_logging() {
        return bad_configuration(&e);
    }
    let verifier = match required("CLERK_WEBHOOK_SECRET").and_then(|s| {
        WebhookVerifier::from_list(&s).map_err(|e| format!("CLERK_WEBHOOK_SECRET: {e}"))
    }) {
        Ok(verifier) => verifier,
        Err(e) => return bad_configuration(&e),
    };
    let connect = match required("DATABASE_URL").and_then(|url| {
        check_database_url(&url)?;
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

/// Refuses a `DATABASE_URL` that cannot work (sqlx would accept some, and every delivery would then
/// fail): another scheme than `postgres`/`postgresql`, no host, no database. The messages never
/// quote the value (it holds the password).
fn check_database_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or("DATABASE_URL is not a postgres:// or postgresql:// URL")?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if host.is_empty() || host.starts_with(':') {
        return Err("DATABASE_URL has no host".to_owned());
    }
    if path.split(['?', '#']).next().unwrap_or("").is_empty() {
        return Err(
            "DATABASE_URL has no database (postgres://user:password@host/database)".to_owned(),
        );
    }
    Ok(())
}

fn bad_configuration(message: &str) -> ExitCode {
    error!("configuration: {message}");
    ExitCode::from(2)
}

/// Logs to stderr at the level `RUST_LOG` says (`info` when unset; the usual `tracing` filter
/// syntax, `warn` or `info,sqlx=warn` for example). An unreadable `RUST_LOG` is refused after the
/// logger starts at `info`, so that the refusal is logged.
fn init_logging() -> Result<(), String> {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let (filter, refused) = match std::env::var("RUST_LOG") {
        Ok(text) if !text.trim().is_empty() => match EnvFilter::try_new(text) {
            Ok(filter) => (filter, None),
            // The parser's message quotes the text: not shown.
            Err(_) => (
                EnvFilter::new("info"),
                Some("RUST_LOG is not a log filter (for example: info, or warn,livermore=info)"),
            ),
        },
        _ => (EnvFilter::new("info"), None),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    refused.map_or(Ok(()), |message| Err(message.to_owned()))
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
    service::describe_metrics();
    // `install_recorder` leaves the upkeep to its caller: without it the histogram's samples pile
    // up between scrapes (and for good when nothing scrapes).
    tokio::spawn({
        let metrics = metrics.clone();
        async move {
            let mut every = tokio::time::interval(METRICS_UPKEEP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                metrics.run_upkeep();
            }
        }
    });
    let deadline = Duration::from_secs_f64(args.request_deadline);
    // Lazily connected: the service starts, and `/readyz` says so, while the database is down.
    let pool = livermore_db::pool_options()
        .max_connections(args.max_connections)
        // Past the deadline, so that the handler's deadline decides, and tells an outage from a
        // busy pool (`service::apply`), rather than the pool's timer racing it.
        .acquire_timeout(deadline + Duration::from_secs(1))
        .connect_lazy_with(connect);
    let settings = Settings {
        deadline,
        max_in_flight: args.max_in_flight as usize,
        max_reading: args.max_reading as usize,
        body_timeout: Duration::from_secs_f64(args.body_timeout),
        ..Settings::default()
    };
    let state = AppState::new(pool.clone(), verifier, settings, Some(metrics));
    // Before "listening on": from that line on an orchestrator may stop the program, and a signal
    // with no handler yet would kill it outright (no drain, no exit code).
    let mut signals = match Signals::new() {
        Ok(signals) => signals,
        Err(e) => {
            error!("cannot listen for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
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
    let server = tokio::spawn(accept(
        listener,
        service::router(state.clone()),
        Limits {
            header_timeout: Duration::from_secs_f64(args.header_timeout),
            max_open: args.max_connections_open as usize,
        },
        stop.clone(),
    ));
    tokio::pin!(server);
    let name = tokio::select! {
        name = signals.next() => name,
        ended = &mut server => {
            error!("the server stopped: {ended:?}");
            return ExitCode::FAILURE;
        }
    };
    // Not ready first, while everything is still served, so that the load balancer's probes see it
    // and it stops sending; then the listener closes and the requests in flight get the grace.
    state.start_draining();
    let delay = Duration::from_secs_f64(args.drain_delay);
    info!(
        "{name}: not ready; stopping in {:.1} s, then finishing requests in flight",
        delay.as_secs_f64()
    );
    let grace = Duration::from_secs_f64(args.shutdown_grace);
    let drained = async {
        tokio::time::sleep(delay).await;
        stop.notify_one();
        tokio::time::timeout(grace, &mut server).await
    };
    let code = tokio::select! {
        drained = drained => match drained {
            Ok(Ok(())) => {
                info!("stopped: every request in flight finished");
                ExitCode::SUCCESS
            }
            Ok(Err(e)) => {
                error!("the server task failed: {e}");
                ExitCode::FAILURE
            }
            Err(_) => {
                warn!("stopped: the shutdown grace ran out with requests in flight (rolled back)");
                ExitCode::FAILURE
            }
        },
        name = signals.next() => {
            warn!("{name} again: stopping now (requests in flight are rolled back)");
            ExitCode::FAILURE
        }
    };
    // Connections a request still holds when the grace ran out are not waited for.
    let _ = tokio::time::timeout(Duration::from_secs(1), pool.close()).await;
    code
}

/// SIGTERM and SIGINT, listened for from start-up on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next SIGTERM or SIGINT: its name.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// What bounds a client connection before any handler runs.
struct Limits {
    /// A request head (and, on a kept-alive connection, the wait for the next one) must arrive
    /// within this; else hyper closes the connection.
    header_timeout: Duration,
    /// Connections open at once; one more is closed as soon as it is accepted.
    max_open: usize,
}

/// Serves `app` on `listener` until `stop`, then closes the listener and waits for the open
/// connections' requests to finish (hyper closes each connection once its request is answered).
/// hyper's HTTP/1 server with a Tokio timer: `axum::serve` gives it none, so its header read timeout
/// was off and a client that sent half a request head held the connection for good (enough of them
/// used up file descriptors and blocked every drain).
async fn accept(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: Limits,
    stop: std::sync::Arc<tokio::sync::Notify>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let open = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_open));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut over_limit_said = false;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.notified() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: wait a moment rather than spin.
                warn!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            if !over_limit_said {
                warn!(
                    "{} connections open: closing new ones until some end",
                    limits.max_open
                );
                over_limit_said = true;
            }
            drop(stream);
            continue;
        };
        over_limit_said = false;
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A connection's error (a client gone, a head too slow) is the client's affair.
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
