-- Baseline: the `users` table exactly as Livermore had it before IAM.
--
-- Databases built by the older TypeScript/Atlas tooling already hold this table, with rows and with
-- other tables referencing it. There this migration changes nothing and is only recorded as applied.
-- Where the table is created here, a comment marks it, so that the down migration can tell the two apart.
SET LOCAL lock_timeout = '5s';

DO $migration$
BEGIN
    IF to_regclass(format('%I.users', current_schema())) IS NULL THEN
        CREATE TABLE users (
            id         serial       PRIMARY KEY,
            username   varchar(50)  NOT NULL CONSTRAINT users_username_unique UNIQUE,
            email      varchar(255) NOT NULL CONSTRAINT users_email_unique UNIQUE,
            is_active  boolean      NOT NULL DEFAULT true,
            created_at timestamp    NOT NULL DEFAULT now(),
            updated_at timestamp    NOT NULL DEFAULT now()
        );
        COMMENT ON TABLE users IS 'livermore-db: created by migration 0001';
    ELSE
        RAISE NOTICE 'livermore-db 0001: table users already exists; adopted as it is';
    END IF;
END
$migration$;
