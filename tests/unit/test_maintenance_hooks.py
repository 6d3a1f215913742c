"""The worker's maintenance hooks: one per housekeeping job, each imported from the module it belongs to."""

from __future__ import annotations

from app.maintenance import maintenance_hooks


def test_the_hooks_of_this_installation() -> None:
    assert sorted(maintenance_hooks()) == ["close_quiet_tickets", "refresh_term_stats", "requeue_on_knowledge_change"]
