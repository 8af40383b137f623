-- `created_at` and `updated_at` are `timestamp` (no zone) holding UTC. The baseline's `DEFAULT now()`
-- converts to the session's TimeZone, so a server or session set to, say, America/Chicago wrote local
-- wall-clock times. Default to UTC wall-clock time whatever the TimeZone. Changes no existing row.
SET LOCAL lock_timeout = '5s';

ALTER TABLE users
    ALTER COLUMN created_at SET DEFAULT (now() AT TIME ZONE 'UTC'),
    ALTER COLUMN updated_at SET DEFAULT (now() AT TIME ZONE 'UTC');
