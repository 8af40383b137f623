-- Back to the baseline's defaults (changes no row).
SET LOCAL lock_timeout = '5s';

ALTER TABLE users
    ALTER COLUMN created_at SET DEFAULT now(),
    ALTER COLUMN updated_at SET DEFAULT now();
