-- Whether any of these crypto ids already has prices (the seed then merges instead of copying).
SELECT EXISTS (SELECT 1 FROM crypto_prices WHERE crypto_id = ANY(%(ids)s::integer[]));
