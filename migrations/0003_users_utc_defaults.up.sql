-- `created_at` and `updated_at` are `timestamp` (no zone) holding UTC. The baseline's `DEFAULT now()`
-- converts to the session's TimeZone, so a server or session set to, say, America/Chicago wrote local
-- wall-clock times. Default to UTC wall-clock time whatever the TimeZone. Changes no existing row.
SET LOCAL lock_timeout = '5s';
-- A runner that retries (livermore_db::migrate_on: `make migrate`, services) asks for shorter waits
-- through livermore.lock_timeout, so that reads and writes queued behind this migration's lock wait
-- at most that long (docs/operations.md, "Locks"); run by other means, the 5 s above holds.
SELECT set_config('lock_timeout', current_setting('livermore.lock_timeout'), true)
WHERE coalesce(current_setting('livermore.lock_timeout', true), '') <> '';

ALTER TABLE users
    ALTER COLUMN created_at SET DEFAULT (now() AT TIME ZONE 'UTC'),
    ALTER COLUMN updated_at SET DEFAULT (now() AT TIME ZONE 'UTC');
