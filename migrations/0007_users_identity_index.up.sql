-- no-transaction
-- The partial unique index on (identity_provider, identity_sub) that sign-ins find users by and
-- upsert on (0002's columns), built CONCURRENTLY: it takes SHARE UPDATE EXCLUSIVE on `users`, which
-- blocks no read or write, for as long as the build reads the table, and waits, blocking no one, for
-- transactions already running to end. So it runs outside a transaction (sqlx's `-- no-transaction`)
-- and must be the file's only statement (PostgreSQL refuses it inside a multi-statement string).
--
-- Adoptable: an index of that name (from the older tooling, or from 0002's first text) is kept as it
-- is. A build that fails (a duplicate identity, a cancelled session) leaves an INVALID index behind:
-- `livermore_db::prepare_to_migrate` (run by `livermore_db::migrate` and `make migrate`) refuses to go
-- on until it is dropped, and 0008 refuses an index that is missing or INVALID.
--
-- squawk's require-lock-timeout and require-statement-timeout are answered by the rule above: a SET
-- would make a second statement. The build takes no lock that blocks reads or writes, and a timeout
-- would leave the INVALID index a failed build leaves.
-- squawk-ignore require-lock-timeout, require-statement-timeout
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS users_identity_provider_sub_idx
    ON users (identity_provider, identity_sub)
    WHERE identity_provider IS NOT NULL;
