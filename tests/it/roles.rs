//! `Role` through the real `users.role` column (varchar(20)) and back, in every `query!` form.
use livermore_db::{Role, UserId};
use sqlx::PgPool;

/// sqlx.toml's table overrides type `users.id` as `UserId` and `users.role` as `Role` in every query.
#[derive(Debug)]
struct UserRole {
    id: UserId,
    role: Role,
}

async fn insert_with_role(pool: &PgPool, name: &str, role: Role) -> UserId {
    sqlx::query_scalar!(
        "INSERT INTO users (username, email, role) VALUES ($1, $2, $3) RETURNING id",
        name,
        format!("{name}@example.test"),
        role as Role
    )
    .fetch_one(pool)
    .await
    .expect("insert")
}

#[sqlx::test]
async fn every_role_round_trips_through_the_column(pool: PgPool) {
    for role in Role::ALL {
        let id = insert_with_role(&pool, role.as_str(), role).await;

        let stored = sqlx::query_scalar!(
            r#"SELECT role AS "role: String" FROM users WHERE id = $1"#,
            id.0
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            stored,
            role.as_str(),
            "the column holds the snake_case spelling"
        );

        let via_query = sqlx::query!("SELECT role FROM users WHERE id = $1", id.0)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(via_query.role, role);

        // A per-query override, as services write it (the crate's README and `Role`'s docs show it).
        let via_override = sqlx::query_scalar!(
            r#"SELECT role AS "role: Role" FROM users WHERE id = $1"#,
            id.0
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(via_override, role);

        let via_query_as =
            sqlx::query_as!(UserRole, "SELECT id, role FROM users WHERE id = $1", id.0)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!((via_query_as.id, via_query_as.role), (id, role));

        let from_text = sqlx::query_scalar!(
            r#"SELECT role::text AS "role!: Role" FROM users WHERE id = $1"#,
            id.0
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(from_text, role, "decodes from text as well as varchar");

        let bound_as_str =
            sqlx::query_scalar!("SELECT count(*) FROM users WHERE role = $1", role.as_str())
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(bound_as_str, Some(1));
    }

    let subscribers = sqlx::query_scalar!(
        "SELECT count(*) FROM users WHERE role = ANY($1::varchar[])",
        &[Role::SubscriberBasic, Role::SubscriberPro] as &[Role]
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        subscribers,
        Some(2),
        "a slice of roles binds as a varchar array"
    );
}

#[sqlx::test]
async fn the_default_role_is_user(pool: PgPool) {
    let role = sqlx::query_scalar!(
        "INSERT INTO users (username, email) VALUES ('d', 'd@example.test') RETURNING role"
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(role, Role::default());
    assert_eq!(role, Role::User);
}

#[sqlx::test]
async fn an_unknown_role_in_the_database_is_a_decode_error(pool: PgPool) {
    let literal = sqlx::query_scalar!(r#"SELECT 'superuser'::varchar AS "role!: Role""#)
        .fetch_one(&pool)
        .await;
    match literal {
        Err(sqlx::Error::ColumnDecode { source, .. }) => {
            let msg = source.to_string();
            assert!(msg.contains(r#"invalid role "superuser""#), "{msg}");
            assert!(
                msg.contains("user, admin, subscriber_basic, subscriber_pro"),
                "{msg}"
            );
        }
        other => panic!("expected a decode error, got {other:?}"),
    }

    // A row the old tooling could have written before the check existed.
    sqlx::query!("ALTER TABLE users DROP CONSTRAINT users_role_check")
        .execute(&pool)
        .await
        .unwrap();
    let id = sqlx::query_scalar!("INSERT INTO users (username, email, role) VALUES ('old', 'old@example.test', 'Admin') RETURNING id")
        .fetch_one(&pool)
        .await
        .unwrap();
    let row = sqlx::query_as!(UserRole, "SELECT id, role FROM users WHERE id = $1", id.0)
        .fetch_one(&pool)
        .await;
    assert!(
        matches!(row, Err(sqlx::Error::ColumnDecode { .. })),
        "{row:?}"
    );
}

/// The quoted literals of a constraint definition, in order.
fn quoted_literals(definition: &str) -> Vec<String> {
    definition
        .split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// `users_role_check`'s definition on a migrated database.
async fn role_check_definition(pool: &PgPool) -> String {
    sqlx::query_scalar!(
        r#"SELECT pg_get_constraintdef(oid) AS "definition!" FROM pg_constraint
           WHERE conrelid = 'users'::regclass AND conname = 'users_role_check'"#
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn the_role_check_constraint_lists_exactly_the_enum(pool: PgPool) {
    let definition = role_check_definition(&pool).await;
    assert_eq!(quoted_literals(&definition), Role::NAMES, "{definition}");

    // And it is enforced: every role is accepted, anything else is refused.
    for role in Role::ALL {
        insert_with_role(&pool, role.as_str(), role).await;
    }
    for bad in ["superuser", "Admin", "", "user "] {
        let err = sqlx::query!(
            "INSERT INTO users (username, email, role) VALUES ('x', 'x@example.test', $1)",
            bad
        )
        .execute(&pool)
        .await
        .unwrap_err();
        assert_eq!(
            err.as_database_error().and_then(|e| e.constraint()),
            Some("users_role_check"),
            "{bad:?}"
        );
    }
}

/// The TypeScript services' `role.ts` (committed in docs/typescript/) is what the crate generates
/// now, and lists exactly the roles the migrated database's `users_role_check` allows: a role added
/// on one side and not the others fails here. (`make test` then compiles the file under
/// `tsc --strict` and runs it: scripts/typescript-check.sh.)
#[sqlx::test]
async fn the_typescript_roles_file_is_generated_and_matches_the_database(pool: PgPool) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/typescript/role.ts");
    let committed = std::fs::read_to_string(path).unwrap();
    assert!(
        committed == Role::typescript_module(),
        "docs/typescript/role.ts is not what the Role enum generates: run `make typescript-roles` and commit it"
    );
    let line = committed
        .lines()
        .find(|l| l.starts_with("export const USER_ROLES = ["))
        .expect("role.ts exports USER_ROLES");
    let in_file = quoted_literals(line);
    let definition = role_check_definition(&pool).await;
    assert_eq!(quoted_literals(&definition), in_file, "{definition}");
    assert_eq!(in_file, Role::NAMES);
}
