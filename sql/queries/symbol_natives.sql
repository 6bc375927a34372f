-- Each symbol's native interval: the finest interval it has bars of (one primary-key probe
-- per symbol and interval, no scan of the prices), and when its series was last replaced.
-- %(ids)s NULL = every symbol. replaced_at is read through to_jsonb so that a database whose
-- schema predates the column (no `db init` since the upgrade) still exports.
SELECT c.id, c.symbol, (to_jsonb(c) ->> 'replaced_at')::timestamptz AS replaced_at,
       (SELECT t.iv FROM unnest(%(intervals)s::text[]) WITH ORDINALITY AS t(iv, n)
        WHERE EXISTS (SELECT 1 FROM crypto_prices p WHERE p.crypto_id = c.id AND p.interval_type = t.iv)
        ORDER BY t.n LIMIT 1) AS native
FROM cryptocurrencies c
WHERE %(ids)s::integer[] IS NULL OR c.id = ANY(%(ids)s::integer[])
ORDER BY c.id;
