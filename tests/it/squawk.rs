//! The migration linter (`scripts/squawk.sh`, which `make lint` runs on `migrations/`): the
//! migrations as they are pass, and a new migration with an unsafe statement fails it, and so fails
//! `make test`.
use std::path::{Path, PathBuf};

use crate::support::{output_of, script};

/// `migrations/` copied into a folder of the test's own, with `extra` files added.
fn migrations_with(name: &str, extra: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("livermore-squawk-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for entry in std::fs::read_dir(source).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    for (file, sql) in extra {
        std::fs::write(dir.join(file), sql).unwrap();
    }
    dir
}

/// (exit status success, everything squawk said).
fn lint(dir: &Path) -> (bool, String) {
    let out = output_of(script("squawk.sh", &[dir.to_str().unwrap()]));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(dir).unwrap();
    (out.status.success(), said)
}

#[test]
fn the_migrations_pass_and_an_unsafe_new_one_fails() {
    let (ok, said) = lint(&migrations_with("as-is", &[]));
    assert!(ok, "the migrations as they are: {said}");

    // A plain index on users blocks its writes for the whole build.
    let index = "SET lock_timeout = '5s';\nSET statement_timeout = '5s';\n\
                 CREATE INDEX users_display_name_idx ON users (display_name);\n";
    let (ok, said) = lint(&migrations_with(
        "index",
        &[("0099_display_name_idx.up.sql", index)],
    ));
    assert!(!ok, "a plain CREATE INDEX passed: {said}");
    assert!(
        said.contains("0099_display_name_idx.up.sql")
            && said.contains("require-concurrent-index-creation"),
        "{said}"
    );

    // A CHECK added with a scan under ACCESS EXCLUSIVE.
    let check = "SET lock_timeout = '5s';\nSET statement_timeout = '5s';\n\
                 ALTER TABLE users ADD CONSTRAINT users_email_check CHECK (email <> '');\n";
    let (ok, said) = lint(&migrations_with(
        "check",
        &[("0099_email_check.up.sql", check)],
    ));
    assert!(!ok, "a CHECK without NOT VALID passed: {said}");
    assert!(said.contains("constraint-missing-not-valid"), "{said}");

    // The safe way: CONCURRENTLY, outside a transaction (sqlx's marker), with timeouts.
    let concurrent = "-- no-transaction\nSET lock_timeout = '5s';\nSET statement_timeout = '5s';\n\
                      CREATE INDEX CONCURRENTLY IF NOT EXISTS users_display_name_idx ON users (display_name);\n";
    let (ok, said) = lint(&migrations_with(
        "concurrent",
        &[("0099_display_name_idx.up.sql", concurrent)],
    ));
    assert!(
        ok,
        "CREATE INDEX CONCURRENTLY outside a transaction: {said}"
    );
}
