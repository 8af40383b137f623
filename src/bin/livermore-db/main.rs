//! `livermore-db`: the operator's command for the IAM schema. `make migrate`, `make migrate-status`,
//! `make drift` and `make import-clerk` call it; `livermore-db --help` lists the commands.
//!
//! Exit status: 0 when done (and, for `drift`, when there is no drift), 1 on any failure or difference,
//! 2 on a usage error. A failure is one line on stderr, without a stack trace or a secret.
//!
//! It reads only its own variables: `LIVERMORE_DATABASE_URL` (`--env local`), `PG_SANDBOX_*`
//! (`--env sandbox`), `LIVERMORE_STATEMENT_TIMEOUT` and `LIVERMORE_COMMAND_TIMEOUT`. The shell's
//! libpq variables (`PGOPTIONS`, `PGSSLROOTCERT`, `PGHOST`, …), which sqlx would read, are removed
//! before anything connects.

mod drift;
mod env;
mod failure;
mod import;
mod locks;
mod migrate;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use env::Target;
use failure::{Failure, report};

/// The operator's command for livermore-db's IAM schema.
#[derive(Parser)]
#[command(
    name = "livermore-db",
    after_help = "environments:
  local    LIVERMORE_DATABASE_URL (make sets it to the project-local database)
  sandbox  PG_SANDBOX_HOST, PG_SANDBOX_USER, PG_SANDBOX_PASSWORD (required); PG_SANDBOX_PORT (5432),
           PG_SANDBOX_DATABASE (livermore), PG_SANDBOX_SSLMODE (verify-full, the default | verify-ca |
           require), PG_SANDBOX_SSLROOTCERT (a CA file, trusted beside the public web roots)

timeouts:
  LIVERMORE_STATEMENT_TIMEOUT  seconds a statement may run on the server (default 900)
  LIVERMORE_COMMAND_TIMEOUT    seconds the whole command may take, a silent server included (default 3600)

rolling back:
  The way back is forward: deploy the previous release (it starts on a database that is ahead), and
  undo a schema change with a new migration. No command here runs the down migrations: each locks
  `users` ACCESS EXCLUSIVE and reads it, so on a live table every read and write waits behind it.
  Runbook: docs/operations.md, \"The way back is forward\"."
)]
struct Cli {
    /// Which database.
    #[arg(long, value_enum, default_value_t = Env::Local, global = true)]
    env: Env,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Env {
    /// LIVERMORE_DATABASE_URL.
    Local,
    /// The managed sandbox, from PG_SANDBOX_*, always over authenticated TLS.
    Sandbox,
}

#[derive(Subcommand)]
enum Command {
    /// Create the database if missing, then apply the pending migrations, each one said.
    Migrate {
        /// Say what would be done, and what the pending migrations will meet in the data; change
        /// nothing. Exit 1 when something there must be fixed first.
        #[arg(long)]
        dry_run: bool,
        /// Milliseconds one attempt waits for a migration's lock on `users` (reads and writes
        /// queue behind it that long at most); then it rolls back, pauses and tries again.
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=60_000))]
        lock_attempt_ms: u64,
        /// Seconds to keep trying before giving up, naming the sessions that held `users`.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        lock_budget_secs: u64,
    },
    /// List the migrations: applied, pending, mismatched (edited after being applied); and what
    /// the pending ones will meet in the data (exit 1 when something must be fixed first).
    Status,
    /// Compare the live schema of the managed tables with the migrations; exit 1 on any difference.
    Drift,
    /// Apply Clerk users (a JSON array, or one JSON object a line) as a backfill; exit 1 when any
    /// record was rejected.
    ImportClerk {
        /// The file of Clerk users.
        file: PathBuf,
        /// Records per batch.
        #[arg(long, default_value_t = livermore_db::clerk::DEFAULT_BATCH_SIZE, value_parser = positive)]
        batch_size: usize,
    },
    /// Print the roles, one a line; with --typescript, write the TypeScript services' `role.ts`
    /// (generated from the crate's `Role` enum; see docs/typescript.md). Needs no database.
    Roles {
        /// Write the TypeScript module instead: to PATH, or to stdout when PATH is `-` or absent.
        #[arg(long)]
        typescript: bool,
        /// Where to write the TypeScript module (with --typescript).
        #[arg(requires = "typescript")]
        path: Option<PathBuf>,
    },
}

