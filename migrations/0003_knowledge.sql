-- Knowledge base articles (chunked) and past resolutions, embedded with a 384-d sentence model.

CREATE TABLE kb_documents (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    source        text NOT NULL UNIQUE,
    kind          text NOT NULL DEFAULT 'article' CHECK (kind IN ('article')),
    title         text NOT NULL DEFAULT '',
    content_hash  text NOT NULL,
    category      text CHECK (category IN ('billing', 'technical', 'onboarding', 'general')),
    metadata      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE kb_chunks (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    document_id  uuid NOT NULL REFERENCES kb_documents (id) ON DELETE CASCADE,
    seq          integer NOT NULL,
    title        text NOT NULL DEFAULT '',
    content      text NOT NULL,
    embedding    vector(384) NOT NULL,
    tsv          tsvector GENERATED ALWAYS AS (to_tsvector('english', title || ' ' || content)) STORED,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (document_id, seq)
);
CREATE INDEX kb_chunks_embedding_idx ON kb_chunks USING hnsw (embedding vector_cosine_ops)
    WITH (m = 16, ef_construction = 64);
CREATE INDEX kb_chunks_tsv_idx ON kb_chunks USING gin (tsv);

CREATE TABLE past_resolutions (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    source        text NOT NULL CHECK (source IN ('history', 'resolved_ticket', 'reviewer_approved')),
    source_ref    text,
    content_hash  text NOT NULL UNIQUE,
    ticket_text   text NOT NULL,
    resolution    text NOT NULL,
    category      text CHECK (category IN ('billing', 'technical', 'onboarding', 'general')),
    priority      text CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    intent        text,
    tags          text[] NOT NULL DEFAULT '{}',
    language      text,
    ticket_id     uuid REFERENCES tickets (id) ON DELETE SET NULL,
    metadata      jsonb NOT NULL DEFAULT '{}'::jsonb,
    embedding     vector(384) NOT NULL,
    tsv           tsvector GENERATED ALWAYS AS (to_tsvector('english', ticket_text)) STORED,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX past_resolutions_embedding_idx ON past_resolutions USING hnsw (embedding vector_cosine_ops)
    WITH (m = 16, ef_construction = 64);
CREATE INDEX past_resolutions_tsv_idx ON past_resolutions USING gin (tsv);
CREATE INDEX past_resolutions_category_idx ON past_resolutions (category);

-- Bumped whenever the KB or the resolution history changes: the classifier refits and escalated
-- tickets get another look when this moves.
CREATE TABLE knowledge_version (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version     bigint NOT NULL DEFAULT 0,
    changed_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO knowledge_version DEFAULT VALUES;
