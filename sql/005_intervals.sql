-- Any bar interval of SPEC 4.2 (a file keeps its native interval). Databases made when only '1h'
-- and '1d' were allowed get the wider check, and an interval_type column of two characters
-- (a users' varchar(2) or char(2)) becomes text, able to hold '15m'. Each step is done only
-- when needed, so a second run is a no-op.
-- Cost, once: varchar(n) -> text keeps the table and its primary key as they are (binary-
-- coercible, same operator class); the partial index on '1d' is rebuilt and the new check
-- reads the table once. char(n) -> text rewrites the table (char is blank-padded).
DO $$
DECLARE
    narrow boolean;
    old_check boolean;
BEGIN
    SELECT format_type(atttypid, NULL) IN ('character varying', 'character') AND atttypmod - 4 < 3
      INTO narrow
      FROM pg_attribute
     WHERE attrelid = 'crypto_prices'::regclass AND attname = 'interval_type' AND atttypmod > 0;
    SELECT EXISTS (
        SELECT 1 FROM pg_constraint c,
               unnest(ARRAY['1m', '5m', '15m', '30m', '1h', '4h', '1d', '1w']) AS iv(name)
         WHERE c.conrelid = 'crypto_prices'::regclass AND c.conname = 'crypto_prices_interval_check'
           AND pg_get_constraintdef(c.oid) NOT LIKE '%''' || iv.name || '''%')
      INTO old_check;
    IF old_check THEN
        -- Dropped before the column changes, so that its old form is not checked again.
        ALTER TABLE crypto_prices DROP CONSTRAINT crypto_prices_interval_check;
    END IF;
    IF narrow THEN
        ALTER TABLE crypto_prices ALTER COLUMN interval_type TYPE text;
    END IF;
    IF old_check THEN
        ALTER TABLE crypto_prices ADD CONSTRAINT crypto_prices_interval_check
            CHECK (interval_type IN ('1m', '5m', '15m', '30m', '1h', '4h', '1d', '1w'));
    END IF;
END $$;

-- When a load replaced a symbol's series whole (`--replace` deleted some of its rows). An
-- incremental export cannot see deleted rows; it re-reads such a symbol whole instead.
ALTER TABLE cryptocurrencies ADD COLUMN IF NOT EXISTS replaced_at timestamptz;