/// `roles`: the spellings, or the TypeScript module written to `path` (stdout for `-` or none).
fn roles(typescript: bool, path: Option<&std::path::Path>) -> ExitCode {
    use std::io::Write;
    let text = if typescript {
        livermore_db::Role::typescript_module()
    } else {
        livermore_db::Role::NAMES.join("\n") + "\n"
    };
    let written = match path.filter(|p| p.as_os_str() != "-") {
        Some(path) => std::fs::write(path, &text).map_err(|e| (path.display().to_string(), e)),
        None => std::io::stdout()
            .write_all(text.as_bytes())
            .map_err(|e| ("stdout".to_owned(), e)),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err((place, e)) => {
            eprintln!("error: cannot write {place}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn positive(s: &str) -> Result<usize, String> {
    s.parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| "a positive number".to_owned())
}

const DEFAULT_COMMAND_TIMEOUT_SECS: u64 = 60 * 60;

/// The outcome of a command: done, or done with a difference or rejected records (exit status 1).
enum Done {
    Ok,
    Differs,
}

async fn run(target: &Target, command: Command) -> Result<Done, Failure> {
    let ok = match command {
        Command::Migrate {
            dry_run,
            lock_attempt_ms,
            lock_budget_secs,
        } => {
            let retry = livermore_db::LockRetry::new(
                std::time::Duration::from_millis(lock_attempt_ms),
                std::time::Duration::from_secs(lock_budget_secs),
            );
            migrate::migrate(target, dry_run, retry).await?
        }
        Command::Status => migrate::status(target).await?,
        Command::Drift => drift::drift(target).await?,
        Command::ImportClerk { file, batch_size } => {
            import::import_clerk(target, &file, batch_size).await?
        }
        Command::Roles { .. } => unreachable!("main runs `roles` without a database"),
    };
    Ok(if ok { Done::Ok } else { Done::Differs })
}

/// Removes the libpq variables sqlx reads from the environment (`PG_SANDBOX_*` are ours and stay).
/// Runs before any thread exists.
fn forget_libpq_environment() {
    let names: Vec<_> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("PG") && !k.starts_with("PG_SANDBOX_"))
        .collect();
    for name in names {
        // SAFETY: called first thing in `main`, before the runtime or any other thread starts, so
        // nothing reads the environment concurrently.
        unsafe { std::env::remove_var(name) };
    }
}

fn main() -> ExitCode {
    forget_libpq_environment();
    let cli = Cli::parse();
    if let Command::Roles { typescript, path } = &cli.command {
        return roles(*typescript, path.as_deref());
    }
    let deadline = std::env::var("LIVERMORE_COMMAND_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(DEFAULT_COMMAND_TIMEOUT_SECS);
    let target = match cli.env {
        Env::Local => Target::local(),
        Env::Sandbox => Target::sandbox(|name| std::env::var(name).ok()),
    };
    let target = match target {
        Ok(target) => target,
        Err(failure) => return report(failure, None),
    };
    if let Some(warning) = &target.warning {
        eprintln!("{warning}");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match tokio::time::timeout(Duration::from_secs(deadline), run(&target, cli.command)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::new(format!(
                "no result within {deadline} s (LIVERMORE_COMMAND_TIMEOUT): gave up; a migration in progress is rolled back by the server"
            ))),
        }
    });
    match result {
        Ok(Done::Ok) => ExitCode::SUCCESS,
        Ok(Done::Differs) => ExitCode::FAILURE,
        Err(failure) => report(failure, target.secret()),
    }
}
