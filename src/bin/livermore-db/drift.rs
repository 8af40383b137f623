//! `drift`: does the live schema of the tables the migrations manage match what the migrations build?
//!
//! The reference is built on the same server, inside one transaction that is rolled back at the end: a
//! scratch schema, the crate's migrations applied to it, and both schemas read from the catalog. Nothing
//! is left behind and the live tables are only read.

use std::collections::BTreeMap;

use livermore_db::MIGRATOR;
use sqlx::migrate::{Migration, Migrator};
use sqlx::{Connection, PgConnection};

use crate::env::Target;
use crate::failure::{Failure, describe};

const SCRATCH: &str = "livermore_db_drift_scratch";
/// Where the adoption check copies the live tables' structure to try the pending migrations on.
const ADOPT_SCRATCH: &str = "livermore_db_adopt_scratch";

/// One table as the catalog describes it, keyed by name for comparing.
#[derive(Debug, Default, PartialEq)]
pub struct Table {
    /// name → `type NOT NULL DEFAULT …`
    columns: BTreeMap<String, String>,
    /// name → definition (and `NOT VALID` where it is)
    constraints: BTreeMap<String, String>,
    /// name → `CREATE INDEX …`
    indexes: BTreeMap<String, String>,
}

/// Reads the tables of `schema` (those named, or all but sqlx's bookkeeping), with the search path set
/// to that schema so that definitions print unqualified on both sides.
async fn read_schema(
    conn: &mut PgConnection,
    schema: &str,
    only: Option<&[String]>,
) -> Result<BTreeMap<String, Table>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT set_config('search_path', quote_ident($1), true) AS "path!""#,
        schema
    )
    .fetch_one(&mut *conn)
    .await?;
    let names = sqlx::query_scalar!(
        r#"SELECT c.relname::text AS "name!"
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND c.relname <> '_sqlx_migrations'
           ORDER BY 1"#,
        schema
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut tables = BTreeMap::new();
    for name in names {
        if only.is_some_and(|only| !only.contains(&name)) {
            continue;
        }
        let mut table = Table::default();
        let columns = sqlx::query!(
            r#"SELECT a.attname::text AS "name!",
                      format_type(a.atttypid, a.atttypmod) AS "data_type!",
                      a.attnotnull AS "not_null!",
                      pg_get_expr(d.adbin, d.adrelid) AS "default_expr?"
               FROM pg_attribute a
               LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
               WHERE a.attrelid = to_regclass(quote_ident($1) || '.' || quote_ident($2))
                 AND a.attnum > 0 AND NOT a.attisdropped
               ORDER BY a.attnum"#,
            schema,
            name
        )
        .fetch_all(&mut *conn)
        .await?;
        for c in columns {
            let mut def = c.data_type;
            if c.not_null {
                def.push_str(" NOT NULL");
            }
            if let Some(d) = c.default_expr {
                def.push_str(" DEFAULT ");
                def.push_str(&d);
            }
            table.columns.insert(c.name, def);
        }
        let constraints = sqlx::query!(
            r#"SELECT conname::text AS "name!", pg_get_constraintdef(oid) AS "definition!",
                      convalidated AS "validated!"
               FROM pg_constraint
               WHERE conrelid = to_regclass(quote_ident($1) || '.' || quote_ident($2))"#,
            schema,
            name
        )
        .fetch_all(&mut *conn)
        .await?;
        for c in constraints {
            let mut def = c.definition;
            if !c.validated && !def.ends_with("NOT VALID") {
                def.push_str(" NOT VALID");
            }
            table.constraints.insert(c.name, def);
        }
        let indexes = sqlx::query!(
            // pg_get_indexdef always qualifies the table with its schema; the schemas differ by design.
            r#"SELECT ic.relname::text AS "name!",
                      replace(pg_get_indexdef(i.indexrelid), ' ON ' || quote_ident($1) || '.', ' ON ')
                          AS "definition!",
                      i.indisvalid AS "valid!"
               FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
               WHERE i.indrelid = to_regclass(quote_ident($1) || '.' || quote_ident($2))"#,
            schema,
            name
        )
        .fetch_all(&mut *conn)
        .await?;
        for i in indexes {
            // An INVALID index (a failed concurrent build) is not the index it names: sign-ins
            // cannot use it, so it is drift.
            let mut def = i.definition;
            if !i.valid {
                def.push_str(" INVALID");
            }
            table.indexes.insert(i.name, def);
        }
        tables.insert(name, table);
    }
    Ok(tables)
}

