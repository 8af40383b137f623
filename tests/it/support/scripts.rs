//! Driving the project's scripts: run one, check its status, take its output; and refuse, at once and saying why, a test that needs the project-local cluster when the
//! suite runs against a database of the caller's own.
use std::collections::HashMap;
use std::process::{Command, Output};
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;

/// `scripts/<script>` with `args`, as a command to add to (variables, say): run by bash, without
/// `LIVERMORE_DATABASE_URL` (the scripts then act on the project-local cluster).
pub fn script(script: &str, args: &[&str]) -> Command {
    let mut command = Command::new("bash");
    command
        .arg(format!("{}/scripts/{script}", env!("CARGO_MANIFEST_DIR")))
        .args(args)
        .env_remove("LIVERMORE_DATABASE_URL");
    command
}

/// Runs a command made by [`script`]; a failure to start it fails the test. Its status is the
/// caller's to check (a test of a refusal expects a failure).
pub fn output_of(mut command: Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("run {:?}: {e}", command.get_args().next()))
}

/// Runs `scripts/<script>` with `args` and returns its standard output, trimmed; a failure fails the
/// test with the script's standard error.
pub fn run_script(script_name: &str, args: &[&str]) -> String {
    run_script_with(script_name, args, &[])
}

/// [`run_script`] with variables set for the script.
pub fn run_script_with(script_name: &str, args: &[&str], vars: &[(&str, &str)]) -> String {
    let mut command = script(script_name, args);
    command.envs(vars.iter().copied());
    let out = output_of(command);
    assert!(
        out.status.success(),
        "scripts/{script_name} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The `KEY=VALUE` lines a script printed (the emulator's and PgBouncer's coordinates).
pub fn key_values(stdout: &str) -> HashMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Fails the test at once when `LIVERMORE_DATABASE_URL` names a server other than the project-local
/// cluster (127.0.0.1 on `LOCAL_PG_PORT`, default 54329; `make test` sets the variable to that
/// cluster itself): `what` (a standby, PgBouncer, …) runs beside the project-local cluster only, and
/// the test's database would then be elsewhere.
pub fn local_cluster_only(what: &str) {
    let Ok(url) = std::env::var("LIVERMORE_DATABASE_URL") else {
        return;
    };
    let port = std::env::var("LOCAL_PG_PORT").unwrap_or_else(|_| "54329".to_owned());
    let local = PgConnectOptions::from_str(&url).is_ok_and(|o| {
        matches!(o.get_host(), "127.0.0.1" | "localhost") && o.get_port().to_string() == port
    });
    assert!(
        local,
        "this test needs {what} of the project-local cluster, and LIVERMORE_DATABASE_URL names \
         another server (the tests' database is yours): unset it to run this test"
    );
}
