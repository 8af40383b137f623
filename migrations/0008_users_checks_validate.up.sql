-- Validates the checks 0002 and 0005 added NOT VALID: `users_identity_pair_check`,
-- `users_role_check` and `users_role_source_check`. VALIDATE CONSTRAINT reads every row under SHARE
-- UPDATE EXCLUSIVE, which blocks no read or write (the checks hold for every write since they were
-- added either way). Where existing rows break a check (an adopted database), it warns and leaves
-- that check NOT VALID for an operator to clean up and validate; nothing fails and no row changes.
--
-- It also refuses to go on without 0007's index, or with the INVALID one a failed concurrent build
-- leaves behind: sign-ins need it.
SET LOCAL lock_timeout = '5s';

DO $migration$
DECLARE
    c record;
    broken boolean;
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_index
        WHERE indexrelid = to_regclass(format('%I.users_identity_provider_sub_idx', current_schema()))
          AND indisvalid
    ) THEN
        RAISE EXCEPTION 'livermore-db 0008: index users_identity_provider_sub_idx is missing or INVALID (a concurrent build of 0007 failed): DROP INDEX CONCURRENTLY users_identity_provider_sub_idx, delete version 7 from _sqlx_migrations, and migrate again';
    END IF;

    FOR c IN
        SELECT * FROM (VALUES
            ('users_identity_pair_check',
             'NOT ((identity_provider IS NULL AND identity_sub IS NULL)
                   OR (identity_provider IS NOT NULL AND identity_sub IS NOT NULL
                       AND identity_provider <> '''' AND identity_sub <> ''''))'),
            ('users_role_check', 'role NOT IN (''user'', ''admin'', ''subscriber_basic'', ''subscriber_pro'')'),
            ('users_role_source_check', 'role_source NOT IN (''manual'', ''clerk'')')
        ) AS v(name, broken_rows)
    LOOP
        CONTINUE WHEN NOT EXISTS (
            SELECT 1 FROM pg_constraint
            WHERE conrelid = 'users'::regclass AND conname = c.name AND NOT convalidated
        );
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM users WHERE %s)', c.broken_rows) INTO broken;
        IF broken THEN
            RAISE WARNING 'livermore-db 0008: some users rows break %; it stays NOT VALID (enforced on every new write) until they are fixed and it is validated', c.name;
        ELSE
            EXECUTE format('ALTER TABLE users VALIDATE CONSTRAINT %I', c.name);
        END IF;
    END LOOP;
END
$migration$;
