"""The lake: export from PostgreSQL, immutable Parquet snapshots, DuckDB reads into aligned arrays, grid cache, contents."""
