-- Crypto ids that have prices but no cryptocurrencies row (a user deleted the row), with their row
-- counts: the export skips them and says so. The distinct ids come from a skip scan of the primary
-- key (one index probe per id), so this costs the same on 1 k or 100 M rows.
WITH RECURSIVE ids AS (
    (SELECT crypto_id FROM crypto_prices ORDER BY crypto_id LIMIT 1)
    UNION ALL
    SELECT (SELECT p.crypto_id FROM crypto_prices p WHERE p.crypto_id > ids.crypto_id
            ORDER BY p.crypto_id LIMIT 1)
    FROM ids
    WHERE ids.crypto_id IS NOT NULL
)
SELECT i.crypto_id, (SELECT count(*) FROM crypto_prices p WHERE p.crypto_id = i.crypto_id) AS rows
FROM ids i
WHERE i.crypto_id IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM cryptocurrencies c WHERE c.id = i.crypto_id)
ORDER BY i.crypto_id;