fn compare_maps(
    out: &mut Vec<String>,
    table: &str,
    kind: &str,
    live: &BTreeMap<String, String>,
    expected: &BTreeMap<String, String>,
) {
    for (name, want) in expected {
        match live.get(name) {
            None => out.push(format!(
                "{table}: {kind} {name} is missing (migrations: {want})"
            )),
            Some(have) if have != want => out.push(format!(
                "{table}: {kind} {name} differs\n      live:       {have}\n      migrations: {want}"
            )),
            Some(_) => {}
        }
    }
    for (name, have) in live {
        if !expected.contains_key(name) {
            out.push(format!(
                "{table}: {kind} {name} is not in the migrations (live: {have})"
            ));
        }
    }
}

fn differences(live: &BTreeMap<String, Table>, expected: &BTreeMap<String, Table>) -> Vec<String> {
    let mut out = Vec::new();
    for (name, want) in expected {
        let Some(have) = live.get(name) else {
            out.push(format!("table {name} is missing"));
            continue;
        };
        compare_maps(&mut out, name, "column", &have.columns, &want.columns);
        compare_maps(
            &mut out,
            name,
            "constraint",
            &have.constraints,
            &want.constraints,
        );
        compare_maps(&mut out, name, "index", &have.indexes, &want.indexes);
    }
    out
}

