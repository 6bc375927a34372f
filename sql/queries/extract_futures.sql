-- Every perpetual's funding rates and mark bars, by symbol (the export reads them whole each time).
SELECT c.symbol, 'funding' AS kind, NULL::text AS interval_type, f.datetime, f.rate AS open, NULL::float8 AS high,
       NULL::float8 AS low, NULL::float8 AS close
  FROM crypto_funding_rates f JOIN cryptocurrencies c ON c.id = f.crypto_id
UNION ALL
SELECT c.symbol, 'mark', m.interval_type, m.datetime, m.open_price, m.high_price, m.low_price, m.close_price
  FROM crypto_mark_prices m JOIN cryptocurrencies c ON c.id = m.crypto_id
ORDER BY 1, 2, 4;
