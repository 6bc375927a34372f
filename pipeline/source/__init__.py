"""The source: PostgreSQL (schema, loads, extracts), the file importer and loaders, OHLCV frames, data health, the synthetic market."""
