-- Validates the checks 0002 and 0005 added NOT VALID: `users_identity_pair_check`,
-- `users_role_check` and `users_role_source_check`. VALIDATE CONSTRAINT reads every row under SHARE
-- UPDATE EXCLUSIVE, which blocks no read or write (the checks hold for every write since they were
-- added either way). Where existing rows break a check (an adopted database), its validation fails
-- and is rolled back on its own (a subtransaction): it warns and leaves that check NOT VALID for an
-- operator to clean up and validate; nothing fails and no row changes. (`livermore-db status` and
-- `migrate --dry-run` list such rows beforehand.)
--
-- One read of `users` per check, and no more: this file was rewritten (issue 31) from one that first
-- looked for breaking rows with a query of its own, then validated, reading a large table six times
-- while the WAL of 0007's index build was still being written out.
--
-- It also refuses to go on without 0007's index, or with the INVALID one a failed concurrent build
-- leaves behind: sign-ins need it.
SET LOCAL lock_timeout = '5s';

DO $migration$
DECLARE
    c text;
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_index
        WHERE indexrelid = to_regclass(format('%I.users_identity_provider_sub_idx', current_schema()))
          AND indisvalid
    ) THEN
        RAISE EXCEPTION 'livermore-db 0008: index users_identity_provider_sub_idx is missing or INVALID (a concurrent build of 0007 failed): DROP INDEX CONCURRENTLY users_identity_provider_sub_idx, delete version 7 from _sqlx_migrations, and migrate again';
    END IF;

    FOREACH c IN ARRAY ARRAY['users_identity_pair_check', 'users_role_check', 'users_role_source_check'] LOOP
        CONTINUE WHEN NOT EXISTS (
            SELECT 1 FROM pg_constraint
            WHERE conrelid = 'users'::regclass AND conname = c AND NOT convalidated
        );
        BEGIN
            EXECUTE format('ALTER TABLE users VALIDATE CONSTRAINT %I', c);
        EXCEPTION WHEN check_violation THEN
            RAISE WARNING 'livermore-db 0008: some users rows break %; it stays NOT VALID (enforced on every new write) until they are fixed and it is validated', c;
        END;
    END LOOP;
END
$migration$;
