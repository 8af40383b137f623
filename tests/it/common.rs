//! Helpers shared by the integration tests: reading the `users` table's shape from the catalog,
//! locking `users`.
#![allow(dead_code)]

use sqlx::PgExecutor;

/// One column as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Column {
    pub name: String,
    pub data_type: String,
    pub max_length: Option<i32>,
    pub default: Option<String>,
    pub nullable: bool,
}

/// One constraint: name, kind (`p`, `u`, `c`, `f`), its definition, and whether it is validated.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Constraint {
    pub name: String,
    pub kind: String,
    pub definition: String,
    pub validated: bool,
}

/// The `users` table's columns, constraints and index definitions, in a stable order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsersShape {
    pub columns: Vec<Column>,
    pub constraints: Vec<Constraint>,
    pub indexes: Vec<(String, String)>,
}

pub async fn users_shape<'c, E>(conn: E) -> UsersShape
where
    E: PgExecutor<'c> + Copy,
{
    let columns = sqlx::query_as::<_, Column>(
        "SELECT column_name::text AS name, data_type::text AS data_type,
                character_maximum_length::int4 AS max_length, column_default::text AS default,
                is_nullable = 'YES' AS nullable
         FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = 'users'
         ORDER BY ordinal_position",
    )
    .fetch_all(conn)
    .await
    .expect("read columns");
    let constraints = sqlx::query_as::<_, Constraint>(
        "SELECT conname::text AS name, contype::text AS kind, pg_get_constraintdef(oid) AS definition,
                convalidated AS validated
         FROM pg_constraint WHERE conrelid = 'users'::regclass ORDER BY conname",
    )
    .fetch_all(conn)
    .await
    .expect("read constraints");
    let indexes = sqlx::query_as::<_, (String, String)>(
        "SELECT indexname::text, indexdef FROM pg_indexes
         WHERE schemaname = current_schema() AND tablename = 'users' ORDER BY indexname",
    )
    .fetch_all(conn)
    .await
    .expect("read indexes");
    UsersShape {
        columns,
        constraints,
        indexes,
    }
}

fn column(
    name: &str,
    data_type: &str,
    max_length: Option<i32>,
    default: Option<&str>,
    nullable: bool,
) -> Column {
    Column {
        name: name.into(),
        data_type: data_type.into(),
        max_length,
        default: default.map(Into::into),
        nullable,
    }
}

fn constraint(name: &str, kind: &str, definition: &str) -> Constraint {
    Constraint {
        name: name.into(),
        kind: kind.into(),
        definition: definition.into(),
        validated: true,
    }
}

