-- --replace: the staged bars become the symbols' whole series. Rows the new series lacks are
-- deleted (and the symbol marked, so the next incremental export re-reads it whole); the
-- merge that follows writes only bars that differ. Returns the number of rows deleted.
WITH gone AS (
    DELETE FROM crypto_prices p
    WHERE p.crypto_id = ANY(%(ids)s::integer[])
      AND NOT EXISTS (SELECT 1 FROM staging_prices s
                      WHERE s.crypto_id = p.crypto_id AND s.interval_type = p.interval_type
                        AND s.datetime = p.datetime)
    RETURNING p.crypto_id
), marked AS (
    UPDATE cryptocurrencies SET replaced_at = now() WHERE id IN (SELECT crypto_id FROM gone)
)
SELECT count(*) FROM gone;
