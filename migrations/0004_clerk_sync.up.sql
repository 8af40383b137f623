-- Identity-provider sync (Clerk webhooks and backfills), applied idempotently and in any order:
--   * users.identity_updated_at: the provider's `updated_at` of the last profile applied (UTC). An event
--     no newer than it changes no profile field.
--   * users.identity_role_updated_at: the same for the role, which only events carrying a valid role
--     set, so that an older event's valid role is not lost behind a newer event without one.
--   * identity_tombstones: identities the provider deleted, so that a `created`/`updated` event arriving
--     after the `deleted` one never brings the user back.
-- Adoptable like the others; what it creates carries a comment marker for the down migration.
SET LOCAL lock_timeout = '5s';
-- A runner that retries (livermore_db::migrate_on: `make migrate`, services) asks for shorter waits
-- through livermore.lock_timeout, so that reads and writes queued behind this migration's lock wait
-- at most that long (docs/operations.md, "Locks"); run by other means, the 5 s above holds.
SELECT set_config('lock_timeout', current_setting('livermore.lock_timeout'), true)
WHERE coalesce(current_setting('livermore.lock_timeout', true), '') <> '';

DO $migration$
DECLARE
    marker constant text := 'livermore-db: added by migration 0004';
    col text;
BEGIN
    FOREACH col IN ARRAY ARRAY['identity_updated_at', 'identity_role_updated_at'] LOOP
        IF NOT EXISTS (
            SELECT 1 FROM pg_attribute
            WHERE attrelid = 'users'::regclass AND attname = col AND NOT attisdropped
        ) THEN
            EXECUTE format('ALTER TABLE users ADD COLUMN %I timestamp', col);
            EXECUTE format('COMMENT ON COLUMN users.%I IS %L', col, marker);
        ELSE
            RAISE NOTICE 'livermore-db 0004: column users.% already exists; adopted as it is', col;
        END IF;
    END LOOP;

    IF to_regclass(format('%I.identity_tombstones', current_schema())) IS NULL THEN
        CREATE TABLE identity_tombstones (
            identity_provider varchar(20)  NOT NULL,
            identity_sub      varchar(255) NOT NULL,
            deleted_at        timestamp    NOT NULL,
            CONSTRAINT identity_tombstones_pkey PRIMARY KEY (identity_provider, identity_sub)
        );
        EXECUTE format('COMMENT ON TABLE identity_tombstones IS %L', marker);
    ELSE
        RAISE NOTICE 'livermore-db 0004: table identity_tombstones already exists; adopted as it is';
    END IF;
END
$migration$;
