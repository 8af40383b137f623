//! What every test file shares to drive the project's scripts: run one, check its status, take its
//! output; and refuse, at once and saying why, a test that needs the project-local cluster when the
//! suite runs against a database of the caller's own.
use std::process::Command;

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

/// Fails the test at once when `LIVERMORE_DATABASE_URL` is set: `what` (a standby, PgBouncer, …)
/// runs beside the project-local cluster only, and the test's database is then elsewhere.
pub fn local_cluster_only(what: &str) {
    if std::env::var_os("LIVERMORE_DATABASE_URL").is_some() {
        panic!(
            "this test needs {what} of the project-local cluster, and LIVERMORE_DATABASE_URL is \
             set (the tests' database is yours): unset it to run this test"
        );
    }
}
