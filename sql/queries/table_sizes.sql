-- Bytes on disk of each table with its indexes and TOAST.
SELECT relname, pg_total_relation_size(oid)
FROM pg_class
WHERE relname = ANY(%(tables)s::text[]) AND relkind = 'r';
