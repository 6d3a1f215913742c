-- Keep the columns every search reads inline in the row instead of in the TOAST table.
--
-- A 384-d vector is 1.5 kB and a ticket's tsvector about 0.9 kB, so with the default storage a past resolution
-- (two texts besides) crosses the 2 kB TOAST threshold and both columns are moved out of line. Every exact vector
-- scan and every full-text rank then fetches them back from the TOAST table row by row: measured on 1,500 past
-- resolutions, a hybrid search took 14.2 ms, 6.4 ms with the columns inline (bench/pipeline.py's history).
-- MAIN still moves a value out of line when the row would not fit a page otherwise; the texts (EXTENDED) go first.
ALTER TABLE past_resolutions ALTER COLUMN embedding SET STORAGE MAIN;
ALTER TABLE past_resolutions ALTER COLUMN tsv SET STORAGE MAIN;
ALTER TABLE kb_chunks ALTER COLUMN embedding SET STORAGE MAIN;
ALTER TABLE kb_chunks ALTER COLUMN tsv SET STORAGE MAIN;

-- Storage applies to values written from now on: rewrite the rows already there (a new vector value, and a
-- changed text so the generated tsvector is computed again). A no-op on a fresh database.
UPDATE past_resolutions SET embedding = embedding::real[]::vector(384), ticket_text = ticket_text || '';
UPDATE kb_chunks SET embedding = embedding::real[]::vector(384), content = content || '';
