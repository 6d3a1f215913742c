"""`review.decision`: what approve / edit / reject do, decided from the ticket's state alone."""

from __future__ import annotations

import pytest

from core.errors import Conflict, InvalidInput
from review.decision import ReviewPlan, ReviewRequest, ReviewState, check_review_request, plan_review

ESCALATED = ReviewState(
    status="pending_customer", needs_review=True, draft="Draft.", has_attempt=True, agent_reply_status=None
)
DELIVERED = ReviewState(
    status="resolved", needs_review=True, draft="Draft.", has_attempt=True, agent_reply_status="pending"
)


def plan(state: ReviewState, **request: object) -> ReviewPlan:
    req = ReviewRequest(**request)  # type: ignore[arg-type]
    return plan_review(state, req, check_review_request(req))


def test_approve_sends_the_draft_unless_it_already_went_out() -> None:
    sent = plan(ESCALATED, action="approve")
    assert (sent.send, sent.resolve, sent.sent_text, sent.verdict, sent.learn) == (True, True, "Draft.", "right", True)
    already = plan(DELIVERED, action="approve")
    assert (already.send, already.resolve, already.cancel_agent_reply) == (False, False, None)


def test_edit_replaces_an_unsent_agent_reply() -> None:
    edited = plan(DELIVERED, action="edit", text="  Better.  ", reason="tone")
    assert (edited.send, edited.sent_text, edited.verdict, edited.reason) == (True, "Better.", "wrong", "tone")
    assert edited.cancel_agent_reply == "superseded by the reviewer's edit"
    assert plan(ESCALATED, action="edit", text="Better.").cancel_agent_reply is None


def test_reject_sends_nothing_and_is_a_wrong_label() -> None:
    rejected = plan(DELIVERED, action="reject", reason="should_escalate", close=True)
    assert (rejected.send, rejected.learn, rejected.close, rejected.verdict) == (False, False, True, "wrong")
    assert rejected.cancel_agent_reply == "rejected by the reviewer"
    nothing = ReviewState(
        status="pending_customer", needs_review=True, draft=None, has_attempt=False, agent_reply_status=None
    )
    unjudged = plan(nothing, action="reject", reason="wrong_answer")
    assert (unjudged.verdict, unjudged.cancel_agent_reply) == (None, None)


def test_conflicts() -> None:
    done = ReviewState(status="resolved", needs_review=False, draft="D", has_attempt=True, agent_reply_status="sent")
    with pytest.raises(Conflict, match="does not need review"):
        plan(done, action="approve")
    no_draft = ReviewState(
        status="pending_customer", needs_review=True, draft=None, has_attempt=True, agent_reply_status=None
    )
    with pytest.raises(Conflict, match="no draft to approve"):
        plan(no_draft, action="approve")


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"action": "reject"}, "reason"),
        ({"action": "reject", "reason": "rude"}, "reason"),
        ({"action": "approve", "reason": "tone"}, "reason"),
        ({"action": "edit", "text": "  "}, "text"),
        ({"action": "approve", "text": "x"}, "text"),
        ({"action": "approve", "note": "a\x00b"}, "note"),
    ],
)
def test_bad_requests_name_the_field(request_fields: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        check_review_request(ReviewRequest(**request_fields))  # type: ignore[arg-type]
    assert raised.value.field == field
