-- Every row of the native intervals in one slice of the table's pages: a full export splits
-- the heap by ctid so each connection scans only its own pages (TID range scan).
-- interval_index (only when several intervals are read) is the position in the list of
-- intervals; the caller keeps each symbol's own.
COPY (
    SELECT crypto_id, {interval_index} datetime, open_price, high_price, low_price, close_price, volume
    FROM crypto_prices
    WHERE {interval_match}
      AND ctid >= {ctid_from}::tid AND ctid < {ctid_to}::tid
) TO STDOUT (FORMAT binary)
