"""The reader's choice of passage and sentences per question, and the reply composed from it
(agent/drafting/reader.py, agent/drafting/composer.py). Vectors are made by hand so the choice is known."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest

from agent.drafting.composer import compose_answers
from agent.drafting.questions import Question, asked_for, gives
from agent.drafting.reader import (
    ANSWER_KIND_BONUS,
    LATE_SCALE,
    LATE_SHIFT,
    LATE_WEIGHT,
    Evidence,
    QuestionTokens,
    Quote,
    Reader,
    ReadPassage,
    TokenQuery,
    choose,
    choose_each,
    passage_units,
    plain,
    quoted_indices,
    read_units,
)
from agent.scoring.confidence import KNOWLEDGE_SIGNALS, knowledge_signals, source_agreement
from knowledge.embedder import TokenRows
from knowledge.retrieval import RetrievedItem
from tests.support.draft_requests import item as passage_item


def item(title: str, text: str, document: str) -> RetrievedItem:
    return passage_item(str(uuid.uuid4()), title=title, text=text, document=document)


def unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=float)
    return v / np.linalg.norm(v)


def one_sentence(text: str, *values: float) -> ReadPassage:
    """A passage of one sentence whose vector, and the passage's, point along `values`."""
    return ReadPassage((text,), np.stack([unit(*values)]), unit(*values))


def test_units_are_sentences_and_list_items_with_markdown_removed() -> None:
    text = (
        "Tallyhive has four plans. Each has its limits:\n\n- **Free** – up to 2 members. No invoicing.\n"
        "- **Starter** – invoicing."
    )
    assert plain("**Free** and __bold__") == "Free and bold"
    # Inline code loses its marks; a fenced block keeps its fences.
    assert plain("Click `Pay now`, then send `updated_since`.") == "Click Pay now, then send updated_since."
    assert plain("```\nRetry-After: 17\n```") == "```\nRetry-After: 17\n```"
    assert passage_units(text) == [
        "Tallyhive has four plans.",
        "Each has its limits: Free – up to 2 members. No invoicing.",
        "Starter – invoicing.",
    ]


def test_a_list_item_is_one_unit_so_its_second_sentence_keeps_what_it_refers_to() -> None:
    step = (
        "2. For `POST` requests, send an `Idempotency-Key` header. Retrying with the same key never creates a "
        "duplicate entry."
    )
    assert passage_units(f"What to do:\n\n1. Retry with backoff.\n{step}") == [
        "What to do: Retry with backoff.",
        # Replies are plain text: inline code keeps its words, not its backticks.
        "For POST requests, send an Idempotency-Key header. Retrying with the same key never creates a "
        "duplicate entry.",
    ]
    # A list item longer than a unit should be is read sentence by sentence.
    long_item = "- " + " ".join(f"Sentence number {i} says something about the product." for i in range(8))
    assert len(passage_units(long_item)) == 8


def test_the_passage_whose_best_sentence_answers_the_question_wins_over_the_closer_passage() -> None:
    plans = item("Plans › What each plan includes", "...", "plans")
    invoices = item("Invoices › Download", "...", "invoices")
    question = unit(1, 0, 0)
    ticket = unit(0.3, 0.3, 1)
    read = [
        ReadPassage(
            ("Free has no invoicing.", "Starter has invoicing."),
            np.stack([unit(1, 0.1, 0), unit(0.8, 0.5, 0)]),
            unit(0.2, 0.2, 1),
        ),
        ReadPassage(("Download invoices from Billing.",), np.stack([unit(0.3, 1, 0)]), unit(0.3, 0.3, 1)),
    ]
    evidence = choose(Question("Which plan has invoicing?"), question, ticket, [plans, invoices], read)
    assert evidence.item is plans
    assert evidence.units == ["Free has no invoicing.", "Starter has invoicing."]
    assert evidence.runner_up < evidence.score
    assert [i for i, _ in evidence.ranking] == [str(plans.id), str(invoices.id)]


def test_far_sentences_of_a_long_passage_are_not_quoted() -> None:
    passage = item("Trial", "...", "trial")
    units = tuple(f"Sentence {n}." for n in range(6))
    vectors = np.stack([unit(1, 0)] + [unit(0, 1)] * 5)
    evidence = choose(Question("q?"), unit(1, 0), unit(1, 0), [passage], [ReadPassage(units, vectors, unit(1, 0))])
    assert evidence.units == ["Sentence 0."]


