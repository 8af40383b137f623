//! `livermore-db`: the operator's command for the IAM schema. `make migrate`, `make migrate-status` and
//! `make drift` call it; run `livermore-db help` for the commands.
//!
//! Exit status: 0 when done (and, for `drift`, when there is no drift), 1 on any failure or difference,
//! 2 on a usage error. A failure is one line on stderr, without a stack trace or a secret.

mod drift;
mod import;
mod migrate;
mod target;

use std::process::ExitCode;

use target::{ENVS, Failure, Target};

const USAGE: &str = "\
usage: livermore-db [--env local|sandbox] <command> [options]

commands:
  migrate     create the database if missing, then apply the pending migrations, each one said
              (--dry-run: say what would be done, change nothing)
  status      list the migrations: applied, pending, mismatched (edited after being applied)
  drift       compare the live schema of the managed tables with the migrations; exit 1 on any difference
  import-clerk FILE [--batch-size N]
              apply Clerk users (a JSON array, or one JSON object a line) as a backfill, N a statement
              (default 10000); prints a summary; exit 1 when any record was rejected

environments:
  local       LIVERMORE_DATABASE_URL (make sets it to the project-local database)
  sandbox     PG_SANDBOX_HOST, PG_SANDBOX_USER, PG_SANDBOX_PASSWORD (required); PG_SANDBOX_PORT (5432),
              PG_SANDBOX_DATABASE (livermore), PG_SANDBOX_SSLMODE (require | verify-ca | verify-full),
              PG_SANDBOX_SSLROOTCERT (a CA file for verify-*); always over TLS";

struct Args {
    env: String,
    command: String,
    file: Option<String>,
    dry_run: bool,
    batch_size: usize,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut env = "local".to_owned();
    let mut command = None;
    let mut file = None;
    let mut dry_run = false;
    let mut batch_size = livermore_db::clerk::DEFAULT_BATCH_SIZE;
    let mut positional_only = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            // After `--`, a FILE may start with `-`.
            "--" if !positional_only => positional_only = true,
            s if positional_only
                && command.as_deref() == Some("import-clerk")
                && file.is_none() =>
            {
                file = Some(s.to_owned())
            }
            s if positional_only => return Err(format!("unexpected argument {s}")),
            "--env" => env = args.next().ok_or("--env needs a value")?,
            "--dry-run" => dry_run = true,
            "--batch-size" => {
                batch_size = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or("--batch-size needs a positive number")?;
            }
            "-h" | "--help" | "help" => return Err(String::new()),
            s if s.starts_with("--env=") => env = s["--env=".len()..].to_owned(),
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s if command.is_none() => command = Some(s.to_owned()),
            s if command.as_deref() == Some("import-clerk") && file.is_none() => {
                file = Some(s.to_owned())
            }
            s => return Err(format!("unexpected argument {s}")),
        }
    }
    if !ENVS.contains(&env.as_str()) {
        return Err(format!(
            "unknown environment {env:?}; valid: {}",
            ENVS.join(", ")
        ));
    }
    let command = command.ok_or("no command given")?;
    if dry_run && command != "migrate" {
        return Err("--dry-run goes with migrate".to_owned());
    }
    if command == "import-clerk" && file.is_none() {
        return Err("import-clerk needs a FILE".to_owned());
    }
    Ok(Args {
        env,
        command,
        file,
        dry_run,
        batch_size,
    })
}

async fn run(args: Args) -> Result<bool, Failure> {
    let target = Target::from_env(&args.env)?;
    match args.command.as_str() {
        "migrate" => migrate::migrate(&target, args.dry_run).await,
        "status" => migrate::status(&target).await,
        "drift" => drift::drift(&target).await,
        "import-clerk" => {
            let file = args.file.unwrap_or_default();
            import::import_clerk(&target, std::path::Path::new(&file), args.batch_size).await
        }
        other => Err(Failure::new(format!(
            "unknown command {other:?}; valid: migrate, status, drift, import-clerk"
        ))),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(problem) if problem.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(problem) => {
            eprintln!("error: {problem}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(Failure(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
