-- Delivery and review extras: reviewer replies linked to their review, the review queue and in-app inbox indexes.

-- A reviewer's reply has no attempt of its own (the agent's reply to that attempt may exist): it hangs off the
-- review that sent it, at most one per review.
ALTER TABLE deliveries ADD COLUMN review_id uuid REFERENCES reviews (id) ON DELETE SET NULL;
CREATE UNIQUE INDEX deliveries_one_per_review ON deliveries (review_id) WHERE review_id IS NOT NULL;
-- In-app inbox visibility and failed-delivery counts look deliveries up by message and by status.
CREATE INDEX deliveries_message_idx ON deliveries (message_id) WHERE message_id IS NOT NULL;
CREATE INDEX deliveries_undelivered_idx ON deliveries (ticket_id) WHERE status IN ('failed', 'disabled');

-- The review queue: flagged or needing review, oldest first.
CREATE INDEX tickets_review_queue_idx ON tickets (created_at, id) WHERE needs_review OR flagged;
-- Auto-close scans resolved tickets only.
CREATE INDEX tickets_resolved_idx ON tickets (resolved_at) WHERE status = 'resolved';
