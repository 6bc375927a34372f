-- A perpetual's funding rates (one row per funding time; a re-import rewrites equal rows to no change).
INSERT INTO crypto_funding_rates (crypto_id, datetime, rate)
SELECT %(id)s, t, r FROM unnest(%(times)s::timestamptz[], %(rates)s::float8[]) AS u(t, r)
ON CONFLICT (crypto_id, datetime) DO UPDATE SET rate = EXCLUDED.rate
WHERE crypto_funding_rates.rate IS DISTINCT FROM EXCLUDED.rate;
