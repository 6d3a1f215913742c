-- The lexeme frequencies the full-text arm of a search picks its terms by (`knowledge.retrieval`), kept as a
-- small indexed copy of the planner's statistics.
--
-- Read from pg_stats, they cost every search ~0.9 ms of PostgreSQL CPU per table (the view's privilege checks,
-- and a thousand-element array cast to text and back), more than the vector arm. The copy is refreshed after
-- bulk loads and by the worker's maintenance once ANALYZE has run again (`knowledge.store.refresh_term_stats`);
-- stale figures only change which of a query's commonest words are left out.
CREATE MATERIALIZED VIEW search_term_stats AS
SELECT s.tablename::text AS table_name, e.lexeme, e.freq,
       (SELECT max(greatest(u.last_analyze, u.last_autoanalyze)) FROM pg_stat_user_tables u
         WHERE u.schemaname = s.schemaname AND u.relname = s.tablename) AS analyzed_at
FROM pg_stats s
CROSS JOIN LATERAL unnest(s.most_common_elems::text::text[], s.most_common_elem_freqs) AS e(lexeme, freq)
-- The tables by OID, fixed here: REFRESH runs with a search_path of its own, where current_schema() is not ours.
WHERE (s.schemaname, s.tablename) IN (
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid IN ('kb_chunks'::regclass, 'past_resolutions'::regclass))
  AND s.attname = 'tsv' AND NOT s.inherited AND e.lexeme IS NOT NULL;

CREATE UNIQUE INDEX search_term_stats_key ON search_term_stats (table_name, lexeme);
CREATE INDEX search_term_stats_freq ON search_term_stats (table_name, freq);
