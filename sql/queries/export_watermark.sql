-- The next export's watermark: it reads rows whose updated_at is later. Run in its own
-- transaction just BEFORE the export takes its snapshot (export_snapshot.sql).
-- A row's updated_at is never earlier than the start of the transaction that wrote it (an
-- INSERT's DEFAULT now() is that start; the UPDATE trigger's clock_timestamp() is later). A
-- transaction open now may commit after the snapshot rows stamped as early as its start, even
-- one that has only read so far (it has no transaction id yet, so no snapshot lists it). So the
-- watermark is the start of the oldest transaction open in this database (a query that began
-- but has not yet opened its transaction counts from its start), or now() when none is; one
-- that opens later stamps its rows later than now(). Rows read twice are unchanged: they change
-- no data version. pg_stat_activity spans the cluster: only this database's sessions count.
-- A role sees when other roles' transactions began only with pg_read_all_stats, and no one's with
-- track_activities off: hidden_sessions counts the sessions it cannot see (the export warns).
SELECT least(now(), min(least(xact_start, query_start)) FILTER (WHERE state <> 'idle'))
           - interval '1 microsecond' AS watermark,
       count(*) FILTER (WHERE state IS NULL OR state = 'disabled') AS hidden_sessions
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND coalesce(backend_type, 'client backend') = 'client backend';  -- hidden ones show no type