def test_the_best_passages_are_kept_as_candidates_with_their_units_numbered() -> None:
    chosen, close, far = item("A", "...", "a"), item("B", "...", "b"), item("C", "...", "c")
    long_units = tuple(f"Sentence {n}." for n in range(7))
    read = [
        ReadPassage(("A1.", "A2."), np.stack([unit(1, 0), unit(0.9, 0.44)]), unit(1, 0)),
        ReadPassage(long_units, np.stack([unit(0, 1)] * 5 + [unit(0.95, 0.3), unit(0.9, 0.44)]), unit(0.9, 0.44)),
        ReadPassage(("C1.",), np.stack([unit(0, 1)]), unit(0, 1)),
    ]
    evidence = choose(Question("q?"), unit(1, 0), unit(1, 0), [chosen, close, far], read)
    assert [c.item for c in evidence.candidates] == [chosen, close]  # C is far below the best: not offered
    assert evidence.candidates[0].units == ((0, "A1."), (1, "A2."))
    # Of a long passage, the units the offline reply would quote, with their place in the passage.
    assert evidence.candidates[1].units == ((5, "Sentence 5."), (6, "Sentence 6."))


def test_each_part_of_a_compound_question_is_quoted_from_the_article_even_a_section_not_retrieved() -> None:
    # "How do I ask for a refund, and how long does it take?": the chosen section answers the first part; the
    # second part's answer is in another section of the same article, which no search returned.
    steps = item("Refunds › How to ask", "...", "refunds")
    timing = item("Refunds › After you ask", "...", "refunds")
    other = item("Invoices › Download", "...", "invoices")
    read = [one_sentence("Click Ask about this charge.", 1, 0, 0), one_sentence("Download a PDF.", 0, 1, 0.3)]
    timing_read = one_sentence("Banks take 5–10 business days.", 0, 0.2, 1)
    question = Question("How do I ask for a refund, and how long does it take?")
    assert question.parts == ["How do I ask for a refund", "how long does it take?"]
    parts = np.stack([unit(1, 0, 0), unit(0, 0, 1)])
    evidence = choose(
        question, unit(1, 0, 0.2), unit(1, 0, 0.2), [steps, other], read, parts, sections=[(timing, timing_read)]
    )
    assert evidence.item is steps
    assert [(q.item, q.units) for q in evidence.more] == [(timing, ("Banks take 5–10 business days.",))]
    # A model choosing the sentences is offered the same sections first.
    assert [c.item for c in evidence.candidates][:2] == [steps, timing]
    assert evidence.candidates[1].units == ((0, "Banks take 5–10 business days."),)
    assert evidence.weakest_part == pytest.approx(float(unit(0, 0.2, 1) @ unit(0, 0, 1)))  # the second part's
    # Without the parts, only the chosen section is quoted; a single-part question's weakest part is its best unit.
    alone = choose(question, unit(1, 0, 0.2), unit(1, 0, 0.2), [steps, other], read)
    assert alone.more == [] and alone.weakest_part == alone.best_unit


def test_a_part_nothing_in_the_article_answers_is_not_quoted_and_lowers_the_weakest_part() -> None:
    steps = item("Refunds › How to ask", "...", "refunds")
    read = [one_sentence("Click Ask about this charge.", 1, 0)]
    question = Question("How do I ask for a refund, and can you sign our HIPAA agreement?")
    evidence = choose(question, unit(1, 0), unit(1, 0), [steps], read, np.stack([unit(1, 0), unit(0, 1)]))
    assert evidence.units == ["Click Ask about this charge."] and evidence.more == []
    assert evidence.weakest_part == pytest.approx(0.0)


def test_the_sentence_giving_the_kind_of_answer_asked_for_wins_a_tie() -> None:
    # Two sections equally close to the question; only one states a duration.
    review = item("Refunds › Review", "...", "refunds")
    bank = item("Refunds › Your bank", "...", "refunds")
    units = (("The billing team reviews each request.",), ("Banks take 5–10 business days.",))
    read = [ReadPassage(u, np.stack([unit(1, 0.1)]), unit(1, 0), tuple(gives(x) for x in u)) for u in units]
    how_long = choose(Question("How long does a refund take?"), unit(1, 0), unit(1, 0), [review, bank], read)
    assert how_long.item is bank
    assert how_long.best_unit == pytest.approx(float(unit(1, 0.1) @ unit(1, 0)) + ANSWER_KIND_BONUS)
    # A question asking for no particular kind of answer scores both alike: the first stays first.
    about = choose(Question("Tell me about refunds."), unit(1, 0), unit(1, 0), [review, bank], read)
    assert about.item is review and about.best_unit == pytest.approx(float(unit(1, 0.1) @ unit(1, 0)))
    assert asked_for("Tell me about refunds.") == frozenset()


