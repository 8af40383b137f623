-- Reverting the lifecycle columns refuses (changing nothing) while they hold data: a released address
-- would be lost (and the placeholder left in `email`), and a role granted by Clerk would then count as
-- set by hand. It locks `users` before it looks, so no writer can add such data in between.
SET LOCAL lock_timeout = '5s';

LOCK TABLE users IN ACCESS EXCLUSIVE MODE;

DO $migration$
BEGIN
    IF EXISTS (SELECT 1 FROM users WHERE released_email IS NOT NULL) THEN
        RAISE EXCEPTION 'livermore-db 0005 down: refusing to drop column users.released_email: it holds data';
    END IF;
    IF EXISTS (SELECT 1 FROM users WHERE role_source <> 'manual') THEN
        RAISE EXCEPTION 'livermore-db 0005 down: refusing to drop column users.role_source: roles set by Clerk';
    END IF;
END
$migration$;

ALTER TABLE users DROP CONSTRAINT users_role_source_check;
ALTER TABLE users DROP COLUMN released_email, DROP COLUMN role_source;
