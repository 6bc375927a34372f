-- Any bar interval of SPEC 4.2 (a file keeps its native interval). Databases created when
-- only '1h' and '1d' were allowed get the wider check; the DO block makes this a no-op after.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_constraint
               WHERE conname = 'crypto_prices_interval_check'
                 AND pg_get_constraintdef(oid) NOT LIKE '%1w%') THEN
        ALTER TABLE crypto_prices DROP CONSTRAINT crypto_prices_interval_check;
        ALTER TABLE crypto_prices ADD CONSTRAINT crypto_prices_interval_check
            CHECK (interval_type IN ('1m', '5m', '15m', '30m', '1h', '4h', '1d', '1w'));
    END IF;
END $$;

-- When a load replaced a symbol's series whole (`--replace` deleted some of its rows). An
-- incremental export cannot see deleted rows; it re-reads such a symbol whole instead.
ALTER TABLE cryptocurrencies ADD COLUMN IF NOT EXISTS replaced_at timestamptz;