def test_a_second_question_gets_the_articles_next_section_rather_than_the_same_quote_again() -> None:
    # "Can I correct a sent invoice? … How do I show it as paid?": both land on the "Correct" section, which
    # mentions "marked as paid"; the second question takes the article's "Record a payment" section instead.
    correct = item("Invoices › Correct a sent invoice", "...", "invoices")
    payment = item("Invoices › Record a payment", "...", "invoices")
    other = item("Accounting › Sync payments", "...", "accounting")
    read = [
        one_sentence("Click Edit until it is marked as paid.", 1, 0, 0),
        one_sentence("Click Mark as paid.", 0.6, 0.8, 0),
        one_sentence("Payments sync from Xero.", 0.8, 0.6, 0),
    ]
    questions = [Question("Can I correct a sent invoice?"), Question("How do I show an invoice as paid?")]
    vectors = np.stack([unit(1, 0, 0), unit(1, 0.3, 0)])
    first, second = choose_each(questions, vectors, unit(1, 0.2, 0), [correct, payment, other], read, [None, None])
    assert first.item is correct
    assert second.item is payment and second.units == ["Click Mark as paid."]  # not the other article's passage
    # Without the same-article section, or when it does not answer at all, the second keeps the quote.
    alone = choose_each(questions, vectors, unit(1, 0.2, 0), [correct, other], [read[0], read[2]], [None, None])
    assert alone[1].item is correct
    far = [read[0], one_sentence("Unrelated.", 0, 0, 1), read[2]]
    kept = choose_each(questions, vectors, unit(1, 0.2, 0), [correct, payment, other], far, [None, None])
    assert kept[1].item is correct


def lead_of(document: str, title: str) -> RetrievedItem:
    """An article's opening paragraph: its first passage, headed by the article's title alone."""
    lead = item(title, "...", document)
    return replace(lead, metadata={**lead.metadata, "seq": 0, "document_title": title})


def test_the_articles_opening_sentence_that_answers_too_is_quoted_before_the_chosen_section() -> None:
    # "Does cancelling wipe our projects?": the chosen section says what happens to the plan; the article's opening
    # paragraph says what happens to the data.
    lead = lead_of("cancel", "Cancel your subscription")
    section = item("Cancel your subscription › What happens next", "...", "cancel")
    section = replace(section, metadata={**section.metadata, "seq": 2, "document_title": "Cancel your subscription"})
    other = item("Delete your account", "...", "delete")
    read = [
        ReadPassage(
            ("Your plan stays active until the end of the period.", "No further charges are made."),
            np.stack([unit(1, 0, 0), unit(0.8, 0.6, 0)]),
            unit(1, 0, 0),
        ),
        one_sentence("Deleting your account removes every project.", 0.5, 0, 0.87),
    ]
    lead_read = ReadPassage(
        ("You can cancel at any time.", "Cancelling stops renewals; it does not delete your workspace or data."),
        np.stack([unit(0, 0, 1), unit(0.97, 0, 0.24)]),
        unit(0.7, 0, 0.7),
    )
    question = Question("Does cancelling wipe our projects?")
    evidence = choose(question, unit(1, 0, 0), unit(1, 0, 0), [section, other], read, sections=[(lead, lead_read)])
    assert evidence.item is section
    # The lead, short, is quoted whole: its sentences read as one paragraph.
    assert [(q.item, q.units) for q in evidence.more] == [(lead, lead_read.units)]
    reply = compose_answers([evidence], language="en").paragraphs[0]
    assert reply.index("it does not delete") < reply.index("stays active")  # the article's order: lead first
    # An opening paragraph far from the question is not quoted; nor a first passage that is a section of its own.
    far = ReadPassage(("You can cancel at any time.",), np.stack([unit(0, 0, 1)]), unit(0, 0, 1))
    assert choose(question, unit(1, 0, 0), unit(1, 0, 0), [section, other], read, sections=[(lead, far)]).more == []
    headed = replace(lead, title="Cancel your subscription › Before you cancel")
    unheaded = choose(question, unit(1, 0, 0), unit(1, 0, 0), [section, other], read, sections=[(headed, lead_read)])
    assert unheaded.more == []
    # A lead that only says what the article covers is not quoted, however close.
    signpost = ReadPassage(
        ("This article explains what cancelling does to your data.",), np.stack([unit(1, 0, 0)]), unit(1, 0, 0)
    )
    assert (
        choose(question, unit(1, 0, 0), unit(1, 0, 0), [section, other], read, sections=[(lead, signpost)]).more == []
    )


