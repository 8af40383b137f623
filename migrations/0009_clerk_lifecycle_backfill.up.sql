-- no-transaction
-- Brings the rows that existed before 0005 up to date, in batches of 10 000 users by id, each
-- committed on its own (so it runs outside a transaction, as the file's only statement): a row waits
-- for at most one batch, and `users` is held by nothing stronger than the ROW EXCLUSIVE lock of an
-- UPDATE, which blocks no read or write of other rows.
--   * Users deleted at Clerk before 0005 (a tombstone and is_active false) release their address:
--     released_email keeps it, email gets the reserved placeholder, as a deletion now does.
--   * role_source becomes 'clerk' where a Clerk event set the role before 0005 ran: the role's
--     version (identity_role_updated_at, the event's own time) is older than 0005 and the row still
--     reads 'manual', the value 0005 gave every existing row. A row whose role was set after 0005
--     says who set it itself: a Clerk event wrote 'clerk', and set_role wrote 'manual' with the
--     time it ran, which is later than 0005 (this migration's first text counted those as set by
--     Clerk, so that Clerk's next re-send undid a demotion made by hand in between; it is recorded
--     under this text where it ran, see src/migrations.rs).
-- Each batch sets lock_timeout and statement_timeout for itself. Run again after a failure, it goes
-- on where it stopped: a row it already changed no longer matches.
DO $migration$
DECLARE
    batch constant bigint := 10000;
    lo bigint;
    last bigint;
    since timestamp;
BEGIN
    SELECT installed_on AT TIME ZONE 'UTC' INTO since FROM _sqlx_migrations WHERE version = 5;
    IF since IS NULL THEN
        RAISE EXCEPTION 'livermore-db 0009: migration 0005 is not recorded in _sqlx_migrations: apply the migrations in order';
    END IF;
    SELECT min(id), max(id) INTO lo, last FROM users;
    WHILE lo <= last LOOP
        PERFORM set_config('lock_timeout', '5s', true);
        PERFORM set_config('statement_timeout', '5s', true);
        UPDATE users u
        SET released_email = u.email,
            email = 'deleted+' || md5(u.identity_provider || ':' || u.identity_sub) || '@deleted.invalid'
        FROM identity_tombstones t
        WHERE u.id >= lo AND u.id < lo + batch
          AND t.identity_provider = u.identity_provider AND t.identity_sub = u.identity_sub
          AND NOT u.is_active AND u.released_email IS NULL;
        UPDATE users SET role_source = 'clerk'
        WHERE id >= lo AND id < lo + batch
          AND identity_role_updated_at < since AND role_source = 'manual';
        COMMIT;
        lo := lo + batch;
    END LOOP;
END
$migration$;
