-- Reverting removes only what 0006 created (objects carrying its comment marker); a column or check
-- adopted from other tooling stays. It refuses (changing nothing) while users.clerk_role, its own,
-- holds data: without it, a role set by hand would again be replaced by any newer Clerk record
-- carrying the role Clerk had already given (the revocation a user could undo). It locks `users`
-- before it looks, so no writer can add such data in between.
SET LOCAL lock_timeout = '5s';

LOCK TABLE users IN ACCESS EXCLUSIVE MODE;

DO $migration$
DECLARE
    marker constant text := 'livermore-db: added by migration 0006';
    own_column boolean := EXISTS (
        SELECT 1 FROM pg_attribute a
        WHERE a.attrelid = 'users'::regclass AND a.attname = 'clerk_role' AND NOT a.attisdropped
          AND col_description('users'::regclass, a.attnum) = marker
    );
BEGIN
    IF own_column AND EXISTS (SELECT 1 FROM users WHERE clerk_role IS NOT NULL) THEN
        RAISE EXCEPTION 'livermore-db 0006 down: refusing to drop column users.clerk_role: it holds data';
    END IF;
    IF obj_description((SELECT oid FROM pg_constraint WHERE conrelid = 'users'::regclass AND conname = 'users_clerk_role_check'), 'pg_constraint') = marker THEN
        ALTER TABLE users DROP CONSTRAINT users_clerk_role_check;
    END IF;
    IF own_column THEN
        ALTER TABLE users DROP COLUMN clerk_role;
    END IF;
END
$migration$;
