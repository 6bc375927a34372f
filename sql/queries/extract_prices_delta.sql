-- Rows changed after the watermark, every crypto id at once: an incremental export that reads no
-- symbol whole (the usual new hours). Run after delta_read_plan.sql, in the export's transaction.
-- interval_index (only when several intervals are read) is the position in the list of
-- intervals; the caller keeps each symbol's own.
COPY (
    SELECT crypto_id, {interval_index} datetime, open_price, high_price, low_price, close_price, volume
    FROM crypto_prices
    WHERE {interval_match}
      AND updated_at > {watermark}
) TO STDOUT (FORMAT binary)
