"""The check that every factual sentence of a model reply is supported by a passage it cites (issue 15, item 4)."""

from __future__ import annotations

import pytest

from agent.drafting.support import check_support, insert_before_signoff, strip_citations

TRASH = "KB-1a2b3c4d"
PLANS = "KB-9f8e7d6c"
PASSAGES = {
    TRASH: "Deleted entries\nDeleted time entries stay in the Trash for 30 days. Open Settings › Data › Trash and "
    "choose Restore to bring an entry back.",
    PLANS: "Plans\nFree – up to 3 users. No invoicing. Starter – $8 per user per month, includes invoicing.",
}
TICKET = (
    "Timesheets missing\nSince this morning the October timesheets are empty for 15 of our 38 people. "
    "Can you restore them?"
)


def verdicts(reply: str, *, cited: tuple[str, ...] = ()) -> dict[str, tuple[bool, bool]]:
    """sentence -> (factual, supported)."""
    check = check_support(reply, passages=PASSAGES, cited=cited, ticket=TICKET, customer_name="Ana Souza")
    return {s.text: (s.factual, s.supported) for s in check.sentences}


def test_a_sentence_taken_from_the_cited_passage_is_kept() -> None:
    reply = f"Deleted time entries stay in the Trash for 30 days [{TRASH}]."
    check = check_support(reply, passages=PASSAGES, cited=[], ticket=TICKET)
    [sentence] = check.sentences
    assert sentence.factual and sentence.supported and sentence.labels == [TRASH]
    assert check.text == "Deleted time entries stay in the Trash for 30 days."  # the label is not for the customer
    assert check.answers(TRASH) and not check.answers(PLANS)


@pytest.mark.parametrize(
    ("sentence", "reason"),
    [
        ("They stay in the Trash for 90 days.", "duration 90 day"),  # a number the passage does not give
        ("They stay in the Trash for 30 hours.", "duration 30 hour"),  # the figure, but not the unit
        ("Open Settings › Billing › Trash and choose Restore.", "menu step \u201cBilling\u201d"),
        ("Starter costs $12 per user per month.", "figure 12"),
        ("Our engineers recover lost timesheets from nightly backups.", "of its content"),
    ],
)
def test_a_sentence_the_passage_does_not_state_is_removed(sentence: str, reason: str) -> None:
    label = PLANS if "Starter" in sentence else TRASH
    check = check_support(
        f"Hi Ana,\n\nDeleted time entries stay in the Trash for 30 days [{TRASH}]. {sentence[:-1]} [{label}].",
        passages=PASSAGES,
        cited=[],
        ticket=TICKET,
        customer_name="Ana Souza",
    )
    [removed] = check.removed
    assert removed.text == sentence and reason in removed.reason
    assert check.text == "Hi Ana,\n\nDeleted time entries stay in the Trash for 30 days."
    assert check.removed_share == 0.5


def test_citing_a_passage_it_was_not_given_supports_nothing() -> None:
    check = check_support(
        "Deleted time entries stay in the Trash for 30 days [KB-00000000].",
        passages=PASSAGES,
        cited=[],
        ticket=TICKET,
    )
    [sentence] = check.sentences
    assert not sentence.supported and sentence.reason == "cites no passage it was given"
    assert check.invalid_labels == ["KB-00000000"] and check.text == ""


def test_a_citation_after_the_full_stop_belongs_to_the_sentence_before() -> None:
    check = check_support(
        f"Deleted time entries stay in the Trash for 30 days. [{TRASH}] Starter includes invoicing. ({PLANS})",
        passages=PASSAGES,
        cited=[],
        ticket=TICKET,
    )
    assert [s.labels for s in check.sentences] == [[TRASH], [PLANS]]
    assert not check.removed
    assert check.text == "Deleted time entries stay in the Trash for 30 days. Starter includes invoicing."


def test_without_inline_labels_the_verdicts_citations_stand_in() -> None:
    reply = "Deleted time entries stay in the Trash for 30 days. Starter includes invoicing."
    both = check_support(reply, passages=PASSAGES, cited=[TRASH.lower(), PLANS], ticket=TICKET)
    assert not both.removed and not both.inline_citations
    assert both.text == reply  # nothing to take out: the model's text as it wrote it
    one = check_support(reply, passages=PASSAGES, cited=[TRASH], ticket=TICKET)
    assert [s.text for s in one.removed] == ["Starter includes invoicing."]


def test_courtesy_greetings_handovers_and_echoes_state_no_fact() -> None:
    reply = (
        "Hello Ana!\n\nThank you for reaching out, and sorry for the trouble. I understand the October "
        "timesheets are empty for 15 of your people. Could you tell us when you last saw them? A colleague will "
        "follow up shortly.\n\nKind regards,\nThe Support Team"
    )
    found = verdicts(reply)
    assert not any(factual for factual, _ in found.values()), found
    check = check_support(reply, passages=PASSAGES, cited=[], ticket=TICKET, customer_name="Ana Souza")
    assert check.text == reply and check.has_handover()


def test_a_claim_made_of_the_customers_own_words_is_a_fact_to_support() -> None:
    # Every content word is the customer's, but "Yes, you can" answers the question: the passage must say so.
    found = verdicts(f"Yes, you can restore the October timesheets [{TRASH}].")
    assert found == {"Yes, you can restore the October timesheets.": (True, False)}


def test_paraphrase_within_the_share_is_kept() -> None:
    # "remain" and "bin" are not in the passage; "deleted", "entries", "trash", "30 days" are.
    found = verdicts(f"Deleted entries remain in the Trash bin for 30 days [{TRASH}].")
    assert found == {"Deleted entries remain in the Trash bin for 30 days.": (True, True)}
    found = verdicts(f"Deleted items remain in a recycle bin for 30 days [{TRASH}].")
    assert found == {"Deleted items remain in a recycle bin for 30 days.": (True, False)}


def test_the_handover_paragraph_goes_before_the_signoff() -> None:
    reply = "Hi Ana,\n\nDeleted entries stay in the Trash.\n\nKind regards,\nThe Support Team"
    assert insert_before_signoff(reply, "A colleague will follow up.") == (
        "Hi Ana,\n\nDeleted entries stay in the Trash.\n\nA colleague will follow up."
        "\n\nKind regards,\nThe Support Team"
    )
    assert insert_before_signoff("Deleted entries stay in the Trash.", "Passed on.") == (
        "Deleted entries stay in the Trash.\n\nPassed on."
    )


def test_strip_citations_keeps_every_sentence() -> None:
    assert strip_citations(f"We promise a refund [{TRASH}]. Really [K1, K2].") == "We promise a refund. Really."
