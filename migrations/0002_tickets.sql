-- Customers, their account events, tickets with their thread, the ingest idempotency keys and the work queue.

CREATE TABLE customers (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email       text NOT NULL UNIQUE CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 320),
    name        text,
    tier        text NOT NULL DEFAULT 'free'
                CHECK (tier IN ('free', 'trial', 'starter', 'pro', 'business', 'enterprise')),
    metadata    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Billing events (payment_failed, refund_issued, plan_changed, ...) and usage signals.
CREATE TABLE customer_events (
    id           bigserial PRIMARY KEY,
    customer_id  uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    kind         text NOT NULL CHECK (length(kind) BETWEEN 1 AND 64),
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    data         jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customer_events_customer_idx ON customer_events (customer_id, occurred_at DESC);

-- Fencing tokens: every lease (ticket or delivery) takes a fresh, strictly increasing number.
CREATE SEQUENCE lease_token_seq;

CREATE TABLE tickets (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    external_id       text NOT NULL UNIQUE,
    customer_id       uuid NOT NULL REFERENCES customers (id),
    channel           text NOT NULL CHECK (channel IN ('email', 'in_app', 'webhook')),
    subject           text NOT NULL DEFAULT '',
    body              text NOT NULL,
    customer_name     text,
    metadata          jsonb NOT NULL DEFAULT '{}'::jsonb,
    raw_payload       jsonb NOT NULL,
    thread_ref        text,
    email_message_id  text,
    category          text CHECK (category IN ('billing', 'technical', 'onboarding', 'general')),
    priority          text CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    status            text NOT NULL DEFAULT 'open'
                      CHECK (status IN ('open', 'in_progress', 'pending_customer', 'resolved', 'closed')),
    assigned_agent    text,
    resolution        text,
    confidence_score  double precision CHECK (confidence_score >= 0 AND confidence_score <= 1),
    flagged           boolean NOT NULL DEFAULT false,
    needs_review      boolean NOT NULL DEFAULT false,
    -- Work queue: a ticket is queued while next_attempt_at is set; a live lease hides it from other workers.
    next_attempt_at   timestamptz,
    attempt_count     integer NOT NULL DEFAULT 0,
    failure_count     integer NOT NULL DEFAULT 0,
    cycle_count       integer NOT NULL DEFAULT 0,
    lease_owner       text,
    lease_expires_at  timestamptz,
    lease_token       bigint,
    last_error        text,
    parked_at         timestamptz,
    reopen_count      integer NOT NULL DEFAULT 0,
    last_customer_message_at timestamptz NOT NULL DEFAULT now(),
    resolved_at       timestamptz,
    closed_at         timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
-- The claim query's predicate: without this partial index a SKIP LOCKED claim scans the table.
CREATE INDEX tickets_queue_idx ON tickets (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
CREATE INDEX tickets_customer_idx ON tickets (customer_id, created_at DESC);
CREATE INDEX tickets_status_idx ON tickets (status, created_at DESC, id DESC);
CREATE INDEX tickets_created_idx ON tickets (created_at DESC, id DESC);
CREATE INDEX tickets_email_message_idx ON tickets (email_message_id) WHERE email_message_id IS NOT NULL;
CREATE INDEX tickets_review_idx ON tickets (updated_at) WHERE needs_review;

-- Every message of a ticket's thread, both directions.
CREATE TABLE ticket_messages (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    ticket_id         uuid NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    direction         text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    channel           text NOT NULL CHECK (channel IN ('email', 'in_app', 'webhook')),
    author            text NOT NULL CHECK (author IN ('customer', 'agent', 'reviewer')),
    external_id       text UNIQUE,
    subject           text NOT NULL DEFAULT '',
    body              text NOT NULL,
    raw_payload       jsonb,
    email_message_id  text,
    attempt_id        uuid,
    read_at           timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ticket_messages_ticket_idx ON ticket_messages (ticket_id, created_at);

-- Idempotency keys of the ingest webhook: one row per accepted external_id, new ticket or follow-up alike.
CREATE TABLE ingest_keys (
    external_id   text PRIMARY KEY,
    content_hash  text NOT NULL,
    ticket_id     uuid NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    message_id    uuid REFERENCES ticket_messages (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Status history: every lifecycle transition with its reason.
CREATE TABLE ticket_status_history (
    id           bigserial PRIMARY KEY,
    ticket_id    uuid NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    from_status  text,
    to_status    text NOT NULL,
    reason       text NOT NULL DEFAULT '',
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ticket_status_history_ticket_idx ON ticket_status_history (ticket_id, at);