/// The shape the migrations must produce, written out by hand from the specification.
pub fn expected_users_shape() -> UsersShape {
    UsersShape {
        columns: vec![
            column("id", "integer", None, Some("nextval('users_id_seq'::regclass)"), false),
            column("username", "character varying", Some(50), None, false),
            column("email", "character varying", Some(255), None, false),
            column("is_active", "boolean", None, Some("true"), false),
            // Migration 0003: UTC whatever the session's TimeZone (the baseline had `now()`).
            column("created_at", "timestamp without time zone", None, Some("(now() AT TIME ZONE 'UTC'::text)"), false),
            column("updated_at", "timestamp without time zone", None, Some("(now() AT TIME ZONE 'UTC'::text)"), false),
            column("identity_provider", "character varying", Some(20), None, true),
            column("identity_sub", "character varying", Some(255), None, true),
            column("display_name", "character varying", Some(100), None, true),
            column("identity_picture_url", "text", None, None, true),
            column("role", "character varying", Some(20), Some("'user'::character varying"), false),
            column("last_login_at", "timestamp without time zone", None, None, true),
            // Migration 0004: the provider's updated_at of the last synced profile.
            column("identity_updated_at", "timestamp without time zone", None, None, true),
            column("identity_role_updated_at", "timestamp without time zone", None, None, true),
            // Migration 0005: who set the role, and a deleted user's released address.
            column("role_source", "character varying", Some(10), Some("'manual'::character varying"), false),
            column("released_email", "character varying", Some(255), None, true),
            // Migration 0006: the role Clerk last gave, kept when the role is set by hand.
            column("clerk_role", "character varying", Some(20), None, true),
        ],
        constraints: vec![
            // NOT VALID: added without a scan (every row NULL then), enforced on every write.
            Constraint {
                validated: false,
                ..constraint(
                    "users_clerk_role_check",
                    "c",
                    "CHECK (((clerk_role)::text = ANY ((ARRAY['user'::character varying, 'admin'::character varying, 'subscriber_basic'::character varying, 'subscriber_pro'::character varying])::text[]))) NOT VALID",
                )
            },
            constraint("users_email_unique", "u", "UNIQUE (email)"),
            constraint(
                "users_identity_pair_check",
                "c",
                "CHECK ((((identity_provider IS NULL) AND (identity_sub IS NULL)) OR ((identity_provider IS NOT NULL) AND (identity_sub IS NOT NULL) AND ((identity_provider)::text <> ''::text) AND ((identity_sub)::text <> ''::text))))",
            ),
            constraint("users_pkey", "p", "PRIMARY KEY (id)"),
            constraint(
                "users_role_check",
                "c",
                "CHECK (((role)::text = ANY ((ARRAY['user'::character varying, 'admin'::character varying, 'subscriber_basic'::character varying, 'subscriber_pro'::character varying])::text[])))",
            ),
            constraint(
                "users_role_source_check",
                "c",
                "CHECK (((role_source)::text = ANY ((ARRAY['manual'::character varying, 'clerk'::character varying])::text[])))",
            ),
            constraint("users_username_unique", "u", "UNIQUE (username)"),
        ],
        indexes: vec![
            (
                "users_email_unique".into(),
                "CREATE UNIQUE INDEX users_email_unique ON public.users USING btree (email)".into(),
            ),
            (
                "users_identity_provider_sub_idx".into(),
                "CREATE UNIQUE INDEX users_identity_provider_sub_idx ON public.users USING btree (identity_provider, identity_sub) WHERE (identity_provider IS NOT NULL)".into(),
            ),
            ("users_pkey".into(), "CREATE UNIQUE INDEX users_pkey ON public.users USING btree (id)".into()),
            (
                "users_username_unique".into(),
                "CREATE UNIQUE INDEX users_username_unique ON public.users USING btree (username)".into(),
            ),
        ],
    }
}

/// The shape after reverting 0009, 0008 and 0007: no `users_identity_provider_sub_idx` (0008's and
/// 0009's downs change nothing).
pub fn expected_users_shape_before_0007() -> UsersShape {
    let mut shape = expected_users_shape();
    shape
        .indexes
        .retain(|(name, _)| name != "users_identity_provider_sub_idx");
    shape
}

/// The shape after reverting 0006 (and 0007-0009): no `clerk_role` and its check.
pub fn expected_users_shape_before_0006() -> UsersShape {
    let mut shape = expected_users_shape_before_0007();
    shape.columns.retain(|c| c.name != "clerk_role");
    shape
        .constraints
        .retain(|c| c.name != "users_clerk_role_check");
    shape
}

/// The shape after reverting 0006 and 0005: no `role_source`, `released_email` and their check.
pub fn expected_users_shape_before_0005() -> UsersShape {
    let mut shape = expected_users_shape_before_0006();
    shape
        .columns
        .retain(|c| c.name != "role_source" && c.name != "released_email");
    shape
        .constraints
        .retain(|c| c.name != "users_role_source_check");
    shape
}

/// The shape after reverting 0005, 0004 and 0003: no `identity_updated_at`, and the baseline's
/// `now()` defaults on `created_at` and `updated_at`.
pub fn expected_users_shape_before_0003() -> UsersShape {
    let mut shape = expected_users_shape_before_0005();
    shape
        .columns
        .retain(|c| c.name != "identity_updated_at" && c.name != "identity_role_updated_at");
    for c in &mut shape.columns {
        if c.name == "created_at" || c.name == "updated_at" {
            c.default = Some("now()".into());
        }
    }
    shape
}

