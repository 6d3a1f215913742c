-- Which embedding model made the vectors in kb_chunks.embedding and past_resolutions.embedding (its name, with the
-- runtime when there is one, and its dimension), and which one a re-embed is building, if any.
--
-- A re-embed (`deskpilot kb reembed`, knowledge/reembed.py) writes the new model's vectors to an `embedding_next`
-- column of the new dimension beside `embedding`, indexes it, and swaps the columns in one transaction that also
-- bumps knowledge_version: reads use the old vectors until that commit and the new ones after it.
CREATE TABLE embedding_identity (
    singleton          boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    model              text NOT NULL,
    dimension          integer NOT NULL CHECK (dimension > 0),
    pending_model      text,
    pending_dimension  integer CHECK (pending_dimension > 0),
    changed_at         timestamptz NOT NULL DEFAULT now(),
    CHECK ((pending_model IS NULL) = (pending_dimension IS NULL))
);

-- Before this migration the vectors came from the packaged MiniLM unless DESKPILOT_EMBEDDING_MODEL named another
-- 384-d folder; a deployment that did gets one re-embed, which is right either way.
INSERT INTO embedding_identity (model, dimension) VALUES ('all-MiniLM-L6-v2', 384);