@pytest.mark.parametrize(
    "signpost",
    [
        "This article explains when each change takes effect.",
        "Dieser Artikel erklärt, wann eine Änderung gilt.",
        "Cet article explique quand un changement prend effet.",
        "Este artículo explica cuándo se aplica cada cambio.",
    ],
)
def test_a_sentence_about_the_article_itself_is_not_quoted(signpost: str) -> None:
    units = ("You can change plans at any time.", signpost, "Upgrades apply at once.")
    passage = ReadPassage(units, np.stack([unit(1, 0), unit(1, 0), unit(1, 0)]), unit(1, 0))
    assert quoted_indices(passage, np.array([0.8, 0.8, 0.8])) == [0, 2]
    # When it is all the passage has, it stays: an empty quote would hand the question over.
    alone = ReadPassage((signpost,), np.stack([unit(1, 0)]), unit(1, 0))
    assert quoted_indices(alone, np.array([0.8])) == [0]
    # A sentence that only mentions an article ("see the article on …"), or a page of the product, is kept.
    for about_the_product in ("See the article on invoices for details.", "This page lists every invoice."):
        kept = ReadPassage((about_the_product,), np.stack([unit(1, 0)]), unit(1, 0))
        assert quoted_indices(kept, np.array([0.8])) == [0]


def evidence(question: str, units: list[str], score: float, title: str = "Plans › Free") -> Evidence:
    return Evidence(Question(question), item(title, " ".join(units), title), units, score, score, 0.0)


def test_each_answered_question_is_introduced_and_cited_and_the_rest_handed_over() -> None:
    answered = evidence("Which plan has invoicing?", ["Starter – invoicing."], 0.7)
    unanswered = evidence("Do you sign a HIPAA agreement?", ["Unrelated."], 0.2)
    # The account's tier as the operator stores it; the reply spells it as the help centre does.
    composition = compose_answers([answered, unanswered], language="en", tier="starter")
    text = "\n\n".join(composition.paragraphs)
    assert "You asked \u201cWhich plan has invoicing?\u201d" in text
    assert "Your account is on Starter." in text
    assert f"(Source: Plans, KB-{str(answered.item.id)[:8]})" in text  # type: ignore[union-attr]
    assert "passed your other question" in text and "HIPAA" in text
    assert composition.citations == [str(answered.item.id)]  # type: ignore[union-attr]
    assert [e.question.text for e in composition.handed_over] == ["Do you sign a HIPAA agreement?"]


def test_a_trial_account_is_said_to_be_on_a_trial_not_on_trial() -> None:
    ev = evidence("What happens when the trial ends?", ["When the trial ends, the workspace moves to Free."], 0.7)
    english = "\n".join(compose_answers([ev], language="en", tier="trial", on_trial=True).paragraphs)
    assert "Your account is on a trial." in english and "on trial." not in english
    german = "\n".join(compose_answers([ev], language="de", tier="Pilot", on_trial=True).paragraphs)
    assert "Ihr Konto ist in der Testphase." not in german  # the passage does not speak of "Pilot"
    pilot = evidence("Was passiert am Ende?", ["Am Ende der Pilot-Phase wird das Konto gesperrt."], 0.7)
    german = "\n".join(compose_answers([pilot], language="de", tier="Pilot", on_trial=True).paragraphs)
    assert "Ihr Konto ist in der Testphase." in german


