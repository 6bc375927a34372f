-- Rows changed after the watermark, every crypto id at once: an incremental export that reads no
-- symbol whole (the usual new hours). Run after delta_read_plan.sql, in the export's transaction.
-- interval_index is the position in {intervals}; the caller keeps each symbol's own.
COPY (
    SELECT crypto_id, array_position({intervals}::text[], interval_type)::integer AS interval_index,
           datetime, open_price, high_price, low_price, close_price, volume
    FROM crypto_prices
    WHERE interval_type = ANY({intervals}::text[])
      AND updated_at > {watermark}
) TO STDOUT (FORMAT binary)
