-- Nothing to undo here: the rows it changed hold lifecycle data, which 0005's down refuses to drop
-- (a released address would be lost, a role Clerk granted would count as set by hand).
SELECT 1;
