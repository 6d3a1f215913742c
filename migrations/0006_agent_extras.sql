-- Resolution agent extras: the query embedding of each attempt (repeated-contact detection compares a new
-- ticket with the customer's earlier ones) and whether an escalation may be retried automatically.

ALTER TABLE resolution_attempts ADD COLUMN query_embedding vector;
-- NULL for deliveries; false for escalations a re-run cannot change (demands, injections, incidents).
ALTER TABLE resolution_attempts ADD COLUMN escalation_retryable boolean;
-- requeue_on_knowledge_change looks up the latest completed attempt of escalated tickets.
CREATE INDEX resolution_attempts_completed_idx ON resolution_attempts (ticket_id, attempt_no DESC)
    WHERE state = 'completed';
