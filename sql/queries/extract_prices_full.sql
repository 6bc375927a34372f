-- Every row of one interval in one slice of the table's pages: a full export splits
-- the heap by ctid so each connection scans only its own pages (TID range scan).
COPY (
    SELECT crypto_id, datetime, open_price, high_price, low_price, close_price, volume
    FROM crypto_prices
    WHERE interval_type = {interval}
      AND ctid >= {ctid_from}::tid AND ctid < {ctid_to}::tid
) TO STDOUT (FORMAT binary)
