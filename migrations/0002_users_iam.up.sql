-- IAM: OAuth identity columns on `users`, the partial unique index on (provider, subject), and two
-- integrity checks the old schema lacked.
--
-- Adoptable: a database whose `users` already has some or all of these (from the older TypeScript/Atlas
-- tooling) keeps them as they are and no row changes. Whatever this migration creates is marked with a
-- comment so that the down migration removes only that.
SET LOCAL lock_timeout = '5s';

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

    IF to_regclass(format('%I.users_identity_provider_sub_idx', current_schema())) IS NULL THEN
        CREATE UNIQUE INDEX users_identity_provider_sub_idx
            ON users (identity_provider, identity_sub)
            WHERE identity_provider IS NOT NULL;
        EXECUTE format('COMMENT ON INDEX users_identity_provider_sub_idx IS %L', marker);
    ELSE
        RAISE NOTICE 'livermore-db 0002: index users_identity_provider_sub_idx already exists; adopted as it is';
    END IF;

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

    -- The checks were added NOT VALID so that adoption never fails on existing rows; they are enforced
    -- for every new write either way. Validate them when the existing rows comply (the usual case);
    -- otherwise warn and leave them NOT VALID for an operator to clean up and validate.
    IF EXISTS (
        SELECT 1 FROM users
        WHERE NOT ((identity_provider IS NULL AND identity_sub IS NULL)
                   OR (identity_provider IS NOT NULL AND identity_sub IS NOT NULL
                       AND identity_provider <> '' AND identity_sub <> ''))
    ) THEN
        RAISE WARNING 'livermore-db 0002: some users rows have only one of identity_provider/identity_sub, or an empty one; users_identity_pair_check stays NOT VALID';
    ELSE
        ALTER TABLE users VALIDATE CONSTRAINT users_identity_pair_check;
    END IF;
    IF EXISTS (SELECT 1 FROM users WHERE role NOT IN ('user', 'admin', 'subscriber_basic', 'subscriber_pro')) THEN
        RAISE WARNING 'livermore-db 0002: some users rows have a role outside the Role enum; users_role_check stays NOT VALID';
    ELSE
        ALTER TABLE users VALIDATE CONSTRAINT users_role_check;
    END IF;
END
$migration$;