/// The SQLSTATE of a database error, if it is one.
pub fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

/// The versions of the crate's up migrations, in order.
pub fn all_versions() -> Vec<i64> {
    livermore_db::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .collect()
}

/// The versions recorded as successfully applied.
pub async fn applied_versions<'c>(conn: impl PgExecutor<'c>) -> Vec<i64> {
    sqlx::query_scalar::<_, i64>(
        "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
    )
    .fetch_all(conn)
    .await
    .expect("read _sqlx_migrations")
}

/// Every row of a table as JSON, one line each, ordered by id: compares tables before and after
/// migrating.
pub async fn rows_of<'c>(conn: impl PgExecutor<'c>, table: &'static str) -> String {
    let sql = match table {
        // Without the sync bookkeeping columns of 0004 and 0005, which the old schemas never had.
        "users" => {
            "SELECT coalesce(string_agg((to_jsonb(t) - 'identity_updated_at' - 'identity_role_updated_at' - 'role_source' - 'released_email' - 'clerk_role')::text, E'\\n' ORDER BY id), '')
             FROM users t"
        }
        "watchlists" => {
            "SELECT coalesce(string_agg(to_jsonb(t)::text, E'\\n' ORDER BY id), '') FROM watchlists t"
        }
        other => panic!("no snapshot query for {other}"),
    };
    sqlx::query_scalar::<_, String>(sql)
        .fetch_one(conn)
        .await
        .expect("snapshot rows")
}

/// The columns that existed before IAM, one line per user ordered by id.
pub async fn pre_iam_rows<'c>(conn: impl PgExecutor<'c>) -> String {
    sqlx::query_scalar::<_, String>(
        "SELECT coalesce(string_agg(concat_ws('|', id, username, email, is_active, created_at, updated_at),
                                    E'\\n' ORDER BY id), '') FROM users",
    )
    .fetch_one(conn)
    .await
    .expect("snapshot pre-IAM columns")
}

/// A database at version 8 with `n` users whose role a Clerk event set before 0005 (admin, dated
/// 2023): each one a row 0009's backfill changes (`role_source` to `clerk`), ids 1 to `n`.
pub async fn at_8_with_rows_to_backfill(pool: &sqlx::PgPool, n: i32) {
    livermore_db::MIGRATOR.run_to(4, pool).await.unwrap();
    sqlx::query(
        "INSERT INTO users (username, email, identity_provider, identity_sub, role,
                            identity_updated_at, identity_role_updated_at)
         SELECT 'u' || n, 'u' || n || '@example.com', 'clerk', 'user_' || n, 'admin',
                '2023-11-14', '2023-11-14'
         FROM generate_series(1, $1) AS n",
    )
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
    livermore_db::MIGRATOR.run_to(8, pool).await.unwrap();
}

/// How many users 0009's backfill has marked as set by Clerk.
pub async fn backfilled<'c>(conn: impl PgExecutor<'c>) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM users WHERE role_source = 'clerk'")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// The URL of the test's own database: DATABASE_URL with the database name replaced (for the
/// operator command, which reads LIVERMORE_DATABASE_URL).
#[cfg_attr(not(feature = "cli"), allow(dead_code))]
pub fn url_of(pool: &sqlx::PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let database = pool
        .connect_options()
        .get_database()
        .expect("a database name")
        .to_owned();
    let (server, _) = base.rsplit_once('/').expect("a URL with a database");
    format!("{server}/{database}")
}

/// Takes `users`' strongest lock in a transaction of its own (until it is rolled back or dropped):
/// every statement on `users`, look-ups included, waits on it.
pub async fn lock_users(pool: &sqlx::PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut locker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    locker
}
