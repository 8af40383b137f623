//! Every statement in the crate is a compile-time checked `query!` family macro: this fails when
//! runtime-string SQL appears anywhere under `src/`.
//!
//! One exception, in the operator binary (`src/bin/`) only: `CREATE DATABASE` on a quoted identifier,
//! which no bind parameter can stand for. Such a line must build the statement with `quote_ident(`.
use std::fs;
use std::path::{Path, PathBuf};

/// Calls that run SQL from a runtime string rather than a checked macro.
const FORBIDDEN: &[&str] = &[
    "sqlx::query(",
    "sqlx::query_as(",
    "sqlx::query_as::<",
    "sqlx::query_scalar(",
    "sqlx::query_scalar::<",
    "sqlx::query_with(",
    "sqlx::query_as_with(",
    "sqlx::query_scalar_with(",
    "sqlx::raw_sql(",
    "raw_sql(",
    "AssertSqlSafe",
    "query_unchecked!",
    "query_as_unchecked!",
    "query_scalar_unchecked!",
    ".execute(\"",
    ".fetch_one(\"",
    ".fetch_all(\"",
    ".fetch_optional(\"",
    ".fetch(\"",
    ".prepare(\"",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Operator DDL on a quoted identifier: allowed in `src/bin/` only.
fn is_quoted_ddl(line: &str) -> bool {
    line.contains("AssertSqlSafe(format!(\"CREATE DATABASE {}\", quote_ident(")
}

/// The forbidden calls found in one file's text, as `line: pattern`.
fn offences(text: &str, in_bin: bool) -> Vec<String> {
    let mut found = Vec::new();
    let mut after_ddl = false;
    for (n, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        // The quoted DDL, and the call on the next line that runs it.
        let allowed = in_bin && (is_quoted_ddl(code) || std::mem::take(&mut after_ddl));
        if in_bin && is_quoted_ddl(code) {
            after_ddl = true;
        }
        if allowed {
            continue;
        }
        for pattern in FORBIDDEN {
            // `sqlx::query(` is also the start of `sqlx::query!(`; the patterns end in `(` or `<`
            // right after the name, which a macro call never does.
            if code.contains(pattern) {
                found.push(format!("{}: {pattern}", n + 1));
            }
        }
    }
    found
}

#[test]
fn src_has_no_runtime_string_sql() {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    assert!(files.len() >= 4, "found only {files:?}");
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bin");
    let mut all = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).expect("read source");
        all.extend(
            offences(&text, file.starts_with(&bin))
                .into_iter()
                .map(|o| format!("{}:{o}", file.display())),
        );
    }
    assert!(
        all.is_empty(),
        "runtime-string SQL in src/:\n{}",
        all.join("\n")
    );
}

#[test]
fn the_scan_catches_runtime_sql() {
    let bad = "let n = sqlx::query_scalar::<_, i64>(\"SELECT 1\").fetch_one(&pool).await?;\n\
               conn.execute(\"DELETE FROM users\").await?;\n\
               sqlx::query(AssertSqlSafe(sql)).execute(&pool).await?;";
    assert_eq!(offences(bad, false).len(), 4, "{:?}", offences(bad, false));
    assert_eq!(
        offences(bad, true).len(),
        4,
        "src/bin gets no more than quoted DDL"
    );
    let good = "let n = sqlx::query_scalar!(\"SELECT 1\").fetch_one(&pool).await?;\n\
                // sqlx::query(\"in a comment\")\n\
                sqlx::query_as!(User, \"SELECT * FROM users\").fetch_all(e).await?;";
    assert_eq!(offences(good, false), Vec::<String>::new());
    let ddl = "let create = sqlx::AssertSqlSafe(format!(\"CREATE DATABASE {}\", quote_ident(&name)));\n\
               match sqlx::raw_sql(create).execute(&mut conn).await {";
    assert_eq!(offences(ddl, true), Vec::<String>::new());
    assert_eq!(offences(ddl, false).len(), 3, "not in the library");
}
