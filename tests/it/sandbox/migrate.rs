//! `migrate`, `drift` and adoption on the sandbox: a missing database created, dry runs, missing
//! variables, drift, adopting existing databases, edited migrations, a locked table.
use super::*;

#[tokio::test]
async fn creates_the_missing_livermore_database_then_changes_nothing() {
    fresh("livermore").await;

    // No PG_SANDBOX_DATABASE: the default, `livermore`.
    let first = sandbox(&["migrate"], "", &[("PG_SANDBOX_DATABASE", "")]);
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    assert!(
        first
            .stdout
            .contains("target: sandbox_admin:***@127.0.0.1:"),
        "{}",
        first.stdout
    );
    assert!(
        first.stdout.contains("created database \"livermore\""),
        "{}",
        first.stdout
    );
    for m in livermore_db::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
    {
        let line = format!("applied {:04} {}", m.version, m.description);
        assert!(
            first.stdout.contains(&line),
            "no {line:?} in\n{}",
            first.stdout
        );
    }

    let mut conn = connect("livermore").await;
    assert_eq!(applied_versions(&mut conn).await, all_versions());
    let recorded = migration_rows(&mut conn).await;

    let second = sandbox(&["migrate"], "livermore", &[]);
    assert_eq!(second.code, 0, "{}{}", second.stdout, second.stderr);
    assert!(
        second.stdout.contains("nothing to apply"),
        "{}",
        second.stdout
    );
    assert!(!second.stdout.contains("applied 0"), "{}", second.stdout);
    assert!(
        !second.stdout.contains("created database"),
        "{}",
        second.stdout
    );
    assert_eq!(
        migration_rows(&mut conn).await,
        recorded,
        "the second run changed nothing"
    );

    let status = sandbox(&["status"], "livermore", &[]);
    assert_eq!(status.code, 0);
    assert!(status.stdout.contains(&format!(
        "{} applied, 0 pending, 0 mismatched",
        all_versions().len()
    )));
}

#[tokio::test]
async fn dry_run_changes_nothing() {
    fresh("livermore_dry_run").await;
    let run = sandbox(&["migrate", "--dry-run"], "livermore_dry_run", &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("would create database \"livermore_dry_run\"")
    );
    assert!(run.stdout.contains("would apply 0001"));
    assert!(
        !database_exists("livermore_dry_run").await,
        "a dry run created the database"
    );

    create("livermore_dry_run").await;
    let run = sandbox(&["migrate", "--dry-run"], "livermore_dry_run", &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("would apply 0003"));
    // Before anything, the locks each pending migration takes, on which tables, of what size.
    assert!(
        run.stdout.contains(
            "0003 users utc defaults: users (created by an earlier migration of this run): \
             ACCESS EXCLUSIVE (blocks reads and writes)"
        ),
        "{}",
        run.stdout
    );
    let mut conn = connect("livermore_dry_run").await;
    let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(table, None, "a dry run wrote to the database");

    let status = sandbox(&["status"], "livermore_dry_run", &[]);
    assert!(
        status
            .stdout
            .contains(&format!("0 applied, {} pending", all_versions().len())),
        "{}",
        status.stdout
    );
}

