-- A perpetual's mark price bars at their interval.
INSERT INTO crypto_mark_prices (crypto_id, interval_type, datetime, open_price, high_price, low_price, close_price)
SELECT %(id)s, %(interval)s, t, o, h, l, c
  FROM unnest(%(times)s::timestamptz[], %(open)s::float8[], %(high)s::float8[], %(low)s::float8[],
              %(close)s::float8[]) AS u(t, o, h, l, c)
ON CONFLICT (crypto_id, interval_type, datetime) DO UPDATE
   SET open_price = EXCLUDED.open_price, high_price = EXCLUDED.high_price, low_price = EXCLUDED.low_price,
       close_price = EXCLUDED.close_price
 WHERE (crypto_mark_prices.open_price, crypto_mark_prices.high_price, crypto_mark_prices.low_price,
        crypto_mark_prices.close_price) IS DISTINCT FROM
       (EXCLUDED.open_price, EXCLUDED.high_price, EXCLUDED.low_price, EXCLUDED.close_price);
