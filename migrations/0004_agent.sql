-- The audit trail of the resolution agent, the delivery outbox and reviewer actions.

CREATE TABLE resolution_attempts (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    ticket_id             uuid NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    attempt_no            integer NOT NULL,
    lease_token           bigint,
    worker_id             text,
    state                 text NOT NULL DEFAULT 'running'
                          CHECK (state IN ('running', 'completed', 'failed', 'abandoned')),
    category              text,
    priority              text,
    assigned_agent        text,
    routing               jsonb NOT NULL DEFAULT '{}'::jsonb,
    context               jsonb NOT NULL DEFAULT '{}'::jsonb,
    retrieved             jsonb NOT NULL DEFAULT '[]'::jsonb,
    prompt                text,
    draft                 text,
    citations             jsonb NOT NULL DEFAULT '[]'::jsonb,
    confidence            double precision,
    confidence_breakdown  jsonb NOT NULL DEFAULT '{}'::jsonb,
    decision              text CHECK (decision IN ('deliver', 'flag_for_review', 'escalate')),
    decision_reasons      jsonb NOT NULL DEFAULT '[]'::jsonb,
    model                 jsonb NOT NULL DEFAULT '{}'::jsonb,
    knowledge_version     bigint,
    error                 text,
    started_at            timestamptz NOT NULL DEFAULT now(),
    finished_at           timestamptz,
    UNIQUE (ticket_id, attempt_no)
);
CREATE INDEX resolution_attempts_ticket_idx ON resolution_attempts (ticket_id, started_at);

-- One row per graph node run, written as the node finishes, so a trace shows work in progress.
CREATE TABLE attempt_steps (
    id           bigserial PRIMARY KEY,
    attempt_id   uuid NOT NULL REFERENCES resolution_attempts (id) ON DELETE CASCADE,
    seq          integer NOT NULL,
    node         text NOT NULL,
    started_at   timestamptz NOT NULL,
    duration_ms  double precision NOT NULL,
    output       jsonb NOT NULL DEFAULT '{}'::jsonb,
    error        text,
    UNIQUE (attempt_id, seq)
);

-- Transactional outbox: written in the same transaction as the decision, drained by the workers.
CREATE TABLE deliveries (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    ticket_id         uuid NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    attempt_id        uuid REFERENCES resolution_attempts (id) ON DELETE SET NULL,
    message_id        uuid REFERENCES ticket_messages (id) ON DELETE SET NULL,
    channel           text NOT NULL CHECK (channel IN ('email', 'in_app', 'webhook')),
    idempotency_key   text NOT NULL UNIQUE,
    recipient         text NOT NULL,
    subject           text NOT NULL DEFAULT '',
    body              text NOT NULL,
    headers           jsonb NOT NULL DEFAULT '{}'::jsonb,
    origin            text NOT NULL DEFAULT 'agent' CHECK (origin IN ('agent', 'reviewer')),
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'sent', 'failed', 'disabled', 'cancelled')),
    tries             integer NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    lease_owner       text,
    lease_expires_at  timestamptz,
    lease_token       bigint,
    last_error        text,
    sent_at           timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
-- At most one reply per resolution attempt.
CREATE UNIQUE INDEX deliveries_one_per_attempt ON deliveries (attempt_id) WHERE attempt_id IS NOT NULL;
CREATE INDEX deliveries_pending_idx ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_ticket_idx ON deliveries (ticket_id, created_at);

CREATE TABLE reviews (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    ticket_id   uuid NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    attempt_id  uuid REFERENCES resolution_attempts (id) ON DELETE SET NULL,
    action      text NOT NULL CHECK (action IN ('approve', 'edit', 'reject')),
    draft       text,
    sent_text   text,
    diff        text,
    note        text,
    reviewer    text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reviews_ticket_idx ON reviews (ticket_id, created_at);
