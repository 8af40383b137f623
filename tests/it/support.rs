//! What every test file shares to drive the project's scripts: run one, check its status, take its
//! output; and refuse, at once and saying why, a test that needs the project-local cluster when the
//! suite runs against a database of the caller's own.
use std::process::Command;
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;

/// Runs `scripts/<script>` with `args` (without `LIVERMORE_DATABASE_URL`: the scripts then act on
/// the project-local cluster) and returns its standard output, trimmed; a failure fails the test
/// with the script's standard error.
pub fn run_script(script: &str, args: &[&str]) -> String {
    let path = format!("{}/scripts/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(&path)
        .args(args)
        .env_remove("LIVERMORE_DATABASE_URL")
        .output()
        .unwrap_or_else(|e| panic!("run scripts/{script}: {e}"));
    assert!(
        out.status.success(),
        "scripts/{script} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
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