def test_a_question_answered_by_the_same_quotes_as_an_earlier_one_joins_its_answer() -> None:
    first = evidence("What happens when the trial ends?", ["Support cannot extend trials."], 0.7)
    again = Evidence(Question("Can the trial be extended?"), first.item, first.units, 0.6, 0.6, 0.0)
    other = evidence("Which plan has invoicing?", ["Starter – invoicing."], 0.7)
    composition = compose_answers([first, other, again], language="en")
    assert len(composition.paragraphs) == 2
    assert composition.paragraphs[0].startswith(
        "You asked \u201cWhat happens when the trial ends?\u201d and \u201cCan the trial be extended?\u201d:\n"
    )
    assert composition.paragraphs[0].count("Support cannot extend trials.") == 1
    assert [e.question.text for e in composition.answered] == [
        "What happens when the trial ends?",
        "Which plan has invoicing?",
        "Can the trial be extended?",
    ]
    german = compose_answers([first, again], language="de").paragraphs
    assert german[0].startswith("Sie fragten \u201cWhat happens when the trial ends?\u201d und")


def test_questions_answered_from_the_same_passage_share_one_answer_quoting_each_sentence_once() -> None:
    # "Related? What should we use instead?": both answered from the same passage, the second with more of it.
    text = (
        "`401 invalid_token` means the token was revoked or has expired. Create a new one. "
        "A deactivated member's tokens stop working at once. Replace it with a workspace token."
    )
    passage = item("API tokens › Errors", text, "api")
    units = read_units(passage)
    related = Evidence(Question("Related?"), passage, [units[0], units[2]], 0.7, 0.7, 0.0)
    instead = Evidence(Question("What should we use instead?"), passage, [units[3], units[0]], 0.6, 0.6, 0.0)
    other = evidence("Which plan has the API?", ["Pro has the API."], 0.7)
    composition = compose_answers([related, other, instead], language="en")
    assert len(composition.paragraphs) == 2
    first = composition.paragraphs[0]
    assert first.startswith("You asked \u201cRelated?\u201d and \u201cWhat should we use instead?\u201d:\n")
    # Each sentence once, in the passage's order, whichever question quoted it first.
    for sentence in (units[0], units[2], units[3]):
        assert first.count(sentence) == 1
    assert first.index(units[0]) < first.index(units[2]) < first.index(units[3])
    assert units[1] not in first  # quoted by neither
    assert first.count("(Source: API tokens,") == 1
    assert composition.citations == [str(passage.id), str(other.item.id)]  # type: ignore[union-attr]
    assert [e.question.text for e in composition.answered] == [
        "Related?",
        "Which plan has the API?",
        "What should we use instead?",
    ]
    # Answered from that passage and another, the second question still joins, with the other passage's quote.
    scopes = item("API tokens › Scopes", "A token needs the scope the endpoint names.", "api")
    instead.more = [Quote(scopes, ("A token needs the scope the endpoint names.",))]
    [joined] = compose_answers([related, instead], language="en").paragraphs
    assert joined.count(units[0]) == 1 and "needs the scope" in joined
    # Passages in common but each with one of its own: two answers.
    related.more = [Quote(other.item, ("Pro has the API.",))]  # type: ignore[arg-type]
    assert len(compose_answers([related, instead], language="en").paragraphs) == 2


def test_an_answer_to_a_question_and_to_something_only_said_is_introduced_by_the_question() -> None:
    answer = evidence("x", ["SYNC-409: the Shelfwise value wins."], 0.7)
    stated = replace(answer, question=Question("In Shopify the quantity jumps back to the old number.", explicit=False))
    asked = replace(stated, question=Question("Which one is supposed to be right?"))
    [paragraph] = compose_answers([stated, asked], language="en").paragraphs
    assert paragraph.startswith("You asked \u201cWhich one is supposed to be right?\u201d:\n")
    # Only things said: "You wrote", each of them.
    other = replace(stated, question=Question("The sync log shows SYNC-409.", explicit=False))
    [paragraph] = compose_answers([stated, other], language="en").paragraphs
    assert paragraph.startswith("You wrote \u201cIn Shopify") and "SYNC-409.\u201d:" in paragraph.split("\n")[0]


