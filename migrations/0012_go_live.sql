-- Going live safely (issue 16): the agent's mode (live or shadow) for the deployment and per category, an audit
-- log of who changed it, reviews as labels next to the attempt's signals, and the deployment's own confidence
-- calibrations.

-- scope '*' is the deployment; any other scope is a category and wins over '*' for that category. No row for
-- '*' means DESKPILOT_MODE decides. Read inside the decision transaction, so every worker agrees.
CREATE TABLE agent_modes (
    scope       text PRIMARY KEY CHECK (scope = '*' OR scope IN ('billing', 'technical', 'onboarding', 'general')),
    mode        text NOT NULL CHECK (mode IN ('live', 'shadow')),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text NOT NULL
);

-- Who changed what, when, from what to what (mode switches, calibration activations).
CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    action      text NOT NULL,
    scope       text,
    from_value  text,
    to_value    text,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_at_idx ON audit_log (at DESC, id DESC);

-- The mode the decision transaction found: a 'shadow' attempt sent nothing and its `decision` is the action it
-- would have taken. NULL for attempts before this migration and offline runs.
ALTER TABLE resolution_attempts ADD COLUMN mode text CHECK (mode IN ('live', 'shadow'));

-- Reviews as labels: approve = right; edit = wrong (the corrected text is sent_text); reject = wrong with a
-- reason. NULL verdict: nothing to judge (the attempt had no draft).
ALTER TABLE reviews ADD COLUMN verdict text CHECK (verdict IN ('right', 'wrong'));
ALTER TABLE reviews ADD COLUMN reason text
    CHECK (reason IN ('wrong_answer', 'incomplete', 'should_escalate', 'tone'));

-- The deployment's calibrations fitted on its reviews; at most one active. An attempt records the version that
-- scored it (NULL: the shipped calibration).
CREATE TABLE calibration_versions (
    version       integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at    timestamptz NOT NULL DEFAULT now(),
    source        text NOT NULL DEFAULT 'reviews',
    mapping       jsonb NOT NULL,
    n_train       integer NOT NULL,
    n_holdout     integer NOT NULL,
    holdout       jsonb NOT NULL DEFAULT '{}'::jsonb,
    active        boolean NOT NULL DEFAULT false,
    activated_at  timestamptz,
    note          text
);
CREATE UNIQUE INDEX calibration_versions_one_active ON calibration_versions ((true)) WHERE active;
ALTER TABLE resolution_attempts ADD COLUMN calibration_version integer;

-- One row per labelled review with the signals of the attempt it judged (and the decision gate its score step
-- found: a gated decision is never auto-resolved, whatever its confidence): what the go-live report and the
-- calibration read.
CREATE VIEW review_labels AS
SELECT r.id AS review_id, r.ticket_id, r.attempt_id, r.created_at AS reviewed_at, r.action, r.verdict, r.reason,
       CASE WHEN r.action = 'edit' THEN r.sent_text END AS corrected_text,
       a.category, a.priority, a.decision, a.mode, a.confidence, a.confidence_breakdown, a.calibration_version,
       s.output ->> 'gate' AS gate, s.output ->> 'model' AS score_model,
       COALESCE(s.output -> 'signals', '{}'::jsonb) AS signals
FROM reviews r
JOIN resolution_attempts a ON a.id = r.attempt_id
LEFT JOIN LATERAL (
    SELECT output FROM attempt_steps WHERE attempt_id = a.id AND node = 'score' ORDER BY seq DESC LIMIT 1
) s ON true
WHERE r.verdict IS NOT NULL;
