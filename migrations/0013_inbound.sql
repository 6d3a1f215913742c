-- Inbound email (issue 18): the attachments a message carried, and Mailgun's single-use request tokens.

-- Written in the transaction that stores the message (a new ticket or a follow-up), so a ticket never has half
-- its attachments. `content` is the decoded file, at most DESKPILOT_MAX_ATTACHMENT_BYTES (larger ones are refused
-- with 413 before anything is written).
CREATE TABLE ticket_attachments (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    ticket_id     uuid NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    message_id    uuid NOT NULL REFERENCES ticket_messages (id) ON DELETE CASCADE,
    position      int NOT NULL CHECK (position >= 0),
    filename      text NOT NULL,
    content_type  text NOT NULL,
    size          bigint NOT NULL CHECK (size >= 0),
    sha256        text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    content_id    text,
    inline        boolean NOT NULL DEFAULT false,
    content       bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (message_id, position)
);
CREATE INDEX ticket_attachments_ticket_idx ON ticket_attachments (ticket_id);

-- Mailgun signs only timestamp + token, so a token may carry one request's content only: the first request
-- records the fingerprint of what it carried; the same token with the same fingerprint is a retry, with another
-- one a replay. Rows older than twice the replay window are useless (their timestamp is refused first) and are
-- deleted as new tokens arrive.
CREATE TABLE inbound_tokens (
    token        text PRIMARY KEY,
    fingerprint  text NOT NULL,
    seen_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inbound_tokens_seen_idx ON inbound_tokens (seen_at);
