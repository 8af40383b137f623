-- Reverting the lifecycle columns removes only what 0005 created (objects carrying its comment
-- marker); columns and a check adopted from other tooling stay. It refuses (changing nothing) while a
-- column it would drop holds data: a released address would be lost (and the placeholder left in
-- `email`), and a role granted by Clerk would then count as set by hand. It locks `users` before it
-- looks, so no writer can add such data in between.
SET LOCAL lock_timeout = '5s';

LOCK TABLE users IN ACCESS EXCLUSIVE MODE;

DO $migration$
DECLARE
    marker constant text := 'livermore-db: added by migration 0005';
    own_columns text[];
BEGIN
    SELECT coalesce(array_agg(a.attname::text), '{}') INTO own_columns
    FROM pg_attribute a
    WHERE a.attrelid = 'users'::regclass AND a.attnum > 0 AND NOT a.attisdropped
      AND col_description('users'::regclass, a.attnum) = marker;

    IF 'released_email' = ANY (own_columns) AND EXISTS (SELECT 1 FROM users WHERE released_email IS NOT NULL) THEN
        RAISE EXCEPTION 'livermore-db 0005 down: refusing to drop column users.released_email: it holds data';
    END IF;
    IF 'role_source' = ANY (own_columns) AND EXISTS (SELECT 1 FROM users WHERE role_source <> 'manual') THEN
        RAISE EXCEPTION 'livermore-db 0005 down: refusing to drop column users.role_source: roles set by Clerk';
    END IF;

    IF obj_description((SELECT oid FROM pg_constraint WHERE conrelid = 'users'::regclass AND conname = 'users_role_source_check'), 'pg_constraint') = marker THEN
        ALTER TABLE users DROP CONSTRAINT users_role_source_check;
    END IF;
    IF 'released_email' = ANY (own_columns) THEN
        ALTER TABLE users DROP COLUMN released_email;
    END IF;
    IF 'role_source' = ANY (own_columns) THEN
        ALTER TABLE users DROP COLUMN role_source;
    END IF;
END
$migration$;
