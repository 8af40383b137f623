-- A role set by hand holds until Clerk's role itself changes (see the rules in src/clerk/mod.rs):
--   * users.clerk_role: the role Clerk last gave the user (its valid `public_metadata.role`, or
--     'user' for none), kept when the role is then set by hand. A newer Clerk record replaces a role
--     set by hand only when the role it carries differs from this one. Clerk re-sends the whole user
--     on every change (a new first name, say), so "a newer record" alone is not "Clerk changed the
--     role".
-- Existing rows keep NULL (not known), which counts as 'user': for a role set by hand that is the
-- rule in force before (a newer valid role from Clerk other than 'user' replaces it).
--
-- The column is nullable without a default: adding it changes the catalog only (no rewrite, no
-- scan). The check is NOT VALID for the same reason (every row is NULL, so there is nothing to
-- validate); PostgreSQL enforces it on every write from now on all the same.
--
-- Adoptable, as 0002: a column or check that already exists (made by other tooling) is kept as it is
-- and no row changes. Whatever this migration creates is marked with a comment so that the down
-- migration removes only that. Rewritten to read livermore.lock_timeout, then to adopt (see
-- docs/operations.md).
SET LOCAL lock_timeout = '5s';
-- A runner that retries (livermore_db::migrate_on: `make migrate`, services) asks for shorter waits
-- through livermore.lock_timeout, so that reads and writes queued behind this migration's lock wait
-- at most that long (docs/operations.md, "Locks"); run by other means, the 5 s above holds.
SELECT set_config('lock_timeout', current_setting('livermore.lock_timeout'), true)
WHERE coalesce(current_setting('livermore.lock_timeout', true), '') <> '';
SET LOCAL statement_timeout = '5s';

DO $migration$
DECLARE
    marker constant text := 'livermore-db: added by migration 0006';
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_attribute
        WHERE attrelid = 'users'::regclass AND attname = 'clerk_role' AND NOT attisdropped
    ) THEN
        ALTER TABLE users ADD COLUMN clerk_role varchar(20);
        EXECUTE format('COMMENT ON COLUMN users.clerk_role IS %L', marker);
    ELSE
        RAISE NOTICE 'livermore-db 0006: column users.clerk_role already exists; adopted as it is';
    END IF;

    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'users'::regclass AND conname = 'users_clerk_role_check') THEN
        ALTER TABLE users ADD CONSTRAINT users_clerk_role_check
            CHECK (clerk_role IN ('user', 'admin', 'subscriber_basic', 'subscriber_pro')) NOT VALID;
        EXECUTE format('COMMENT ON CONSTRAINT users_clerk_role_check ON users IS %L', marker);
    END IF;
END
$migration$;
