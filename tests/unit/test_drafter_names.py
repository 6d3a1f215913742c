"""The offline drafter puts the customer's name into a past resolution's `<name>` placeholder as literal text."""

from __future__ import annotations

from uuid import uuid4

import pytest

from agent.drafting.drafter import OfflineDrafter
from agent.drafting.request import DraftRequest
from agent.triage.specialists import SPECIALISTS
from knowledge.retrieval import RetrievedItem


def grounding(resolution: str) -> RetrievedItem:
    return RetrievedItem(
        kind="resolution",
        id=uuid4(),
        title="Password reset email missing",
        text="I never receive the password reset email.",
        resolution=resolution,
        category="technical",
        intent="reset_password",
        source="history",
        similarity=0.95,
        text_rank=1,
        vector_rank=1,
        score=0.95,
    )


@pytest.mark.parametrize("name", ["O\\Brien", "Zoë \\g<0>", "Ana \\1 Souza", "C:\\new\\table", "\\"])
def test_a_name_with_backslashes_is_put_in_literally(name: str) -> None:
    """`re.sub` reads its replacement as a template: a `\\` in a customer's name crashed drafting (bad escape)
    or pulled in other text (`\\g<0>`)."""
    resolution = "Hi <name>, the reset email can take ten minutes to arrive; please check your spam folder."
    request = DraftRequest(
        ticket={"subject": "Reset email missing", "body": "I never receive the password reset email."},
        category="technical",
        priority="normal",
        specialist=SPECIALISTS["technical"],
        customer_name=name,
        grounding=grounding(resolution),
        resolutions=[],
        passages=[],
        context={},
        risks=[],
    )
    draft = OfflineDrafter().compose(request)
    assert f"Hi {name}, the reset email" in draft.text
    assert "<name>" not in draft.text
