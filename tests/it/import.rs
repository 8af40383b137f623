//! `livermore-db import-clerk FILE` as an operator runs it, against a scratch database.
use std::io::Write;
use std::process::Command;

use sqlx::PgPool;

use crate::common::url_of;

fn import(pool: &PgPool, contents: &str, extra: &[&str]) -> (i32, String, String) {
    let mut file = tempfile();
    file.1.write_all(contents.as_bytes()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_livermore-db"))
        .arg("import-clerk")
        .arg(&file.0)
        .args(extra)
        .env("LIVERMORE_DATABASE_URL", url_of(pool))
        .output()
        .expect("run livermore-db");
    let _ = std::fs::remove_file(&file.0);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tempfile() -> (std::path::PathBuf, std::fs::File) {
    let path = std::env::temp_dir().join(format!(
        "livermore-import-{}-{:?}.json",
        std::process::id(),
        std::thread::current().id()
    ));
    let file = std::fs::File::create(&path).unwrap();
    (path, file)
}

fn user(id: &str, email: &str) -> String {
    format!(
        r#"{{"id":"{id}","email_addresses":[{{"id":"e","email_address":"{email}"}}],"primary_email_address_id":"e","first_name":"N","updated_at":1700000000000}}"#
    )
}

#[sqlx::test]
async fn a_json_array_with_malformed_records(pool: PgPool) {
    let array = format!(
        "[{}, {{\"id\": \"user_bad\"}}, {}, {{\"id\": \"user_far\", \"updated_at\": 9000000000000000}}, \
         {{\"id\": \"user_nomail\", \"updated_at\": 1, \"email_addresses\": []}}]",
        user("user_1", "one@example.com"),
        user("user_2", "two@example.com"),
    );
    let (code, out, err) = import(&pool, &array, &["--batch-size", "1"]);
    assert_eq!(
        code, 1,
        "rejected records make the exit status 1\n{out}{err}"
    );
    assert!(out.contains("import-clerk: 5 records"), "{out}");
    assert!(out.contains("  created    2"), "{out}");
    assert!(out.contains("  rejected   2"), "{out}");
    assert!(
        out.contains("record 2: missing field `updated_at`"),
        "{out}"
    );
    assert!(out.contains("record 4: invalid updated_at"), "{out}");
    assert!(out.contains("  not created 1"), "{out}");
    assert!(out.contains("    record 5"), "{out}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 2, "the valid records were applied");

    let (code, out, _) = import(&pool, &array, &[]);
    assert_eq!(code, 1);
    assert!(out.contains("  unchanged  2"), "{out}");
}

#[sqlx::test]
async fn newline_delimited_json_all_valid(pool: PgPool) {
    let lines = format!(
        "{}\n\n{}\n",
        user("user_1", "one@example.com"),
        user("user_2", "two@example.com")
    );
    let (code, out, err) = import(&pool, &lines, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("  created    2") && out.contains("  rejected   0"),
        "{out}"
    );

    let broken = format!("{}\n{{not json\n", user("user_3", "three@example.com"));
    let (code, out, _) = import(&pool, &broken, &[]);
    assert_eq!(code, 1);
    assert!(out.contains("line 2: "), "{out}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 3, "a malformed line does not stop the valid ones");

    let (code, _, err) = import(&pool, "[1, 2", &[]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: ") && err.contains("not a JSON array"),
        "{err}"
    );
}
