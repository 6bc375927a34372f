-- The next watermark, read inside the export's REPEATABLE READ snapshot before any row.
-- A writer still in flight may commit rows stamped earlier than now(); moving the
-- watermark back to the start of the oldest such transaction makes the next export
-- read them (rows read twice are unchanged, so they change no data version). Only this
-- database's writers count: pg_stat_activity spans the cluster, and a long transaction in
-- another database would make every export here re-read rows for nothing.
SELECT least(
           now(),
           coalesce((SELECT min(xact_start) - interval '1 microsecond'
                     FROM pg_stat_activity
                     WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
                       AND datname = current_database()), now())
       ) AS watermark,
       coalesce((SELECT max(id) FROM cryptocurrencies), 0) + 1 AS id_end,
       pg_relation_size('crypto_prices') / current_setting('block_size')::bigint + 1 AS pages,
       pg_export_snapshot() AS snapshot_name;