def test_a_passage_an_earlier_answer_quoted_is_not_quoted_again_beside_a_new_one() -> None:
    # "Can clients pay by card through a link? Or do we chase bank transfers?": both answers read the accounting
    # passage beside their own; the second does not repeat it.
    shared = Quote(item("Accounting › Sync", "Payments recorded in Xero mark the invoice as paid.", "acc"), ())
    shared = replace(shared, units=("Payments recorded in Xero mark the invoice as paid.",))
    card = evidence("Can clients pay by card?", ["Click Send to email the invoice as a PDF."], 0.7, "Invoices › Send")
    card.more = [shared]
    transfer = evidence("Or do we chase transfers?", ["Bank transfer on Enterprise only."], 0.6, "Payment › Ways")
    transfer.more = [shared]
    first, second = compose_answers([card, transfer], language="en").paragraphs
    assert "Payments recorded in Xero" in first and "Payments recorded in Xero" not in second
    assert "Bank transfer on Enterprise only." in second
    # An answer that would be left with nothing keeps its quotes: it is not left empty.
    both = evidence("Which of the two?", list(card.units), 0.6)
    both = replace(both, item=card.item, more=[Quote(transfer.item, tuple(transfer.units))])  # type: ignore[arg-type]
    third = compose_answers([card, transfer, both], language="en").paragraphs[2]
    assert "Click Send to email the invoice" in third and "Bank transfer on Enterprise only." in third


def test_a_sentence_the_reply_quoted_already_is_not_quoted_again() -> None:
    # Neighbouring sections share an overlap sentence; a second answer repeats steps the first quoted.
    def section(title: str, text: str, seq: int) -> RetrievedItem:
        found = item(title, text, "webhooks")
        return replace(found, metadata={**found.metadata, "seq": seq})

    verify = section("Webhooks › Verify", "Split the header. Build the payload. A clock that drifts breaks it.", 1)
    retries = section("Webhooks › Retries", "A clock that drifts breaks it. Deliveries are retried 8 times.", 2)
    setup = section("Webhooks › Set up", "Add an endpoint under Settings.", 0)
    why = Evidence(Question("Why wouldn't it match?"), verify, list(read_units(verify)), 0.7, 0.7, 0.0)
    why.more = [Quote(setup, read_units(setup))]
    clock = Evidence(Question("Could the clock matter?"), verify, ["Build the payload."], 0.6, 0.6, 0.0)
    clock.more = [Quote(retries, read_units(retries))]
    composition = compose_answers([why, clock], language="en")
    first, second = composition.paragraphs
    text = "\n".join(composition.paragraphs)
    assert first.index("Add an endpoint") < first.index("Split the header.")  # the article's order
    assert text.count("A clock that drifts breaks it.") == 1 and text.count("Build the payload.") == 1
    # The second answer quotes only what is new, and cites only what it quotes.
    assert "Deliveries are retried 8 times." in second and "Build the payload." not in second
    assert f"KB-{str(verify.id)[:8]}" not in second and f"KB-{str(retries.id)[:8]}" in second
    assert composition.citations == [str(setup.id), str(verify.id), str(retries.id)]
    # Within one answer: two sections sharing their overlap quote it once, in the article's order.
    [merged] = compose_answers([replace(clock, question=Question("And retries?"))], language="en").paragraphs
    assert merged.count("A clock that drifts breaks it.") == 1
    assert merged.index("Build the payload.") < merged.index("Deliveries are retried")


def test_list_items_that_are_not_sentences_keep_their_own_lines() -> None:
    units = [
        "Orders sync on a schedule that depends on your plan:",
        "Solo: every 60 minutes",
        "Team: every 15 minutes",
        "To sync straight away, click Sync now. You can use it once every 10 minutes.",
        "Security issues: security@shelfwise.example (monitored 24/7)",
        "We don't offer phone support.",
    ]
    [paragraph] = compose_answers([evidence("How often?", units, 0.7)], language="en").paragraphs
    assert paragraph.split("\n")[:5] == [
        "Orders sync on a schedule that depends on your plan:",
        "Solo: every 60 minutes",
        "Team: every 15 minutes",
        "To sync straight away, click Sync now. You can use it once every 10 minutes. "
        "Security issues: security@shelfwise.example (monitored 24/7)",
        "We don't offer phone support.",
    ]


def test_nothing_answered_is_a_handover_without_quotes() -> None:
    composition = compose_answers([evidence("Is there an on-premises edition?", ["x"], 0.1)], language="de")
    assert composition.answered == []
    assert composition.paragraphs == ["Wir haben Ihre Anfrage an unser Team weitergeleitet und melden uns bei Ihnen."]


def test_two_sections_of_one_article_are_cited_once() -> None:
    first = item("Invoices › Download", "Open Settings → Billing → Invoices.", "invoices")
    second = item("Invoices › When they are issued", "An invoice is issued every period.", "invoices")
    ev = Evidence(Question("Where are my invoices?"), first, ["Open Settings → Billing → Invoices."], 0.7, 0.7, 0.0)
    ev.more = [Quote(second, ("An invoice is issued every period.",))]
    [paragraph] = compose_answers([ev], language="en").paragraphs
    assert paragraph.count("(Source: Invoices,") == 1
    assert f"KB-{str(first.id)[:8]}, KB-{str(second.id)[:8]}" in paragraph


