"""Where results land: the append-only results tables (Parquet) and the Redis cache."""
