-- Each symbol's newest hourly bar: (symbol, open time, close). Used by the soak to append the next hour.
SELECT c.symbol, p.datetime, p.close_price
FROM cryptocurrencies AS c
JOIN LATERAL (
    SELECT datetime, close_price FROM crypto_prices
    WHERE crypto_id = c.id AND interval_type = '1h'
    ORDER BY datetime DESC LIMIT 1
) AS p ON true
ORDER BY c.symbol;
