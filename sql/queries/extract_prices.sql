-- Rows of one interval changed after the watermark, for one slice of crypto ids
-- (an export splits the ids over several connections).
COPY (
    SELECT crypto_id, datetime, open_price, high_price, low_price, close_price, volume
    FROM crypto_prices
    WHERE interval_type = {interval}
      AND updated_at > {watermark}
      AND crypto_id >= {id_from} AND crypto_id < {id_to}
) TO STDOUT (FORMAT binary)
