//! The migration linter (`scripts/squawk.sh`, which `make lint` runs on `migrations/`): the
//! migrations as they are pass, and a new migration with an unsafe statement fails it, and so fails
//! `make test`.
use std::path::{Path, PathBuf};

use crate::common::sqlstate;
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

    // CONCURRENTLY beside other statements in a no-transaction file: squawk judges each statement
    // fine, but PostgreSQL refuses the file (`sent_as_one_string_concurrently_fails_beside_others_and_runs_alone`
    // below).
    let (ok, said) = lint(&migrations_with(
        "concurrent-with-sets",
        &[("0099_display_name_idx.up.sql", CONCURRENT_WITH_SETS)],
    ));
    assert!(!ok, "SET; SET; CREATE INDEX CONCURRENTLY passed: {said}");
    assert!(
        said.contains("0099_display_name_idx.up.sql")
            && said.contains("one-statement-per-no-transaction-file"),
        "{said}"
    );

    // The safe way (as 0007 does it): CONCURRENTLY alone in a file run outside a transaction
    // (sqlx's marker), the timeouts it cannot set answered by a reasoned squawk-ignore.
    let (ok, said) = lint(&migrations_with(
        "concurrent",
        &[("0099_display_name_idx.up.sql", CONCURRENT_ALONE)],
    ));
    assert!(
        ok,
        "CREATE INDEX CONCURRENTLY alone outside a transaction: {said}"
    );
}

/// What a DO block runs is linted too (`scripts/squawk-do.py`): a static statement in the block,
/// and an `EXECUTE format(...)` expanded for each value of its loop.
#[test]
fn what_a_do_block_runs_is_linted() {
    let (ok, said) = lint(&migrations_with(
        "do-static",
        &[("0099_display_name_idx.up.sql", DO_STATIC)],
    ));
    assert!(!ok, "a plain CREATE INDEX inside DO passed: {said}");
    assert!(
        said.contains("0099_display_name_idx.up.sql")
            && said.contains("require-concurrent-index-creation"),
        "{said}"
    );

    let (ok, said) = lint(&migrations_with(
        "do-execute",
        &[("0099_checks.up.sql", DO_EXECUTE)],
    ));
    assert!(
        !ok,
        "a CHECK without NOT VALID through EXECUTE passed: {said}"
    );
    assert!(
        said.contains("0099_checks.up.sql") && said.contains("constraint-missing-not-valid"),
        "{said}"
    );

    // The same block with NOT VALID passes: the findings above came from what it runs.
    let (ok, said) = lint(&migrations_with(
        "do-execute-not-valid",
        &[(
            "0099_checks.up.sql",
            &DO_EXECUTE.replace("<> '''')', c, c)", "<> '''') NOT VALID', c, c)"),
        )],
    ));
    assert!(ok, "{said}");
}

const DO_STATIC: &str = "SET lock_timeout = '5s';\nSET statement_timeout = '5s';\n\
    DO $m$ BEGIN\n\
      IF to_regclass('users_display_name_idx') IS NULL THEN\n\
        CREATE INDEX users_display_name_idx ON users (display_name);\n\
      END IF;\n\
    END $m$;\n";

const DO_EXECUTE: &str = "SET lock_timeout = '5s';\nSET statement_timeout = '5s';\n\
    DO $m$\nDECLARE c text;\nBEGIN\n\
      FOREACH c IN ARRAY ARRAY['username', 'email'] LOOP\n\
        EXECUTE format('ALTER TABLE users ADD CONSTRAINT %I CHECK (%I <> '''')', c, c);\n\
      END LOOP;\n\
    END $m$;\n";

const CONCURRENT_WITH_SETS: &str = "-- no-transaction\nSET lock_timeout = '5s';\n\
    SET statement_timeout = '5s';\n\
    CREATE INDEX CONCURRENTLY IF NOT EXISTS users_display_name_idx ON users (display_name);\n";

const CONCURRENT_ALONE: &str = "-- no-transaction\n\
    -- squawk-ignore require-lock-timeout, require-statement-timeout\n\
    CREATE INDEX CONCURRENTLY IF NOT EXISTS users_display_name_idx ON users (display_name);\n";

/// What the linter's verdicts rest on, checked against PostgreSQL: sqlx sends a `-- no-transaction`
/// file as one string, and PostgreSQL refuses CONCURRENTLY in that string beside anything else
/// (25001, an implicit transaction block) and builds the index when it stands alone.
#[sqlx::test]
async fn sent_as_one_string_concurrently_fails_beside_others_and_runs_alone(pool: sqlx::PgPool) {
    let err = sqlx::raw_sql(CONCURRENT_WITH_SETS)
        .execute(&pool)
        .await
        .expect_err("SET; SET; CREATE INDEX CONCURRENTLY as one string");
    assert_eq!(sqlstate(&err).as_deref(), Some("25001"), "{err}");

    sqlx::raw_sql(CONCURRENT_ALONE)
        .execute(&pool)
        .await
        .expect("CREATE INDEX CONCURRENTLY alone");
    let valid: bool = sqlx::query_scalar(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_display_name_idx'::regclass",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(valid);
}
