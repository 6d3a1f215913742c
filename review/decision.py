"""What a reviewer's approve / edit / reject does, decided without I/O: from the ticket, its latest attempt and
the agent's reply as the review transaction read them (under the ticket's row lock), and the request.

`plan_review` returns a `ReviewPlan`; `review.submit` carries it out in one transaction. Keeping the decision
pure keeps every rule (when a reply goes out, when the agent's queued reply is cancelled, what the review teaches)
in one readable place, tested without a database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core.errors import Conflict, InvalidInput

ReviewAction = Literal["approve", "edit", "reject"]
ReviewReason = Literal["wrong_answer", "incomplete", "should_escalate", "tone"]
Verdict = Literal["right", "wrong"]

REVIEW_REASONS: tuple[ReviewReason, ...] = ("wrong_answer", "incomplete", "should_escalate", "tone")
MAX_TEXT_CHARS = 20_000


@dataclass(frozen=True, slots=True)
class ReviewRequest:
    action: ReviewAction
    text: str | None = None
    note: str | None = None
    close: bool = False
    reviewer: str | None = None
    # Why the draft was wrong: required for a reject, optional for an edit, refused for an approve.
    reason: ReviewReason | None = None


@dataclass(frozen=True, slots=True)
class ReviewState:
    """The ticket as the review transaction found it."""

    status: str
    needs_review: bool
    draft: str | None
    has_attempt: bool
    # Status of the agent's own reply to the latest attempt (pending, sent, failed, ...); None: no reply queued.
    agent_reply_status: str | None


@dataclass(frozen=True, slots=True)
class ReviewPlan:
    action: ReviewAction
    sent_text: str | None  # what the customer gets (or already got, for an approve of a delivered draft)
    send: bool  # queue a reviewer reply
    cancel_agent_reply: str | None  # reason to cancel the agent's still-unsent reply, or None
    resolve: bool  # move the ticket to resolved (with sent_text as its resolution)
    close: bool
    verdict: Verdict | None  # the label the review gives the attempt's draft; None: nothing to judge
    reason: ReviewReason | None
    learn: bool  # store the sent reply as a past resolution
    status_reason: str


def check_review_request(request: ReviewRequest) -> str | None:
    """Validate what a schema cannot (raises InvalidInput naming the field); returns an edit's stripped text."""
    for field_name, value in (("text", request.text), ("note", request.note), ("reviewer", request.reviewer)):
        if value is None:
            continue
        if "\x00" in value:
            raise InvalidInput(f"{field_name} must not contain NUL characters", field=field_name)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(f"{field_name} is not valid Unicode text", field=field_name) from None
    if request.reason is not None and request.reason not in REVIEW_REASONS:
        raise InvalidInput(f"reason must be one of {', '.join(REVIEW_REASONS)}", field="reason")
    if request.action == "reject" and request.reason is None:
        raise InvalidInput(f"reason is required to reject a reply (one of {', '.join(REVIEW_REASONS)})", field="reason")
    if request.action == "approve" and request.reason is not None:
        raise InvalidInput("reason is only accepted with action 'edit' or 'reject'", field="reason")
    if request.action == "edit":
        text = (request.text or "").strip()
        if not text:
            raise InvalidInput(f"text is required for an edit (1 to {MAX_TEXT_CHARS} characters)", field="text")
        if len(text) > MAX_TEXT_CHARS:
            raise InvalidInput(f"text must be at most {MAX_TEXT_CHARS} characters", field="text")
        return text
    if request.text is not None:
        raise InvalidInput(f"text is only accepted with action 'edit', not {request.action!r}", field="text")
    return None


def plan_review(state: ReviewState, request: ReviewRequest, edited_text: str | None) -> ReviewPlan:
    """What the review does. Raises Conflict when the ticket no longer needs review (a repeated request never
    sends twice) or there is no draft to approve.

    approve: send the latest draft, unless the agent's reply with that draft is already out or on its way
    (resolved and pending/sent), which only clears the flag. edit: send the reviewer's text, cancelling the
    agent's reply if it has not left yet. reject: send nothing, cancel the agent's unsent reply.
    Labels: approve = right; edit and reject = wrong (an attempt without a draft is not judged).
    """
    if not state.needs_review:
        raise Conflict("the ticket does not need review (already reviewed?)", field="action")
    already_delivered = state.status == "resolved" and state.agent_reply_status in {"pending", "sent"}
    judged = bool(state.draft)
    if request.action == "approve":
        if not state.draft:
            raise Conflict("the latest attempt has no draft to approve; send an edit instead", field="action")
        return ReviewPlan(
            action="approve",
            sent_text=state.draft,
            send=not already_delivered,
            cancel_agent_reply=None,
            resolve=not already_delivered,
            close=request.close,
            verdict="right",
            reason=None,
            learn=True,
            status_reason="reviewer approved the draft",
        )
    if request.action == "edit":
        assert edited_text is not None  # check_review_request guarantees it
        return ReviewPlan(
            action="edit",
            sent_text=edited_text,
            send=True,
            cancel_agent_reply="superseded by the reviewer's edit" if already_delivered else None,
            resolve=True,
            close=request.close,
            verdict="wrong" if judged else None,
            reason=request.reason,
            learn=True,
            status_reason="reviewer edited the reply",
        )
    return ReviewPlan(
        action="reject",
        sent_text=None,
        send=False,
        cancel_agent_reply="rejected by the reviewer" if state.has_attempt else None,
        resolve=False,
        close=request.close,
        verdict="wrong" if judged else None,
        reason=request.reason,
        learn=False,
        status_reason="reviewer rejected the reply",
    )
