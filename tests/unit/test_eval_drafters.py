"""`deskpilot eval --llm` checks every reply the same way, whichever drafter wrote it: the reply's frame (quoted
questions, reference lines, the team under the sign-off) is no claim; an invented sentence is."""

from __future__ import annotations

from agent.quality.drafters import drafter_summary, reply_body, side_by_side, unsupported_sentences
from tests.support.draft_requests import evidence, item, request

TRASH = item(
    "1a2b3c4d-0000-4000-8000-000000000001",
    title="Deleted entries › Restoring",
    text="Deleted time entries stay in the Trash for 30 days. Open Settings › Data › Trash and choose Restore.",
)
QUESTION = "Can we get back the time entries someone deleted yesterday?"
REQUEST = request("Deleted entries", f"Hi, {QUESTION} Thanks, Ana", items=[TRASH], evidence=[evidence(QUESTION, TRASH)])
OFFLINE = (
    "Hello Ana,\n\nThank you for contacting us about “Deleted entries”.\n\n"
    f"You asked “{QUESTION}”:\n"
    "Deleted time entries stay in the Trash for 30 days. Open Settings › Data › Trash and choose Restore.\n"
    "(Source: Deleted entries, KB-1a2b3c4d)\n\nKind regards,\nOnboarding team"
)


def test_the_frame_of_a_reply_is_no_claim() -> None:
    body = reply_body(OFFLINE, f"Deleted entries\n\nHi, {QUESTION} Thanks, Ana")
    assert "You asked" not in body and "Source:" not in body and "Onboarding team" not in body
    assert "Deleted time entries stay in the Trash for 30 days." in body
    assert unsupported_sentences(OFFLINE, REQUEST) == []


def test_an_invented_sentence_is_counted_whoever_wrote_it() -> None:
    invented = OFFLINE.replace("choose Restore.", "choose Restore. Restored entries are emailed to your accountant.")
    assert unsupported_sentences(invented, REQUEST) == ["Restored entries are emailed to your accountant."]


def test_the_summary_counts_auto_sent_replies_with_an_unsupported_sentence() -> None:
    from agent.quality.drafters import DrafterRow

    def row(decision: str, unsupported: list[str], right: bool, kind: str = "answerable") -> DrafterRow:
        facts = (1, 1) if right else (0, 1)
        answered = decision != "escalate" and right
        return DrafterRow("t", decision, 0.8, "reply", right, answered, 2.0, unsupported, facts, kind)

    rows = [row("deliver", ["x"], True), row("deliver", [], True), row("escalate", [], False, "must_escalate")]
    rows[2].facts = None
    summary = drafter_summary(rows)
    assert summary["auto_sent_with_unsupported"] == 1 and summary["replies_with_unsupported"] == 1
    assert summary["must_escalate_sent"] == 0 and summary["answered_right"] == 2
    assert summary["unsupported_per_reply"] == 1 / 3 and summary["seconds_per_reply_p50"] == 2.0
    table = side_by_side({"offline": summary, "llm": summary})
    assert {r["key"] for r in table} >= {"answered_right_rate", "auto_sent_with_unsupported", "ece"}


def test_removed_sentences_lower_the_llm_confidence_factor() -> None:
    from agent.drafting.llm import DraftResult, confidence_factor

    clean = DraftResult(reply="x", self_confidence=0.9, citation_validity=1.0, support={"removed_share": 0.0})
    trimmed = DraftResult(reply="x", self_confidence=0.9, citation_validity=1.0, support={"removed_share": 0.25})
    assert clean.confidence_factor == confidence_factor(0.9, 1.0)
    assert trimmed.confidence_factor == confidence_factor(0.9, 1.0) * 0.75


def test_a_numbered_list_item_is_one_sentence_and_its_number_no_figure() -> None:
    from agent.drafting.support import check_support

    passages = {"KB-1a2b3c4d": "Restoring\n" + TRASH.text}
    reply = (
        "To restore deleted entries:\n1. Open Settings › Data › Trash [KB-1a2b3c4d].\n2. Choose Restore [KB-1a2b3c4d]. "
        "Entries stay for 45 days."
    )
    check = check_support(reply, passages=passages, cited=["KB-1a2b3c4d"], ticket=QUESTION)
    assert [s.text for s in check.removed] == ["Entries stay for 45 days."]
    assert "1. Open Settings › Data › Trash." in check.text and "2. Choose Restore." in check.text
