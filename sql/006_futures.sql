-- Perpetual futures (SPEC 4.3, issue 28). A perpetual's candles are a series of crypto_prices like any
-- other, under its market-qualified symbol `NAME:futures` (`cryptobt db import FILE --market futures`):
-- spot `XRP_USDT` and the perpetual `XRP_USDT:futures` are two series everywhere. Its funding rates and
-- mark prices have tables of their own, keyed by the perpetual's crypto_id. Idempotent.
CREATE TABLE IF NOT EXISTS crypto_funding_rates (
    crypto_id   integer NOT NULL,
    -- As the exchange stamps it (a few milliseconds past the funding hour); a run floors it to its bar.
    datetime    timestamptz NOT NULL,
    -- A fraction per funding interval (0.0001 = 0.01 %); positive: longs pay shorts.
    rate        double precision NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT crypto_funding_rates_pkey PRIMARY KEY (crypto_id, datetime) INCLUDE (rate),
    -- PostgreSQL's double precision holds NaN and infinities; a rate is neither.
    CONSTRAINT crypto_funding_rates_finite_check
        CHECK (rate <> 'NaN'::float8 AND rate > '-Infinity'::float8 AND rate < 'Infinity'::float8)
);

CREATE TABLE IF NOT EXISTS crypto_mark_prices (
    crypto_id     integer NOT NULL,
    interval_type text NOT NULL,
    datetime      timestamptz NOT NULL,
    open_price    double precision NOT NULL,
    high_price    double precision NOT NULL,
    low_price     double precision NOT NULL,
    close_price   double precision NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT crypto_mark_prices_pkey PRIMARY KEY (crypto_id, interval_type, datetime)
        INCLUDE (open_price, high_price, low_price, close_price),
    CONSTRAINT crypto_mark_prices_interval_check
        CHECK (interval_type IN ('1m', '5m', '15m', '30m', '1h', '4h', '1d', '1w')),
    CONSTRAINT crypto_mark_prices_positive_check
        CHECK (open_price > 0 AND high_price > 0 AND low_price > 0 AND close_price > 0
               AND open_price < 'Infinity'::float8 AND high_price < 'Infinity'::float8),
    CONSTRAINT crypto_mark_prices_range_check
        CHECK (low_price <= open_price AND low_price <= close_price
               AND high_price >= open_price AND high_price >= close_price)
);

-- An update that changes a row bumps updated_at (the export reads the futures tables whole: they are
-- small, a few rows a day per perpetual; the column says when a row last changed, for SQL users).
CREATE OR REPLACE FUNCTION crypto_futures_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF to_jsonb(NEW) - 'updated_at' IS DISTINCT FROM to_jsonb(OLD) - 'updated_at' THEN
        NEW.updated_at := clock_timestamp();
    ELSE
        NEW.updated_at := OLD.updated_at;
    END IF;
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS trg_crypto_funding_rates_updated_at ON crypto_funding_rates;
CREATE TRIGGER trg_crypto_funding_rates_updated_at
    BEFORE UPDATE ON crypto_funding_rates
    FOR EACH ROW EXECUTE FUNCTION crypto_futures_touch_updated_at();
DROP TRIGGER IF EXISTS trg_crypto_mark_prices_updated_at ON crypto_mark_prices;
CREATE TRIGGER trg_crypto_mark_prices_updated_at
    BEFORE UPDATE ON crypto_mark_prices
    FOR EACH ROW EXECUTE FUNCTION crypto_futures_touch_updated_at();
