-- Nothing to undo: a validated check is the same check, enforced the same way on every write.
-- (PostgreSQL has no way back to NOT VALID, and none is needed before reverting 0005 or 0002, whose
-- downs drop the checks they added.)
SELECT 1;
