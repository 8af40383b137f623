-- Reverting the sync bookkeeping removes only what 0004 created, and refuses (changing nothing) while it
-- holds data: tombstones keep deleted users from coming back, and identity_updated_at keeps old events
-- from overwriting newer ones.
SET LOCAL lock_timeout = '5s';

DO $migration$
DECLARE
    marker constant text := 'livermore-db: added by migration 0004';
    tombstones regclass := to_regclass(format('%I.identity_tombstones', current_schema()));
    column_num smallint;
BEGIN
    SELECT attnum INTO column_num FROM pg_attribute
    WHERE attrelid = 'users'::regclass AND attname = 'identity_updated_at' AND NOT attisdropped;

    IF tombstones IS NOT NULL AND obj_description(tombstones, 'pg_class') = marker THEN
        IF EXISTS (SELECT 1 FROM identity_tombstones) THEN
            RAISE EXCEPTION 'livermore-db 0004 down: refusing to drop table identity_tombstones: it holds data';
        END IF;
    END IF;
    IF column_num IS NOT NULL AND col_description('users'::regclass, column_num) = marker THEN
        IF EXISTS (SELECT 1 FROM users WHERE identity_updated_at IS NOT NULL) THEN
            RAISE EXCEPTION 'livermore-db 0004 down: refusing to drop column users.identity_updated_at: it holds data';
        END IF;
        ALTER TABLE users DROP COLUMN identity_updated_at;
    END IF;
    IF tombstones IS NOT NULL AND obj_description(tombstones, 'pg_class') = marker THEN
        DROP TABLE identity_tombstones;
    END IF;
END
$migration$;
