-- Reverting refuses (changing nothing) while users.clerk_role holds data: without it, a role set by
-- hand would again be replaced by any newer Clerk record carrying the role Clerk had already given
-- (the revocation a user could undo). It locks `users` before it looks, so no writer can add such
-- data in between.
SET LOCAL lock_timeout = '5s';

LOCK TABLE users IN ACCESS EXCLUSIVE MODE;

DO $migration$
BEGIN
    IF EXISTS (SELECT 1 FROM users WHERE clerk_role IS NOT NULL) THEN
        RAISE EXCEPTION 'livermore-db 0006 down: refusing to drop column users.clerk_role: it holds data';
    END IF;
END
$migration$;

ALTER TABLE users DROP CONSTRAINT users_clerk_role_check;
ALTER TABLE users DROP COLUMN clerk_role;
