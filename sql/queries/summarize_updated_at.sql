-- Summarize the page ranges of the updated_at BRIN index that no VACUUM has summarized yet
-- (rows bulk-loaded or appended since). An unsummarized range always matches, so without this an
-- incremental export's `updated_at > watermark` reads every page loaded since the last VACUUM:
-- the whole table after a seed. Costs one read of the new pages; 0 when nothing is new.
SELECT brin_summarize_new_values('idx_crypto_prices_updated_at'::regclass);
