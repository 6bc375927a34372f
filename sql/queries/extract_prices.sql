-- Rows changed after the watermark, plus every row of the symbols read whole (replaced since,
-- or whose native interval changed), for one slice of crypto ids (an export splits the ids
-- over several connections). Only the intervals that are some symbol's native one; the
-- caller keeps each symbol's own. interval_index (only when several intervals are read) is the
-- position in the list of intervals.
COPY (
    SELECT crypto_id, {interval_index} datetime, open_price, high_price, low_price, close_price, volume
    FROM crypto_prices
    WHERE {interval_match}
      AND (updated_at > {watermark} OR crypto_id = ANY({whole_ids}::integer[]))
      AND crypto_id >= {id_from} AND crypto_id < {id_to}
) TO STDOUT (FORMAT binary)
