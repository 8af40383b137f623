-- Clerk user lifecycle (no deleted or demoted user keeps access):
--   * users.role_source: who set the role last, 'clerk' (a Clerk event) or 'manual' (set_role, or the
--     default). A newer Clerk event without a valid role revokes a role Clerk granted (back to 'user')
--     and keeps a role set by hand. Existing rows count as set by hand unless a Clerk event set them
--     (identity_role_updated_at is that event's version).
--   * users.released_email: the address a user deleted at Clerk held. Deletion releases it (the row's
--     email becomes a reserved `deleted+…@deleted.invalid` placeholder) so that the person can sign up
--     again with it; the old address stays here for audit.
--
-- Catalog changes only, under a brief ACCESS EXCLUSIVE lock: a constant default (no rewrite) and a
-- check added NOT VALID (no scan; 0008 validates it). The existing rows are brought up to date by 0009
-- in small committed batches (role_source of the rows a Clerk event set, and the addresses of users
-- deleted before this migration), so that no row waits long. This file was rewritten before release,
-- then to read livermore.lock_timeout, then to adopt existing columns (see docs/operations.md).
--
-- Adoptable, as 0002: a column or the check that already exists (made by other tooling) is kept as
-- it is and no row changes. Whatever this migration creates is marked with a comment so that the down
-- migration removes only that.
SET LOCAL lock_timeout = '5s';
-- A runner that retries (livermore_db::migrate_on: `make migrate`, services) asks for shorter waits
-- through livermore.lock_timeout, so that reads and writes queued behind this migration's lock wait
-- at most that long (docs/operations.md, "Locks"); run by other means, the 5 s above holds.
SELECT set_config('lock_timeout', current_setting('livermore.lock_timeout'), true)
WHERE coalesce(current_setting('livermore.lock_timeout', true), '') <> '';
SET LOCAL statement_timeout = '5s';

DO $migration$
DECLARE
    marker constant text := 'livermore-db: added by migration 0005';
    col record;
BEGIN
    FOR col IN
        SELECT * FROM (VALUES
            ('role_source',    'varchar(10) NOT NULL DEFAULT ''manual'''),
            ('released_email', 'varchar(255)')
        ) AS c(name, definition)
    LOOP
        IF NOT EXISTS (
            SELECT 1 FROM pg_attribute
            WHERE attrelid = 'users'::regclass AND attname = col.name AND NOT attisdropped
        ) THEN
            EXECUTE format('ALTER TABLE users ADD COLUMN %I %s', col.name, col.definition);
            EXECUTE format('COMMENT ON COLUMN users.%I IS %L', col.name, marker);
        ELSE
            RAISE NOTICE 'livermore-db 0005: column users.% already exists; adopted as it is', col.name;
        END IF;
    END LOOP;

    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'users'::regclass AND conname = 'users_role_source_check') THEN
        ALTER TABLE users ADD CONSTRAINT users_role_source_check CHECK (role_source IN ('manual', 'clerk')) NOT VALID;
        EXECUTE format('COMMENT ON CONSTRAINT users_role_source_check ON users IS %L', marker);
    END IF;
END
$migration$;
