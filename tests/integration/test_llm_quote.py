"""Quote mode (DESKPILOT_LLM_REPLY=quote) through the real ChatOpenAI client against a scripted server: the model is
shown each question with numbered passage sentences and answers with ids; the reply quotes the reader's sentences
and adds those the model chose, cited, each passage in its own order; ids it was not shown are refused; a question
it chose nothing for keeps the reader's quote and is recorded as disputed; an opening sentence that states what no
passage says is removed.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from agent.drafting.llm import LLMDrafter, make_llm_drafter
from agent.drafting.questions import Question
from agent.drafting.reader import Candidate, Evidence
from agent.drafting.request import DraftRequest
from core.settings import Settings
from tests.support.draft_requests import item, request
from tests.support.fake_openai import FakeOpenAI, RecordedRequest, Step, computed, reply_json, write_answer

PLANS_ID = "1a2b3c4d-0000-4000-8000-000000000001"
INVOICES_ID = "2b3c4d5e-0000-4000-8000-000000000002"
EXPORT_ID = "3c4d5e6f-0000-4000-8000-000000000003"
PLANS = item(
    PLANS_ID,
    title="Plans › What each plan includes",
    text="Free – one workspace, unlimited time tracking. No invoicing. Starter – invoicing and reports. "
    "Team – everything in Starter plus approvals.",
)
PLANS_UNITS = (
    (0, "Free – one workspace, unlimited time tracking."),
    (1, "No invoicing."),
    (2, "Starter – invoicing and reports."),
    (3, "Team – everything in Starter plus approvals."),
)
INVOICES = item(
    INVOICES_ID,
    title="Invoices › Sending an invoice",
    text="Open Invoices › New invoice and pick the client. Click Send to email it as a PDF.",
)
INVOICES_UNITS = ((0, "Open Invoices › New invoice and pick the client."), (1, "Click Send to email it as a PDF."))
EXPORT = item(
    EXPORT_ID,
    title="Data › Exporting your data",
    text="Go to Settings › Data and choose Request export. The archive arrives by email within 24 hours.",
)
EXPORT_UNITS = (
    (0, "Go to Settings › Data and choose Request export."),
    (1, "The archive arrives by email within 24 hours."),
)
Q1 = "Which plan has invoicing?"
Q2 = "And how do I get a copy of all our data?"


def two_questions() -> DraftRequest:
    """Q1 answered by the plans passage (the reader quotes its first two sentences; the invoices passage is a
    candidate too), Q2 by the export passage."""
    evidence = [
        Evidence(
            Question(Q1),
            PLANS,
            units=[u for _, u in PLANS_UNITS[:2]],
            score=0.62,
            best_unit=0.7,
            candidates=[Candidate(PLANS, 0.62, PLANS_UNITS), Candidate(INVOICES, 0.55, INVOICES_UNITS)],
        ),
        Evidence(
            Question(Q2),
            EXPORT,
            units=[u for _, u in EXPORT_UNITS],
            score=0.58,
            best_unit=0.6,
            candidates=[Candidate(EXPORT, 0.58, EXPORT_UNITS)],
        ),
    ]
    return request(
        "Invoicing and export",
        f"Hi, I track hours on the free plan and can't find an invoice button. {Q1} {Q2} Thanks, Ana",
        customer_name="Ana Souza",
        tier="Free",
        items=[PLANS, INVOICES, EXPORT],
        evidence=evidence,
    )


def shown_ids(sent: RecordedRequest) -> dict[str, str]:
    """The numbered sentences the model was shown: id -> text."""
    return dict(re.findall(r"^(\d+\.\d+) (.+)$", sent.message_text("user"), flags=re.MULTILINE))


def choose(answers: Callable[[dict[str, str]], dict[str, list[str]]], *, opening: str = "", **extra: Any) -> Step:
    """A verdict choosing, by sentence text, from what the request showed."""

    def answer(sent: RecordedRequest) -> Step:
        by_text = {text: uid for uid, text in shown_ids(sent).items()}
        return reply_json(
            {
                "answers": answers(by_text),
                "opening": opening,
                "confidence": 0.9,
                "reasons": ["the chosen sentences answer the questions"],
                "needs_human": False,
                **extra,
            },
            usage={"prompt_tokens": 500, "completion_tokens": 40},
        )

    return computed(answer)


@pytest.fixture
async def drafter() -> AsyncIterator[tuple[Callable[..., LLMDrafter], FakeOpenAI]]:
    made: list[LLMDrafter] = []
    with FakeOpenAI() as server:

        def build(**env: str) -> LLMDrafter:
            settings = Settings.from_mapping({"OPENAI_BASE_URL": server.base_url, **env})
            made.append(llm := make_llm_drafter(settings))  # type: ignore[arg-type]
            assert llm is not None
            return llm

        yield build, server
        for llm in made:
            await llm.aclose()


async def test_the_chosen_ids_are_added_to_the_readers_quote_in_passage_order_cited(drafter: Any) -> None:
    build, server = drafter
    server.script(
        choose(
            lambda ids: {
                # Out of passage order and across two passages: the reply keeps each passage's order.
                "Q1": [ids["Starter – invoicing and reports."], ids["No invoicing."]],
                "Q2": [ids["Go to Settings › Data and choose Request export."]],
            }
        )
    )
    result = await build().write(two_questions())

    assert result.ok and result.sendable, result.escalate_reasons
    assert result.mode == "quote"
    # Shown: every candidate's sentences, numbered by passage and place, under the question they may answer.
    shown = shown_ids(server.requests[0])
    assert shown["1.2"] == "No invoicing." and shown["2.1"] == "Open Invoices › New invoice and pick the client."
    assert shown["3.1"] == "Go to Settings › Data and choose Request export."
    schema = server.requests[0].json["tools"][0]["function"]["parameters"]
    assert schema["properties"]["answers"]["properties"]["Q1"]["items"]["enum"] == [
        "1.1",
        "1.2",
        "1.3",
        "1.4",
        "2.1",
        "2.2",
    ]

    reply = result.reply
    # The reader's two sentences and the model's addition, verbatim, in passage order.
    assert "Free – one workspace, unlimited time tracking. No invoicing. Starter – invoicing and reports." in reply
    assert "Go to Settings › Data and choose Request export. The archive arrives by email within 24 hours." in (
        reply.replace("\n", " ")
    )
    for not_chosen in ("Team – everything", "Open Invoices"):
        assert not_chosen not in reply
    assert result.quote["added"] == {"Q1": ["1.3"]} and result.quote["disputed"] == []
    assert "(Source: Plans, KB-1a2b3c4d)" in reply and "(Source: Data, KB-3c4d5e6f)" in reply
    assert result.cited_ids == [PLANS_ID, EXPORT_ID]
    assert result.handed_over == [] and result.answered == [Q1, Q2]
    # Agreeing with the reader costs the calibrated confidence nothing.
    assert result.confidence_factor == pytest.approx(1.0)
    draft = result.to_draft()
    assert draft.grounded and draft.citations == [PLANS_ID, EXPORT_ID] and draft.self_assessment == pytest.approx(1.0)


async def test_an_id_the_model_was_not_shown_is_refused(drafter: Any) -> None:
    build, server = drafter
    # "1.9" does not exist; "4.1" names a passage it was never shown. Q2's only id is refused: Q2 keeps the
    # reader's own choice, as the offline reply would.
    server.script(choose(lambda ids: {"Q1": [ids["No invoicing."], "1.9"], "Q2": ["4.1"]}))
    result = await build().write(two_questions())

    assert result.ok
    assert result.invalid_citations == ["Q1:1.9", "Q2:4.1"]
    assert result.quote["added"] == {} and result.quote["disputed"] == ["Q2"]
    assert "No invoicing." in result.reply
    assert "Starter – invoicing" not in result.reply  # nothing stands in for the refused id
    assert "Go to Settings › Data and choose Request export. The archive arrives by email within 24 hours." in (
        result.reply.replace("\n", " ")
    )
    assert result.cited_ids == [PLANS_ID, EXPORT_ID]
    assert result.citation_validity == pytest.approx(1 / 3)
    assert any("it was not shown" in f for f in result.flags)
    assert result.confidence_factor is not None and result.confidence_factor < 0.7


async def test_a_question_the_model_chose_nothing_for_keeps_the_readers_quote_as_disputed(drafter: Any) -> None:
    build, server = drafter
    server.script(choose(lambda ids: {"Q1": [ids["No invoicing."], ids["Starter – invoicing and reports."]], "Q2": []}))
    result = await build().write(two_questions())

    assert result.ok
    # The model's "nothing answers this" does not override the reader: Q2 is still answered, from the reader.
    assert result.answered == [Q1, Q2] and result.handed_over == []
    assert "Go to Settings › Data and choose Request export." in result.reply
    assert result.cited_ids == [PLANS_ID, EXPORT_ID]
    assert result.quote["disputed"] == ["Q2"]
    assert result.confidence_factor == pytest.approx(1.0)


async def test_a_question_no_passage_answers_is_handed_over_and_counted(drafter: Any) -> None:
    build, server = drafter
    weak = two_questions()
    weak.evidence[1].score = 0.2  # under the reader's floor: the model is not asked about it
    server.script(choose(lambda ids: {"Q1": [ids["No invoicing."]]}))
    result = await build().write(weak)

    assert result.ok
    assert result.answered == [Q1] and result.handed_over == [Q2]
    assert result.to_draft().detail["handed_over"] == [Q2]  # what the content-gaps report counts
    assert f"I have passed your other question to a colleague, who will get back to you: \u201c{Q2}\u201d" in (
        result.reply
    )
    assert "Request export" not in result.reply and result.cited_ids == [PLANS_ID]


async def test_an_opening_that_states_an_unsupported_fact_is_removed(drafter: Any) -> None:
    build, server = drafter
    invented = "Good news, Ana: every plan includes free invoicing for 90 days."
    server.script(
        choose(
            lambda ids: {"Q1": [ids["No invoicing."]], "Q2": [ids["Go to Settings › Data and choose Request export."]]},
            opening=invented,
        )
    )
    result = await build().write(two_questions())

    assert result.ok and result.sendable
    assert "90 days" not in result.reply and "free invoicing" not in result.reply
    assert result.removed == [invented]
    assert result.reply.startswith("Hello Ana Souza,\n\nThank you for contacting us about")  # the fixed line instead
    assert result.quote["opening"] is None


async def test_a_courteous_opening_is_kept_without_its_greeting(drafter: Any) -> None:
    build, server = drafter
    server.script(
        choose(
            lambda ids: {"Q1": [ids["No invoicing."]], "Q2": []}, opening="Hi Ana, thanks for reaching out. More text."
        )
    )
    result = await build().write(two_questions())

    assert result.reply.startswith("Hello Ana Souza,\n\nThanks for reaching out.\n\n")
    assert result.removed == []


async def test_an_opening_promising_a_refund_escalates(drafter: Any) -> None:
    build, server = drafter
    server.script(choose(lambda ids: {"Q1": [ids["No invoicing."]], "Q2": []}, opening="We will refund you in full."))
    result = await build().write(two_questions())

    assert result.escalate and result.violations
    assert "refund" not in result.reply


async def test_nothing_answerable_asks_the_model_nothing_and_hands_over(drafter: Any) -> None:
    build, server = drafter
    weak = two_questions()
    for ev in weak.evidence:
        ev.score = 0.2  # under the reader's floor: no passage answers
    result = await build().write(weak)

    assert server.requests == []
    assert result.handed_over == [Q1, Q2] and not result.cited_ids
    assert not result.to_draft().grounded  # the decision escalates


async def test_write_mode_stays_available(drafter: Any) -> None:
    build, server = drafter
    server.script(
        write_answer("Hi Ana, Starter – invoicing and reports [KB-1a2b3c4d].", ["KB-1a2b3c4d"], confidence=0.8)
    )
    result = await build(DESKPILOT_LLM_REPLY="write").write(two_questions())

    assert result.mode == "knowledge"
    assert server.requests[0].json["tool_choice"]["function"]["name"] == "DraftVerdict"
    assert "Starter – invoicing and reports." in result.reply


@pytest.mark.parametrize(
    ("flavor", "method"), [("llama_server", "json_schema"), ("llama_cpp_python", "function_calling")]
)
async def test_the_choice_comes_back_by_the_method_each_server_supports(flavor: str, method: str) -> None:
    with FakeOpenAI(flavor) as server:  # type: ignore[arg-type]
        llm = make_llm_drafter(Settings.from_mapping({"OPENAI_BASE_URL": server.base_url}))
        assert llm is not None
        server.script(
            choose(
                lambda ids: {"Q1": [ids["No invoicing."]], "Q2": [ids["The archive arrives by email within 24 hours."]]}
            )
        )
        try:
            result = await llm.write(two_questions())
        finally:
            await llm.aclose()

    assert result.ok and result.structured_output == method
    body = server.requests[0].json
    if method == "json_schema":
        sent = body["response_format"]["json_schema"]
        assert sent["name"] == "QuoteChoice"
        assert sent["schema"]["properties"]["answers"]["properties"]["Q2"]["items"]["enum"] == ["3.1", "3.2"]
    else:
        assert body["tool_choice"]["function"]["name"] == "QuoteChoice"
    assert body["max_completion_tokens"] <= 256  # ids and a sentence: a short answer
    assert "No invoicing." in result.reply and "The archive arrives by email within 24 hours." in result.reply


async def test_an_opening_that_copies_the_customers_words_is_dropped(drafter: Any) -> None:
    build, server = drafter
    # Measured with the 1.5B model: the customer's request as the reply's first line reads as if we had agreed.
    echo = "I track hours on the free plan and can't find an invoice button."
    server.script(choose(lambda ids: {"Q1": [ids["No invoicing."]], "Q2": []}, opening=echo))
    result = await build().write(two_questions())

    assert echo not in result.reply
    assert result.reply.startswith("Hello Ana Souza,\n\nThank you for contacting us about")
    assert result.quote["opening"] is None
