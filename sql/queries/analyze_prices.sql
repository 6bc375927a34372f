-- Statistics right after a bulk load, so the first reads are planned on them (not on guesses).
ANALYZE crypto_prices;
