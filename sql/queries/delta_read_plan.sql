-- The plan of an incremental read, whatever the statistics say: the updated_at BRIN index (a
-- bitmap scan), never a scan of the table or of the primary key. A table no ANALYZE has seen
-- yet (right after a seed) is otherwise read whole: without statistics `updated_at > watermark`
-- is guessed to match a third of the rows. No parallel workers: their start costs more than the
-- few pages read.
SET LOCAL enable_seqscan = off;
SET LOCAL enable_indexscan = off;
SET LOCAL max_parallel_workers_per_gather = 0;
