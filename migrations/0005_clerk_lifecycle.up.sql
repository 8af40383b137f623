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
-- deleted before this migration), so that no row waits long. This file was rewritten once, before
-- release (see the README).
SET LOCAL lock_timeout = '5s';
-- A runner that retries (livermore_db::migrate_on: `make migrate`, services) asks for shorter waits
-- through livermore.lock_timeout, so that reads and writes queued behind this migration's lock wait
-- at most that long (docs/operations.md, "Locks"); run by other means, the 5 s above holds.
SELECT set_config('lock_timeout', current_setting('livermore.lock_timeout'), true)
WHERE coalesce(current_setting('livermore.lock_timeout', true), '') <> '';
SET LOCAL statement_timeout = '5s';

ALTER TABLE users
    ADD COLUMN role_source varchar(10) NOT NULL DEFAULT 'manual',
    ADD COLUMN released_email varchar(255);
COMMENT ON COLUMN users.role_source IS 'livermore-db: added by migration 0005';
COMMENT ON COLUMN users.released_email IS 'livermore-db: added by migration 0005';
ALTER TABLE users ADD CONSTRAINT users_role_source_check CHECK (role_source IN ('manual', 'clerk')) NOT VALID;
COMMENT ON CONSTRAINT users_role_source_check ON users IS 'livermore-db: added by migration 0005';
