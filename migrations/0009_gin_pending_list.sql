-- Bound the unmerged part of the full-text indexes.
--
-- A GIN index with fastupdate (the default) queues new rows' entries in a pending list that every search reads
-- in full until VACUUM or an overflow of gin_pending_list_limit (4 MB by default, about 2,000 ticket-length rows)
-- merges it. Measured on 1,500 past resolutions loaded at once: the text arm of a hybrid search took 5.0 ms
-- with them all still pending, 2.8 ms merged (bench/pipeline.py's history). At the 64 kB minimum a trickle of
-- new resolutions or KB chunks merges every few dozen rows, still in batches; bulk loads merge at their end
-- (`knowledge.store.refresh_statistics`).
ALTER INDEX past_resolutions_tsv_idx SET (gin_pending_list_limit = 64);
ALTER INDEX kb_chunks_tsv_idx SET (gin_pending_list_limit = 64);
SELECT gin_clean_pending_list('past_resolutions_tsv_idx'::regclass);
SELECT gin_clean_pending_list('kb_chunks_tsv_idx'::regclass);
