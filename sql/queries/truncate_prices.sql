-- Empty already (checked under the lock): truncated in the bulk load's own transaction, so that
-- with wal_level = minimal its COPY writes no WAL for the rows.
TRUNCATE crypto_prices;
