-- One symbol's bars of one interval in [start, end): the existing neighbours of newly loaded
-- bars, so that the coarser bars derived from them are rebuilt from the whole bucket.
SELECT datetime AS ts, open_price AS open, high_price AS high, low_price AS low, close_price AS close, volume
FROM crypto_prices
WHERE crypto_id = %(id)s AND interval_type = %(interval)s AND datetime >= %(start)s AND datetime < %(end)s
ORDER BY datetime;
