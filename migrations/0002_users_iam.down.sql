-- Reverting IAM removes only what 0002 created (objects carrying its comment marker): the two checks,
-- the index (which 0002's first text built; now 0007 builds it and its down drops it) and the columns.
-- Columns adopted from the older tooling stay.
-- It refuses, changing nothing, while any column it would drop still holds identity data (a non-NULL
-- value, or a role other than the default 'user'): clear those first if losing them is really meant.
-- It locks `users` before it looks, so that no writer can commit data between the checks and the drops.
SET LOCAL lock_timeout = '5s';

LOCK TABLE users IN ACCESS EXCLUSIVE MODE;

DO $migration$
DECLARE
    marker constant text := 'livermore-db: added by migration 0002';
    own_columns text[];
    col text;
    holds_data boolean;
BEGIN
    SELECT coalesce(array_agg(a.attname::text ORDER BY a.attnum), '{}') INTO own_columns
    FROM pg_attribute a
    WHERE a.attrelid = 'users'::regclass AND a.attnum > 0 AND NOT a.attisdropped
      AND col_description('users'::regclass, a.attnum) = marker;

    FOREACH col IN ARRAY own_columns LOOP
        IF col = 'role' THEN
            EXECUTE 'SELECT EXISTS (SELECT 1 FROM users WHERE role <> ''user'')' INTO holds_data;
        ELSE
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM users WHERE %I IS NOT NULL)', col) INTO holds_data;
        END IF;
        IF holds_data THEN
            RAISE EXCEPTION 'livermore-db 0002 down: refusing to drop column users.%: it holds data', col;
        END IF;
    END LOOP;

    IF obj_description((SELECT oid FROM pg_constraint WHERE conrelid = 'users'::regclass AND conname = 'users_role_check'), 'pg_constraint') = marker THEN
        ALTER TABLE users DROP CONSTRAINT users_role_check;
    END IF;
    IF obj_description((SELECT oid FROM pg_constraint WHERE conrelid = 'users'::regclass AND conname = 'users_identity_pair_check'), 'pg_constraint') = marker THEN
        ALTER TABLE users DROP CONSTRAINT users_identity_pair_check;
    END IF;
    IF obj_description(to_regclass(format('%I.users_identity_provider_sub_idx', current_schema())), 'pg_class') = marker THEN
        DROP INDEX users_identity_provider_sub_idx;
    END IF;
    FOREACH col IN ARRAY own_columns LOOP
        EXECUTE format('ALTER TABLE users DROP COLUMN %I', col);
    END LOOP;
END
$migration$;
