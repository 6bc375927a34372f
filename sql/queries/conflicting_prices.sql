-- Staged bars of a symbol's own (native) interval that would overwrite an existing bar with
-- different values, per symbol: a load that is not a --replace refuses to mix two markets in one
-- series. (Derived bars are rebuilt from the native ones, so they may change.)
SELECT s.crypto_id, count(*) AS differing, min(s.datetime) AS first_at
FROM staging_prices s
JOIN crypto_prices p USING (crypto_id, interval_type, datetime)
JOIN unnest(%(ids)s::integer[], %(natives)s::text[]) AS n(crypto_id, interval_type)
  ON n.crypto_id = s.crypto_id AND n.interval_type = s.interval_type
WHERE (p.open_price, p.high_price, p.low_price, p.close_price, p.volume)
      IS DISTINCT FROM (s.open_price, s.high_price, s.low_price, s.close_price, s.volume)
GROUP BY s.crypto_id
ORDER BY s.crypto_id;