#[tokio::test]
async fn missing_variables_are_named_before_any_connection() {
    for (unset, expected) in [
        (
            vec!["PG_SANDBOX_HOST", "PG_SANDBOX_USER", "PG_SANDBOX_PASSWORD"],
            "error: missing required environment variables: PG_SANDBOX_HOST, PG_SANDBOX_USER, PG_SANDBOX_PASSWORD",
        ),
        (
            vec!["PG_SANDBOX_PASSWORD"],
            "error: missing required environment variable: PG_SANDBOX_PASSWORD",
        ),
    ] {
        let overrides: Vec<(&str, &str)> = unset.iter().map(|k| (*k, "")).collect();
        let run = sandbox(&["migrate"], "livermore_unused", &overrides);
        assert_eq!(run.code, 1);
        assert_eq!(one_line_error(&run), expected);
        assert_eq!(run.stdout, "", "nothing was tried");
    }
    let run = livermore_db(&["--env", "prod", "migrate"], &[]);
    assert_eq!(run.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("possible values: local, sandbox"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

#[tokio::test]
async fn drift_is_reported_after_a_hand_made_change_and_not_before() {
    fresh("livermore_drift").await;
    assert_eq!(sandbox(&["migrate"], "livermore_drift", &[]).code, 0);

    let clean = sandbox(&["drift"], "livermore_drift", &[]);
    assert_eq!(clean.code, 0, "{}{}", clean.stdout, clean.stderr);
    assert!(clean.stdout.contains("no drift"), "{}", clean.stdout);

    let mut conn = connect("livermore_drift").await;
    sqlx::query("ALTER TABLE users ALTER COLUMN display_name TYPE varchar(200)")
        .execute(&mut conn)
        .await
        .unwrap();
    let drifted = sandbox(&["drift"], "livermore_drift", &[]);
    assert_eq!(drifted.code, 1, "{}{}", drifted.stdout, drifted.stderr);
    assert!(
        drifted.stdout.contains("column display_name differs"),
        "{}",
        drifted.stdout
    );
    assert!(
        drifted.stdout.contains("character varying(200)"),
        "{}",
        drifted.stdout
    );
    assert!(
        drifted.stdout.contains("character varying(100)"),
        "{}",
        drifted.stdout
    );

    // An INVALID index (the one a failed concurrent build leaves) under the right definition is
    // drift: sign-ins cannot use it.
    sqlx::query("DROP INDEX users_identity_provider_sub_idx")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO users (username, email, identity_provider, identity_sub)
         VALUES ('one', 'one@example.com', 'clerk', 'user_twice'),
                ('two', 'two@example.com', 'clerk', 'user_twice')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "CREATE UNIQUE INDEX CONCURRENTLY users_identity_provider_sub_idx
         ON users (identity_provider, identity_sub) WHERE identity_provider IS NOT NULL",
    )
    .execute(&mut conn)
    .await
    .expect_err("a duplicate identity fails the build");
    let invalid = sandbox(&["drift"], "livermore_drift", &[]);
    assert_eq!(invalid.code, 1, "{}{}", invalid.stdout, invalid.stderr);
    assert!(
        invalid.stdout.contains("users_identity_provider_sub_idx")
            && invalid.stdout.contains(" INVALID"),
        "{}",
        invalid.stdout
    );

    // The check left nothing behind.
    let scratch: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'livermore_db_drift%'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(scratch, 0);
}

async fn adopt(database: &str, fixture: &'static str) {
    create(database).await;
    let mut conn = connect(database).await;
    sqlx::raw_sql(fixture)
        .execute(&mut conn)
        .await
        .expect("load the old schema");
    let snapshot = "SELECT string_agg(concat_ws('|', id, username, email, is_active, created_at, updated_at),
                                      E'\\n' ORDER BY id) || E'\\n--\\n' ||
                           (SELECT string_agg(to_jsonb(w)::text, E'\\n' ORDER BY id) FROM watchlists w)
                    FROM users";
    let before: String = sqlx::query_scalar(snapshot)
        .fetch_one(&mut conn)
        .await
        .unwrap();

    let run = sandbox(&["migrate"], database, &[]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(!run.stdout.contains("created database"));

    let after: String = sqlx::query_scalar(snapshot)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(after, before, "adoption changed rows");
    assert_eq!(applied_versions(&mut conn).await, all_versions());
    let drift = sandbox(&["drift"], database, &[]);
    assert_eq!(
        drift.code, 0,
        "an adopted schema matches the migrations:\n{}",
        drift.stdout
    );
}

/// The adoption check tries the pending migrations on an empty copy of the table's structure, not on
/// the table: a write in progress on users (an open transaction holding ROW EXCLUSIVE, as any sign-in
/// does) does not hold it up, where the migrations' own ACCESS EXCLUSIVE would wait and time out.
#[tokio::test]
async fn the_adoption_check_waits_on_no_write() {
    let database = "livermore_adopt_busy";
    fresh(database).await;
    create(database).await;
    let mut conn = connect(database).await;
    sqlx::raw_sql(include_str!("../fixtures/old_schema_with_iam.sql"))
        .execute(&mut conn)
        .await
        .expect("load the old schema");
    let mut traffic = connect(database).await;
    let mut tx = traffic.begin().await.unwrap();
    sqlx::query("UPDATE users SET updated_at = now() WHERE username = 'ada'")
        .execute(&mut *tx)
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let run =
        tokio::task::spawn_blocking(move || sandbox(&["migrate", "--dry-run"], database, &[]))
            .await
            .unwrap();
    let took = started.elapsed();
    tx.rollback().await.unwrap();
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("adopting an existing users table"),
        "{}",
        run.stdout
    );
    // Well under the migrations' 5 s lock timeout.
    assert!(took < std::time::Duration::from_secs(4), "took {took:?}");
}

#[tokio::test]
async fn adopts_a_pre_iam_database() {
    adopt(
        "livermore_adopt_pre_iam",
        include_str!("../fixtures/old_schema_pre_iam.sql"),
    )
    .await;
}

#[tokio::test]
async fn adopts_a_database_with_the_iam_columns() {
    adopt(
        "livermore_adopt_iam",
        include_str!("../fixtures/old_schema_with_iam.sql"),
    )
    .await;
}

#[tokio::test]
async fn an_edited_migration_stops_the_run() {
    fresh("livermore_checksum").await;
    assert_eq!(sandbox(&["migrate"], "livermore_checksum", &[]).code, 0);
    let mut conn = connect("livermore_checksum").await;
    // What an edited file looks like from the database: its checksum no longer matches.
    sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x00' WHERE version = 2")
        .execute(&mut conn)
        .await
        .unwrap();

    let run = sandbox(&["migrate"], "livermore_checksum", &[]);
    let line = one_line_error(&run);
    assert!(
        line.contains("0002 users iam") && line.contains("edited after it was applied"),
        "{line}"
    );

    let status = sandbox(&["status"], "livermore_checksum", &[]);
    assert_eq!(status.code, 1);
    assert!(status.stdout.contains("MISMATCH"), "{}", status.stdout);
}

#[tokio::test]
async fn a_locked_table_fails_fast_and_leaves_the_database_as_it_was() {
    fresh("livermore_locked").await;
    create("livermore_locked").await;
    let mut conn = connect("livermore_locked").await;
    livermore_db::MIGRATOR
        .run_to(2, &mut conn)
        .await
        .expect("migrate to 0002");

    // Live traffic holding a lock on users.
    let mut traffic = connect("livermore_locked").await;
    let mut tx = traffic.begin().await.unwrap();
    sqlx::query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();

    let run = tokio::task::spawn_blocking(|| {
        sandbox(
            &["migrate", "--lock-budget-secs", "3"],
            "livermore_locked",
            &[],
        )
    })
    .await
    .unwrap();
    tx.rollback().await.unwrap();

    // It tried in short attempts (never queueing live traffic behind it for long), gave up at its
    // budget, and said who held the table.
    let line = one_line_error(&run);
    assert!(
        line.contains("0003")
            && line.contains("could not lock users")
            && line.contains("idle in transaction"),
        "{line}"
    );
    assert_eq!(
        applied_versions(&mut conn).await,
        [1, 2],
        "no half-applied migration"
    );
    let default: String = sqlx::query_scalar(
        "SELECT column_default FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'created_at'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(default, "now()", "0003 was rolled back");

    // Without the lock it goes through.
    assert_eq!(sandbox(&["migrate"], "livermore_locked", &[]).code, 0);
    assert_eq!(applied_versions(&mut conn).await, all_versions());
}

#[tokio::test]
async fn adoption_refuses_a_shape_other_than_the_migrations_create() {
    let fixture = include_str!("../fixtures/old_schema_with_iam.sql");
    // (database, edits to the fixture, what the command must say)
    type Variant = (
        &'static str,
        Vec<(&'static str, &'static str)>,
        &'static str,
    );
    let variants: [Variant; 6] = [
        (
            "livermore_shape_nullable_role",
            vec![(
                "role varchar(20) NOT NULL DEFAULT 'user'",
                "role varchar(20) DEFAULT 'user'",
            )],
            "column role is `character varying(20) DEFAULT 'user'::character varying`",
        ),
        (
            "livermore_shape_index",
            vec![(
                "CREATE UNIQUE INDEX users_identity",
                "CREATE INDEX users_identity",
            )],
            "index users_identity_provider_sub_idx is `CREATE INDEX",
        ),
        (
            "livermore_shape_role_length",
            vec![
                ("role varchar(20)", "role varchar(10)"),
                ("'subscriber_pro'", "'admin'"),
            ],
            "column role is `character varying(10)",
        ),
        (
            "livermore_shape_email_key",
            vec![(
                "CONSTRAINT users_email_unique UNIQUE",
                "CONSTRAINT users_email_key UNIQUE",
            )],
            "constraint users_email_unique is missing",
        ),
        (
            "livermore_shape_sub_text",
            vec![("identity_sub varchar(255)", "identity_sub text")],
            "column identity_sub is `text`",
        ),
        (
            "livermore_shape_elsewhere",
            vec![
                (
                    "CREATE TABLE users (",
                    "CREATE SCHEMA legacy; CREATE TABLE legacy.users (",
                ),
                (
                    "ON users (identity_provider",
                    "ON legacy.users (identity_provider",
                ),
                ("REFERENCES users (id)", "REFERENCES legacy.users (id)"),
                ("INSERT INTO users", "INSERT INTO legacy.users"),
            ],
            "",
        ),
    ];
    for (database, edits, expected) in variants {
        fresh(database).await;
        create(database).await;
        let mut sql = fixture.to_owned();
        for (from, to) in edits {
            assert!(
                sql.contains(from),
                "{database}: the fixture has no {from:?}"
            );
            sql = sql.replace(from, to);
        }
        let mut conn = connect(database).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap();
        if database.ends_with("elsewhere") {
            let set = format!("ALTER DATABASE {database} SET search_path = public, legacy");
            sqlx::raw_sql(sqlx::AssertSqlSafe(set))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        let before = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();

        let run = sandbox(&["migrate"], database, &[]);
        let line = one_line_error(&run).to_owned();
        if database.ends_with("elsewhere") {
            assert!(
                line.contains(r#"a table users exists in schema "legacy""#),
                "{database}: {line}"
            );
        } else if database.ends_with("_index") {
            // Refused by its definition before the adoption check runs, saying what it found.
            assert!(
                line.contains("not the one sign-ins need") && line.contains("found: CREATE INDEX"),
                "{database}: {line}"
            );
        } else {
            assert!(line.contains("refusing to adopt"), "{database}: {line}");
            assert!(run.stdout.contains(expected), "{database}:\n{}", run.stdout);
        }
        let mut conn = connect(database).await;
        let (after, recorded): (i64, bool) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace),
                    to_regclass('public._sqlx_migrations') IS NOT NULL",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(
            (after, recorded),
            (before, false),
            "{database}: nothing changed"
        );
    }
}

/// The sandbox as it is: 0001-0006 applied with the first texts of 0002 and 0005. `status` and a
/// dry run say what `migrate` will record and change nothing; `migrate` records the two under their
/// rewritten texts, 0009 as applied, and applies 0007 and 0008.
#[tokio::test]
async fn a_sandbox_that_applied_the_first_texts_migrates_on() {
    let db = "livermore_first_texts";
    create(db).await;
    let mut conn = connect(db).await;
    crate::migrations::first_texts()
        .run(&mut conn)
        .await
        .expect("the first texts");
    let recorded = "SELECT string_agg(version || ':' || encode(checksum, 'hex'), ',' ORDER BY version) FROM _sqlx_migrations";
    let before: String = sqlx::query_scalar(recorded)
        .fetch_one(&mut conn)
        .await
        .unwrap();

    for args in [&["status"][..], &["migrate", "--dry-run"][..]] {
        let run = sandbox(args, db, &[]);
        assert_eq!(run.code, 0, "{args:?}: {}{}", run.stdout, run.stderr);
        assert!(
            run.stdout
                .contains("migration 0002 was applied here under its first text")
                && run
                    .stdout
                    .contains("migration 0005 was applied here under its first text")
                && run.stdout.contains("would record under the rewritten one")
                && run
                    .stdout
                    .contains("migration 0009 would be recorded as applied")
                && !run.stdout.contains("MISMATCH"),
            "{args:?}: {}",
            run.stdout
        );
        let now: String = sqlx::query_scalar(recorded)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(now, before, "{args:?} changed nothing");
    }

    let run = sandbox(&["migrate"], db, &[]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("recorded under the rewritten one")
            && run.stdout.contains("migration 0009 is recorded as applied")
            && run.stdout.contains("applied 0007 users identity index")
            && run.stdout.contains("applied 0008 users checks validate")
            && !run.stdout.contains("applied 0009"),
        "{}",
        run.stdout
    );
    let status = sandbox(&["status"], db, &[]);
    assert_eq!(status.code, 0, "{}", status.stdout);
    assert!(
        status.stdout.contains("9 applied, 0 pending, 0 mismatched"),
        "{}",
        status.stdout
    );
}
