-- Per-transaction staging table for upserts: COPY lands here, then one INSERT ... ON CONFLICT.
CREATE TEMP TABLE staging_prices (
    crypto_id     integer NOT NULL,
    interval_type text NOT NULL,
    datetime      timestamptz NOT NULL,
    open_price    double precision NOT NULL,
    high_price    double precision NOT NULL,
    low_price     double precision NOT NULL,
    close_price   double precision NOT NULL,
    volume        double precision NOT NULL
) ON COMMIT DROP;
