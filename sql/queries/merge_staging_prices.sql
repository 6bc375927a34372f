-- Upsert: new bars are inserted, corrected bars replace old ones, identical bars are
-- left untouched (no write, updated_at unchanged) so a re-import is a no-op.
INSERT INTO crypto_prices AS p
    (crypto_id, interval_type, datetime, open_price, high_price, low_price, close_price, volume)
SELECT crypto_id, interval_type, datetime, open_price, high_price, low_price, close_price, volume
FROM staging_prices
ON CONFLICT (crypto_id, interval_type, datetime) DO UPDATE SET
    open_price = EXCLUDED.open_price,
    high_price = EXCLUDED.high_price,
    low_price = EXCLUDED.low_price,
    close_price = EXCLUDED.close_price,
    volume = EXCLUDED.volume
WHERE (p.open_price, p.high_price, p.low_price, p.close_price, p.volume)
      IS DISTINCT FROM
      (EXCLUDED.open_price, EXCLUDED.high_price, EXCLUDED.low_price, EXCLUDED.close_price, EXCLUDED.volume);
