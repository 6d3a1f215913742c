-- Console sessions signed out before they expired (`app.plugin.revoke_session`). The session cookie is a signed
-- expiry, valid by itself until then; signing out records it here (by its SHA-256, never the cookie) so a copy of
-- it stops working at once. Rows past their expiry are useless and are deleted by the next sign-out.
CREATE TABLE revoked_sessions (
    session_hash text PRIMARY KEY,
    expires_at   timestamptz NOT NULL
);
CREATE INDEX revoked_sessions_expiry_idx ON revoked_sessions (expires_at);
