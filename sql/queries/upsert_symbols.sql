-- Register symbols (new ones get an id; existing ones keep theirs).
INSERT INTO cryptocurrencies (symbol, name)
SELECT s, s FROM unnest(%(symbols)s::text[]) AS s
ON CONFLICT (symbol) DO NOTHING;
