-- Drops the index only where 0007 built it: where 0002 added the identity columns (they carry its
-- marker), no index on them can have existed before. An index adopted from the older tooling stays,
-- with its columns. Dropping an index is a catalog change under a brief ACCESS EXCLUSIVE lock.
SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '5s';

DO $migration$
BEGIN
    IF col_description('users'::regclass,
                       (SELECT attnum FROM pg_attribute
                        WHERE attrelid = 'users'::regclass AND attname = 'identity_provider'
                          AND NOT attisdropped)) = 'livermore-db: added by migration 0002' THEN
        DROP INDEX IF EXISTS users_identity_provider_sub_idx;
    ELSE
        RAISE NOTICE 'livermore-db 0007 down: users_identity_provider_sub_idx was adopted; kept';
    END IF;
END
$migration$;
