-- crypto_prices_pkey (001_schema.sql) is the composite (crypto_id, interval_type, datetime)
-- index and, through INCLUDE (open_price .. volume), the covering one: a symbol's range
-- read is index-only. A second btree on the same key would double the write cost.

-- Daily reads (the seeds' "phase 2" default) touch only the small '1d' part.
CREATE INDEX IF NOT EXISTS idx_crypto_prices_daily
    ON crypto_prices (crypto_id, datetime)
    INCLUDE (open_price, high_price, low_price, close_price, volume)
    WHERE interval_type = '1d';
-- The incremental export's filter. updated_at grows with insertion order, so a BRIN
-- index finds recent rows at a fraction of a btree's size and write cost.
CREATE INDEX IF NOT EXISTS idx_crypto_prices_updated_at
    ON crypto_prices USING brin (updated_at) WITH (pages_per_range = 32);
-- Symbol lookups use the UNIQUE constraint's index; strategies are looked up by type.
CREATE INDEX IF NOT EXISTS idx_crypto_strategies_type
    ON crypto_strategies (strategy_type);