def test_source_agreement_counts_the_searches_whose_best_passage_is_in_a_quoted_article() -> None:
    steps = item("Refunds › How to ask", "Click Ask about this charge.", "refunds")
    timing = item("Refunds › After", "Banks take days.", "refunds")
    plans = item("Plans › Free", "Free has no invoicing.", "plans")

    def ranked(it: RetrievedItem, vector: int | None, text: int | None) -> RetrievedItem:
        return replace(it, vector_rank=vector, text_rank=text)

    ev = [Evidence(Question("How do I ask for a refund?"), steps, ["Click Ask about this charge."], 0.7, 0.7)]
    # Both searches' best passages are sections of the quoted article (not the quoted section itself: the article).
    assert source_agreement(ev, [ranked(timing, 1, 1), ranked(plans, 2, 2)]) == 1.0
    # The full-text search's best is elsewhere; resolutions do not count.
    assert source_agreement(ev, [ranked(timing, 1, 2), ranked(plans, 2, 1)]) == 0.5
    assert source_agreement(ev, [ranked(plans, 1, 1), ranked(steps, 2, None)]) == 0.0
    # A search that found no help-centre passage does not agree.
    assert source_agreement(ev, [ranked(steps, 1, None)]) == 0.5
    assert source_agreement(ev, []) == 0.0
    signals = knowledge_signals(ev, category_certainty=0.9, floor=0.4, items=[ranked(steps, 1, 1)])
    assert signals["source_agreement"] == 1.0 and set(signals) == set(KNOWLEDGE_SIGNALS)


def test_token_reading_weighs_the_words_that_tell_the_units_apart() -> None:
    # Token 1 ("invoice") is in every unit being read, token 2 ("receipt") in one, token 3 is a question mark.
    frequency = Counter({1: 2, 2: 1, 3: 2})
    rows = TokenRows(np.array([1, 2, 3]), np.eye(3, dtype=np.float32) * 5, np.array([True, True, False]))
    query = TokenQuery.of(rows, frequency, documents=2)
    assert query is not None
    assert query.weights.tolist() == [0.0, 1.0, 0.0]  # only the rare word counts
    invoice_only = np.eye(3, dtype=np.float16)[[0]]
    with_receipt = np.eye(3, dtype=np.float16)[[0, 1]]
    assert query.score(invoice_only) == 0.0 and query.score(with_receipt) == 1.0
    # A question in another language counts only the words some unit has, and is read token by token only on two
    # of them or more: on one, that word alone would decide every score.
    foreign = TokenRows(np.array([1, 2, 7]), np.eye(3, dtype=np.float32), np.array([True, True, True]))
    shared = TokenQuery.of(foreign, Counter({1: 1, 2: 1}), documents=2, shared_only=True)
    assert shared is not None and shared.weights.tolist() == [0.5, 0.5, 0.0]
    one = TokenRows(np.array([2, 7, 8]), np.eye(3, dtype=np.float32), np.array([True, True, True]))
    assert TokenQuery.of(one, frequency, documents=2, shared_only=True) is None
    # "Testphase" is test ##pha ##se: its first piece is an English word, the word is not.
    pieces = TokenRows(
        np.array([2, 1, 8]), np.eye(3, dtype=np.float32), np.array([True, True, True]), np.array([False, True, True])
    )
    assert TokenQuery.of(pieces, Counter({1: 1, 2: 1}), documents=2, shared_only=True) is None
    alone = TokenRows(np.array([7, 8]), np.eye(3, dtype=np.float32)[:2], np.array([True, True]))
    assert TokenQuery.of(alone, frequency, documents=2, shared_only=True) is None