/// The schema the migrations build (applied to a scratch schema) and the live one, read inside one
/// transaction that is rolled back: nothing is left behind. With `apply_pending`, what adopting the
/// database would leave: the pending migrations run on an empty copy of the live tables' structure
/// (columns, defaults, constraints, indexes and comments, under their names) in a second scratch
/// schema, and that copy is read; the live tables are only read from the catalog.
pub async fn reference_and_live(
    conn: &mut PgConnection,
    apply_pending: bool,
) -> Result<(BTreeMap<String, Table>, BTreeMap<String, Table>), Failure> {
    let fail =
        |e: sqlx::Error| Failure::new(format!("reading the schema failed: {}", describe(&e)));
    let live_schema = sqlx::query_scalar!(r#"SELECT current_schema() AS "schema!""#)
        .fetch_one(&mut *conn)
        .await
        .map_err(fail)?;

    let mut tx = conn.begin().await.map_err(fail)?;
    sqlx::query!("CREATE SCHEMA livermore_db_drift_scratch")
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
    sqlx::query_scalar!(
        r#"SELECT set_config('search_path', 'livermore_db_drift_scratch', true) AS "path!""#
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(fail)?;
    let mut migrator = Migrator::with_migrations(MIGRATOR.iter().map(in_transaction).collect());
    migrator.set_locking(false);
    migrator.run(&mut *tx).await.map_err(|e| {
        Failure::new(format!(
            "building the reference schema from the migrations failed: {e}"
        ))
    })?;
    let expected = read_schema(&mut tx, SCRATCH, None).await.map_err(fail)?;
    let managed: Vec<String> = expected.keys().cloned().collect();
    let live = if apply_pending {
        // The pending migrations run on an empty copy of the live tables' structure, not on the
        // tables: on them they would take their locks (ACCESS EXCLUSIVE on users) and do their scans
        // and index builds for as long as all of them together take (seconds at a million rows, with
        // every read and write of users waiting; make bench-migrate).
        sqlx::query!(
            // The copy reads the live tables' definitions under ACCESS SHARE: like the migrations,
            // give up after 5 s rather than queue behind a lock someone holds.
            r#"SELECT set_config('lock_timeout', '5s', true) AS "timeout!",
                      set_config('livermore.copy_from', $1, true) AS "from!",
                      set_config('livermore.copy_to', $2, true) AS "to!",
                      set_config('livermore.copy_tables', $3, true) AS "tables!""#,
            live_schema,
            ADOPT_SCRATCH,
            managed.join(",")
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(fail)?;
        sqlx::query!(
            r#"DO $copy$
            DECLARE
                src constant text := current_setting('livermore.copy_from');
                dst constant text := current_setting('livermore.copy_to');
                t text;
                rel regclass;
                r record;
                seq text[];
            BEGIN
                EXECUTE format('CREATE SCHEMA %I', dst);
                FOREACH t IN ARRAY string_to_array(current_setting('livermore.copy_tables'), ',') LOOP
                    rel := to_regclass(format('%I.%I', src, t));
                    CONTINUE WHEN rel IS NULL;
                    -- Columns with their types, NOT NULL, defaults and comments.
                    EXECUTE format('CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS INCLUDING COMMENTS '
                                   'INCLUDING GENERATED INCLUDING IDENTITY INCLUDING STORAGE)', dst, t, rel);
                    IF obj_description(rel, 'pg_class') IS NOT NULL THEN
                        EXECUTE format('COMMENT ON TABLE %I.%I IS %L', dst, t, obj_description(rel, 'pg_class'));
                    END IF;
                    -- A serial column's sequence, copied, so that its default reads the same.
                    FOR r IN SELECT a.attname, pg_get_serial_sequence(rel::text, a.attname) AS owned
                             FROM pg_attribute a
                             WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped LOOP
                        CONTINUE WHEN r.owned IS NULL;
                        seq := parse_ident(r.owned);
                        EXECUTE format('CREATE SEQUENCE IF NOT EXISTS %I.%I', dst, seq[array_upper(seq, 1)]);
                        EXECUTE format('ALTER TABLE %I.%I ALTER COLUMN %I SET DEFAULT nextval(%L::regclass)',
                                       dst, t, r.attname, format('%I.%I', dst, seq[array_upper(seq, 1)]));
                    END LOOP;
                    -- Constraints under their names (NOT VALID kept), with their comments; not foreign
                    -- keys, which would lock the tables they reference.
                    FOR r IN SELECT conname, pg_get_constraintdef(oid) AS def,
                                    obj_description(oid, 'pg_constraint') AS note
                             FROM pg_constraint WHERE conrelid = rel AND contype <> 'f' LOOP
                        EXECUTE format('ALTER TABLE %I.%I ADD CONSTRAINT %I %s', dst, t, r.conname, r.def);
                        IF r.note IS NOT NULL THEN
                            EXECUTE format('COMMENT ON CONSTRAINT %I ON %I.%I IS %L', r.conname, dst, t, r.note);
                        END IF;
                    END LOOP;
                    -- The other indexes, under their names, with their comments.
                    FOR r IN SELECT ic.relname, pg_get_indexdef(i.indexrelid) AS def,
                                    obj_description(i.indexrelid, 'pg_class') AS note
                             FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                             WHERE i.indrelid = rel
                               AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid) LOOP
                        EXECUTE replace(r.def, format(' ON %s ', rel::text), format(' ON %I.%I ', dst, t));
                        IF r.note IS NOT NULL THEN
                            EXECUTE format('COMMENT ON INDEX %I.%I IS %L', dst, r.relname, r.note);
                        END IF;
                    END LOOP;
                END LOOP;
            END
            $copy$"#
        )
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
        sqlx::query_scalar!(
            r#"SELECT set_config('search_path', quote_ident($1), true) AS "path!""#,
            ADOPT_SCRATCH
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(fail)?;
        migrator
            .run(&mut *tx)
            .await
            .map_err(|e| Failure::new(format!("trying the pending migrations failed: {e}")))?;
        read_schema(&mut tx, ADOPT_SCRATCH, Some(&managed))
            .await
            .map_err(fail)?
    } else {
        read_schema(&mut tx, &live_schema, Some(&managed))
            .await
            .map_err(fail)?
    };
    tx.rollback().await.map_err(fail)?;
    Ok((expected, live))
}

/// A migration as it runs inside the check's transaction, on empty tables: one marked
/// `-- no-transaction` (0007 builds an index CONCURRENTLY, 0009 commits batch by batch) cannot run
/// in a transaction, so its concurrent builds become plain ones, which build the same index. (0009's
/// batches never commit here: its tables are empty.) The text is this crate's own, embedded.
fn in_transaction(m: &Migration) -> Migration {
    if !m.no_tx {
        return m.clone();
    }
    Migration::new(
        m.version,
        m.description.clone(),
        m.migration_type,
        sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(
            m.sql.as_str().replace(" CONCURRENTLY", ""),
        )),
        false,
    )
}

/// What an adopted database would lack or hold differently from what the migrations create: every
/// column, constraint and index of the reference must be there with the same definition (a check
/// left `NOT VALID` over old rows is accepted); objects of its own beside them are allowed.
pub fn adoption_mismatches(
    live: &BTreeMap<String, Table>,
    expected: &BTreeMap<String, Table>,
) -> Vec<String> {
    let strip = |d: &str| d.trim_end_matches(" NOT VALID").to_owned();
    let mut out = Vec::new();
    for (name, want) in expected {
        let Some(have) = live.get(name) else {
            out.push(format!("table {name} is missing"));
            continue;
        };
        let kinds = [
            ("column", &have.columns, &want.columns),
            ("constraint", &have.constraints, &want.constraints),
            ("index", &have.indexes, &want.indexes),
        ];
        for (kind, have, want) in kinds {
            for (object, definition) in want {
                match have.get(object) {
                    None => out.push(format!(
                        "{name}: {kind} {object} is missing (the migrations create: {definition})"
                    )),
                    Some(d) if strip(d) != strip(definition) => out.push(format!(
                        "{name}: {kind} {object} is `{d}`, the migrations create `{definition}`"
                    )),
                    Some(_) => {}
                }
            }
        }
    }
    out
}

/// `drift`: prints each difference; `Ok(false)` (exit status 1) when there is any.
pub async fn drift(target: &Target) -> Result<bool, Failure> {
    println!("target: {}", target.shown);
    let mut conn = target.connect_existing().await?;
    let (expected, live) = reference_and_live(&mut conn, false).await?;
    let managed: Vec<String> = expected.keys().cloned().collect();
    let diffs = differences(&live, &expected);
    if diffs.is_empty() {
        println!(
            "no drift: {} matches the migrations ({})",
            if managed.len() == 1 {
                "the table"
            } else {
                "every table"
            },
            managed.join(", ")
        );
        Ok(true)
    } else {
        println!("drift: {} difference(s) from the migrations", diffs.len());
        for d in &diffs {
            println!("  - {d}");
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(columns: &[(&str, &str)]) -> Table {
        Table {
            columns: columns
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Table::default()
        }
    }

    #[test]
    fn differences_are_named() {
        let expected = BTreeMap::from([(
            "users".to_owned(),
            table(&[
                ("id", "integer NOT NULL"),
                ("name", "character varying(100)"),
            ]),
        )]);
        assert!(differences(&expected, &expected).is_empty());
        let live = BTreeMap::from([(
            "users".to_owned(),
            table(&[
                ("id", "integer NOT NULL"),
                ("name", "character varying(200)"),
                ("x", "text"),
            ]),
        )]);
        let d = differences(&live, &expected);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].contains("column name differs") && d[0].contains("character varying(200)"));
        assert!(d[1].contains("column x is not in the migrations"));
        assert_eq!(
            differences(&BTreeMap::new(), &expected),
            ["table users is missing"]
        );
    }
}
