-- Reverting the baseline drops `users` only when that loses nothing:
--   * the table was created by 0001 (not adopted from the older tooling), and
--   * it holds no rows, and
--   * no other table references it (DROP without CASCADE fails otherwise).
-- In every other case it refuses with an error and the table stays as it is. It locks the table before it
-- looks, so that no writer can commit a row between the check and the drop.
SET LOCAL lock_timeout = '5s';

DO $migration$
DECLARE
    users_table regclass := to_regclass(format('%I.users', current_schema()));
    row_count   bigint;
BEGIN
    IF users_table IS NULL THEN
        RETURN;
    END IF;
    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', users_table);
    IF obj_description(users_table, 'pg_class') IS DISTINCT FROM 'livermore-db: created by migration 0001' THEN
        RAISE EXCEPTION 'livermore-db 0001 down: refusing to drop table users: it existed before migration 0001 ran (adopted), so it is not this migration''s to drop';
    END IF;
    SELECT count(*) INTO row_count FROM users;
    IF row_count > 0 THEN
        RAISE EXCEPTION 'livermore-db 0001 down: refusing to drop table users: it holds % rows', row_count;
    END IF;
    DROP TABLE users;
END
$migration$;
