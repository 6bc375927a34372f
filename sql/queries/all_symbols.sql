SELECT id, symbol FROM cryptocurrencies ORDER BY id;
