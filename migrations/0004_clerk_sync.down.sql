-- Reverting the sync bookkeeping removes only what 0004 created, and refuses (changing nothing) while it
-- holds data: tombstones keep deleted users from coming back, and identity_updated_at and
-- identity_role_updated_at keep old events from overwriting newer ones.
SET LOCAL lock_timeout = '5s';

DO $migration$
DECLARE
    marker constant text := 'livermore-db: added by migration 0004';
    tombstones regclass := to_regclass(format('%I.identity_tombstones', current_schema()));
    own_columns text[];
    col text;
    holds_data boolean;
BEGIN
    -- Lock before looking, so that no writer can commit data between the checks and the drops.
    LOCK TABLE users IN ACCESS EXCLUSIVE MODE;
    IF tombstones IS NOT NULL THEN
        EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', tombstones);
    END IF;
    SELECT coalesce(array_agg(a.attname::text ORDER BY a.attnum), '{}') INTO own_columns
    FROM pg_attribute a
    WHERE a.attrelid = 'users'::regclass AND a.attnum > 0 AND NOT a.attisdropped
      AND col_description('users'::regclass, a.attnum) = marker;

    IF tombstones IS NOT NULL AND obj_description(tombstones, 'pg_class') = marker THEN
        IF EXISTS (SELECT 1 FROM identity_tombstones) THEN
            RAISE EXCEPTION 'livermore-db 0004 down: refusing to drop table identity_tombstones: it holds data';
        END IF;
    END IF;
    FOREACH col IN ARRAY own_columns LOOP
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM users WHERE %I IS NOT NULL)', col) INTO holds_data;
        IF holds_data THEN
            RAISE EXCEPTION 'livermore-db 0004 down: refusing to drop column users.%: it holds data', col;
        END IF;
    END LOOP;
    FOREACH col IN ARRAY own_columns LOOP
        EXECUTE format('ALTER TABLE users DROP COLUMN %I', col);
    END LOOP;
    IF tombstones IS NOT NULL AND obj_description(tombstones, 'pg_class') = marker THEN
        DROP TABLE identity_tombstones;
    END IF;
END
$migration$;
