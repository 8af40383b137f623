-- IAM: OAuth identity columns on `users` and two integrity checks the old schema lacked. Catalog
-- changes only, under a brief ACCESS EXCLUSIVE lock: the columns are nullable or have a constant
-- default (no rewrite), and the checks are added NOT VALID (no scan). The partial unique index on
-- (provider, subject) is built by 0007 without blocking writes (CREATE INDEX CONCURRENTLY) and the
-- checks are validated by 0008 without blocking reads or writes: this file was rewritten once, before
-- release, so that no migration holds `users` while it reads every row (see the README).
--
-- Adoptable: a database whose `users` already has some or all of these (from the older TypeScript/Atlas
-- tooling) keeps them as they are and no row changes. Whatever this migration creates is marked with a
-- comment so that the down migration removes only that.
SET LOCAL lock_timeout = '5s';
-- A runner that retries (livermore_db::migrate_on: `make migrate`, services) asks for shorter waits
-- through livermore.lock_timeout, so that reads and writes queued behind this migration's lock wait
-- at most that long (docs/operations.md, "Locks"); run by other means, the 5 s above holds.
SELECT set_config('lock_timeout', current_setting('livermore.lock_timeout'), true)
WHERE coalesce(current_setting('livermore.lock_timeout', true), '') <> '';
SET LOCAL statement_timeout = '5s';

DO $migration$
DECLARE
    marker constant text := 'livermore-db: added by migration 0002';
    col record;
BEGIN
    FOR col IN
        SELECT * FROM (VALUES
            ('identity_provider',    'varchar(20)'),
            ('identity_sub',         'varchar(255)'),
            ('display_name',         'varchar(100)'),
            ('identity_picture_url', 'text'),
            ('role',                 'varchar(20) NOT NULL DEFAULT ''user'''),
            ('last_login_at',        'timestamp')
        ) AS c(name, definition)
    LOOP
        IF NOT EXISTS (
            SELECT 1 FROM pg_attribute
            WHERE attrelid = 'users'::regclass AND attname = col.name AND NOT attisdropped
        ) THEN
            EXECUTE format('ALTER TABLE users ADD COLUMN %I %s', col.name, col.definition);
            EXECUTE format('COMMENT ON COLUMN users.%I IS %L', col.name, marker);
        ELSE
            RAISE NOTICE 'livermore-db 0002: column users.% already exists; adopted as it is', col.name;
        END IF;
    END LOOP;

    -- Provider and subject are both NULL (a user without an external identity) or both non-empty.
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'users'::regclass AND conname = 'users_identity_pair_check') THEN
        ALTER TABLE users ADD CONSTRAINT users_identity_pair_check CHECK (
            (identity_provider IS NULL AND identity_sub IS NULL)
            OR (identity_provider IS NOT NULL AND identity_sub IS NOT NULL
                AND identity_provider <> '' AND identity_sub <> '')
        ) NOT VALID;
        EXECUTE format('COMMENT ON CONSTRAINT users_identity_pair_check ON users IS %L', marker);
    END IF;

    -- The role is one of the Rust `Role` enum's values. Adding a role means adding a migration that
    -- replaces this constraint (a test compares the two lists).
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'users'::regclass AND conname = 'users_role_check') THEN
        ALTER TABLE users ADD CONSTRAINT users_role_check CHECK (
            role IN ('user', 'admin', 'subscriber_basic', 'subscriber_pro')
        ) NOT VALID;
        EXECUTE format('COMMENT ON CONSTRAINT users_role_check ON users IS %L', marker);
    END IF;
END
$migration$;
