-- A load into an empty crypto_prices builds its indexes after the rows are in (one sort per index
-- instead of a btree insert per row). The whole load is one transaction holding the table alone:
-- DDL is transactional, so a failed or killed load leaves the table, its indexes included, as it was.
LOCK TABLE crypto_prices IN ACCESS EXCLUSIVE MODE;
SET LOCAL maintenance_work_mem = '256MB';
