-- Clerk user lifecycle (no deleted or demoted user keeps access):
--   * users.role_source: who set the role last, 'clerk' (a Clerk event) or 'manual' (set_role, or the
--     default). A newer Clerk event without a valid role revokes a role Clerk granted (back to 'user')
--     and keeps a role set by hand. Existing rows count as set by hand unless a Clerk event set them
--     (identity_role_updated_at is that event's version).
--   * users.released_email: the address a user deleted at Clerk held. Deletion releases it (the row's
--     email becomes a reserved `deleted+…@deleted.invalid` placeholder) so that the person can sign up
--     again with it; the old address stays here for audit. Users deleted before this migration are
--     released here too.
SET LOCAL lock_timeout = '5s';

ALTER TABLE users
    ADD COLUMN role_source varchar(10) NOT NULL DEFAULT 'manual',
    ADD COLUMN released_email varchar(255);
COMMENT ON COLUMN users.role_source IS 'livermore-db: added by migration 0005';
COMMENT ON COLUMN users.released_email IS 'livermore-db: added by migration 0005';
ALTER TABLE users ADD CONSTRAINT users_role_source_check CHECK (role_source IN ('manual', 'clerk'));
COMMENT ON CONSTRAINT users_role_source_check ON users IS 'livermore-db: added by migration 0005';

UPDATE users SET role_source = 'clerk' WHERE identity_role_updated_at IS NOT NULL;

UPDATE users u
SET released_email = u.email,
    email = 'deleted+' || md5(u.identity_provider || ':' || u.identity_sub) || '@deleted.invalid'
FROM identity_tombstones t
WHERE t.identity_provider = u.identity_provider AND t.identity_sub = u.identity_sub
  AND NOT u.is_active AND u.released_email IS NULL;
