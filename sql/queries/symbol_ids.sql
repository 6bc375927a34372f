SELECT id, symbol FROM cryptocurrencies WHERE symbol = ANY(%(symbols)s::text[]) ORDER BY id;
