-- Tables as the users' database names them (SPEC section 1). Idempotent.
-- Prices are double precision: binary COPY moves them without numeric decoding.
CREATE TABLE IF NOT EXISTS cryptocurrencies (
    id          serial PRIMARY KEY,
    symbol      text NOT NULL UNIQUE,
    name        text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS crypto_prices (
    -- No FOREIGN KEY: its per-row check cuts binary COPY from ~820k to ~290k rows/s
    -- (measured on 2 cores). The loaders register every symbol before its prices.
    crypto_id     integer NOT NULL,
    interval_type text NOT NULL,
    datetime      timestamptz NOT NULL,
    open_price    double precision NOT NULL,
    high_price    double precision NOT NULL,
    low_price     double precision NOT NULL,
    close_price   double precision NOT NULL,
    volume        double precision NOT NULL,
    -- Maintained by trg_crypto_prices_updated_at: the incremental export reads
    -- only rows whose updated_at is newer than the last snapshot's watermark.
    updated_at    timestamptz NOT NULL DEFAULT now(),
    -- The composite (crypto_id, interval_type, datetime) key is also the covering index:
    -- INCLUDE makes a symbol's range read index-only without a second index to maintain.
    CONSTRAINT crypto_prices_pkey PRIMARY KEY (crypto_id, interval_type, datetime)
        INCLUDE (open_price, high_price, low_price, close_price, volume),
    -- SPEC 4.2's intervals (005_intervals.sql widens databases created with only 1h and 1d).
    CONSTRAINT crypto_prices_interval_check
        CHECK (interval_type IN ('1m', '5m', '15m', '30m', '1h', '4h', '1d', '1w')),
    CONSTRAINT crypto_prices_positive_check
        CHECK (open_price > 0 AND high_price > 0 AND low_price > 0 AND close_price > 0 AND volume >= 0),
    CONSTRAINT crypto_prices_range_check
        CHECK (low_price <= open_price AND low_price <= close_price
               AND high_price >= open_price AND high_price >= close_price)
);

CREATE TABLE IF NOT EXISTS crypto_strategies (
    id                 serial PRIMARY KEY,
    name               text NOT NULL UNIQUE,
    strategy_type      text NOT NULL,
    default_parameters jsonb NOT NULL DEFAULT '{}'::jsonb
);
