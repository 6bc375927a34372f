-- Every row of the native intervals in one slice of the table's pages: a full export splits
-- the heap by ctid so each connection scans only its own pages (TID range scan).
-- interval_index is the position in {intervals}; the caller keeps each symbol's own.
COPY (
    SELECT crypto_id, array_position({intervals}::text[], interval_type)::integer AS interval_index,
           datetime, open_price, high_price, low_price, close_price, volume
    FROM crypto_prices
    WHERE interval_type = ANY({intervals}::text[])
      AND ctid >= {ctid_from}::tid AND ctid < {ctid_to}::tid
) TO STDOUT (FORMAT binary)
