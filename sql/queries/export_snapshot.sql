-- The export's REPEATABLE READ snapshot, exported for the COPY streams of the other connections,
-- with what slices them: the crypto ids' end and the table's pages. The watermark was read before
-- it (export_watermark.sql).
SELECT coalesce((SELECT max(id) FROM cryptocurrencies), 0) + 1 AS id_end,
       pg_relation_size('crypto_prices') / current_setting('block_size')::bigint + 1 AS pages,
       pg_export_snapshot() AS snapshot_name;