def test_a_unit_holding_the_rare_word_asked_for_wins_a_tie_of_sentence_vectors() -> None:
    same = unit(1, 0, 0)
    # Two units with the same sentence vector; only the second has the question's rare word among its tokens.
    passage = ReadPassage(
        ("Invoices are emailed.", "Receipts go to three addresses."),
        np.stack([same, same]),
        same,
        unit_tokens=(np.eye(3, dtype=np.float16)[[0]], np.eye(3, dtype=np.float16)[[0, 1]]),
        unit_token_ids=(np.array([1]), np.array([1, 2])),
    )
    query = TokenQuery.of(
        TokenRows(np.array([1, 2]), np.eye(3, dtype=np.float32)[:2], np.array([True, True])),
        Counter({1: 2, 2: 1}),
        documents=2,
    )
    scores = passage.unit_scores(same, frozenset(), query)
    assert scores[1] > scores[0]
    cosine_part = (1 - LATE_WEIGHT) * 1.0
    assert scores[1] == pytest.approx(cosine_part + LATE_WEIGHT * (LATE_SCALE * 1.0 + LATE_SHIFT))
    assert scores[0] == pytest.approx(cosine_part + LATE_WEIGHT * (LATE_SCALE * 0.0 + LATE_SHIFT))
    # Without token vectors (another embedding model) the sentence vectors decide alone.
    assert passage.unit_scores(same, frozenset()).tolist() == pytest.approx([1.0, 1.0])
    # `choose` reads with the question's tokens when given them.
    plans = item("Receipts", "...", "receipts")
    ev = choose(Question("Where do receipts go?"), same, same, [plans], [passage], tokens=QuestionTokens(query))
    assert ev.best_unit == pytest.approx(float(scores[1]))


def test_table_rows_read_as_lines_a_reply_can_quote() -> None:
    markdown = (
        "Response times:\n\n| Plan | First response |\n| --- | --- |\n| Free | Within 3 business days |\n"
        "| Enterprise | Within 4 business hours; 24/7 for urgent incidents |"
    )
    # The header row names the columns; it is not quoted.
    assert plain(markdown).split("\n")[2:] == [
        "Free: Within 3 business days.",
        "Enterprise: Within 4 business hours; 24/7 for urgent incidents.",
    ]
    # A number in the first column reads with the column's name.
    schedule = "| Day | What we do |\n|---|---|\n| 14 | The workspace moves to the Free plan. |"
    assert plain(schedule) == "Day 14: The workspace moves to the Free plan."
    assert passage_units(schedule) == ["Day 14: The workspace moves to the Free plan."]
    # An HTML table's rows as the chunker writes them; a lone " | " in prose is left alone.
    assert plain("Plan | Price\nFree | 0 EUR") == "Plan: Price.\nFree: 0 EUR."
    # A row whose opening bar a chunk's overlap cut off is still a row, not text with bars in it.
    assert (
        plain("Rates and billable amounts | Admins and the Owner |")
        == "Rates and billable amounts: Admins and the Owner."
    )
    assert plain("Separate values with a | b in the filter.") == "Separate values with a | b in the filter."


def test_a_further_matter_the_customer_stated_is_introduced_as_written_not_as_asked() -> None:
    asked = evidence("Which plan has invoicing?", ["Starter – invoicing."], 0.7)
    stated = Evidence(
        Question("Also, the invoice button is greyed out.", explicit=False),
        item("Plans › Free", "Free – no invoicing.", "Plans › Free"),
        ["Free – no invoicing."],
        0.7,
        0.7,
        0.0,
    )
    text = "\n\n".join(compose_answers([asked, stated], language="en").paragraphs)
    assert "You asked \u201cWhich plan has invoicing?\u201d" in text
    assert "You wrote \u201cAlso, the invoice button is greyed out.\u201d" in text


class CountingEmbedder:
    """Random unit vectors, no token vectors; counts the texts it encodes."""

    name, dimension = "counting", 8

    def __init__(self) -> None:
        self.texts = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.texts += len(texts)
        vectors = np.random.default_rng(len(texts)).standard_normal((len(texts), self.dimension))
        out: np.ndarray = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
        return out


async def test_warming_reads_only_what_fits_and_what_it_has_not_read() -> None:
    passages = [item(f"Article {n}", f"Sentence {n} of the help centre.", f"doc-{n}") for n in range(12)]
    embedder = CountingEmbedder()
    reader = Reader(embedder, cache_size=10)

    assert await reader.warm(passages) == 10  # the cache's room, no more
    encoded = embedder.texts
    # Warmed again (every few minutes): a help centre larger than the cache is not read over and over.
    assert await reader.warm(passages) == 0 and embedder.texts == encoded
    # With room, only the passages not read yet are read.
    small = Reader(embedder, cache_size=100)
    assert await small.warm(passages[:5]) == 5
    assert await small.warm(passages) == 7
