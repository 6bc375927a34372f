-- Every index of crypto_prices with what recreates it: a constraint's name and definition
-- (the primary key), or the CREATE INDEX statement. Read before a bulk load drops them.
SELECT ci.relname AS index_name, c.conname AS constraint_name,
       coalesce(pg_get_constraintdef(c.oid), pg_get_indexdef(i.indexrelid)) AS definition
FROM pg_index i
JOIN pg_class ci ON ci.oid = i.indexrelid
LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid
WHERE i.indrelid = 'crypto_prices'::regclass
ORDER BY c.conname IS NULL, ci.relname;
