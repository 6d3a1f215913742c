"""Replies composed from the knowledge base through the real graph: the demo help centre loaded by the real
loader, the real embedder, the reader choosing a passage per question."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from agent.drafting.drafter import OfflineDrafter
from agent.drafting.questions import Question, asked_for
from agent.drafting.reader import Reader
from agent.runner import TicketProcessor, run_graph_offline
from agent.state import AgentState
from agent.triage.classifier import RoutingModelCache
from core.metrics import Metrics
from core.settings import Settings
from knowledge.embedder import TokenRows
from knowledge.loader import load_paths
from knowledge.retrieval import help_centre_sections
from tests.support.draft_requests import item

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def run(demo_kb: asyncpg.Pool, embedder: Any, make_settings: Callable[..., Settings]) -> Callable[..., Any]:
    processor = TicketProcessor(
        demo_kb, make_settings(), Metrics(), embedder=embedder, drafter=OfflineDrafter(), models=RoutingModelCache()
    )

    async def go(subject: str, body: str, **extra: Any) -> AgentState:
        return await run_graph_offline(
            processor, {"subject": subject, "body": body, "channel": "email", "customer_name": "Sam", **extra}
        )

    return go


def cited_titles(state: AgentState) -> list[str]:
    by_id = {i["id"]: i["title"] for i in state["retrieval"]["items"]}
    evidence = state["retrieval"]["questions"]
    titles = [e["title"] for e in evidence if e["passage"]]
    return titles + [by_id.get(c, "") for c in state["drafted"]["citations"]]


async def test_a_knowledge_base_question_is_answered_from_the_passage_that_answers_it(run: Any) -> None:
    state = await run(
        "Invoicing on the free plan?",
        "I tracked hours on the free plan and can't find an invoice button. Which plan has invoicing?",
    )
    assert state["retrieval"]["mode"] == "knowledge"
    draft = state["drafted"]["draft"]
    assert "No invoicing" in draft  # the plans passage, quoted
    assert re.search(r"\(Source: Plans and billing periods, KB-[0-9a-f]{8}\)", draft)
    assert any("Plans and billing periods" in t for t in cited_titles(state))
    # Composed from the help centre, not from another customer's past reply.
    assert all(i["kind"] == "kb_chunk" for i in state["retrieval"]["items"] if i["id"] in state["drafted"]["citations"])


async def test_the_seed_sample_403_after_login_is_answered_by_the_access_article(run: Any) -> None:
    state = await run(
        "Cannot access my dashboard",
        "Hi, since this morning I cannot access my dashboard. I log in fine but then I get a 403 error. What can I do?",
    )
    assert any("403" in t or "access" in t.lower() for t in cited_titles(state))
    assert "403" in state["drafted"]["draft"]


async def test_two_questions_are_each_answered_or_handed_over(run: Any) -> None:
    state = await run(
        "Two things",
        "Where do I change the card we pay with? Also, can your team build us a custom Salesforce integration?",
    )
    questions = state["retrieval"]["questions"]
    assert len(questions) == 2
    detail = state["draft_result"].detail
    assert len(detail["answered"]) + len(detail["handed_over"]) == 2
    draft = state["drafted"]["draft"]
    for asked in ("Where do I change the card we pay with?", "custom Salesforce integration"):
        assert asked in draft  # introduced as "You asked …" or named in the hand-over
    assert detail["answered"], "the payment-method question has an answer in the help centre"
    assert "Payment method" in draft or "payment method" in draft


async def test_the_account_tier_is_named_when_the_quoted_passage_speaks_of_it(run: Any) -> None:
    state = await run(
        "Invoices",
        "Which plan do I need to send invoices to my clients?",
        account={"tier": "Free", "events": [], "prior_tickets": []},
    )
    assert "Your account is on Free." in state["drafted"]["draft"]


async def test_each_part_of_a_question_asking_two_things_is_answered_from_the_article(run: Any) -> None:
    # One sentence, two things asked: how to request it (the steps) and how long it takes (another section).
    state = await run(
        "Refund question",
        "We paid for a year but only need a month. What do I click to request a refund, and how many days until "
        "the bank shows the money?",
    )
    [question] = state["retrieval"]["questions"]
    draft = state["drafted"]["draft"]
    assert "Ask about this charge" in draft  # the steps to request one
    assert "5–10 business days" in draft  # the bank's delay, from the section after it
    assert draft.index("Ask about this charge") < draft.index("5–10 business days")  # in the article's order
    assert question["more"] and question["weakest_part"] > 0.35


@pytest.mark.parametrize(
    ("body", "fact"),
    [
        # Which plans have approvals is said once, in the approvals article's opening paragraph.
        (
            "Is there a way for managers to sign off each person's week before we run payroll?",
            "Approvals are included on Pro and Enterprise",
        ),
        # What cancelling does to the data: the cancellation article's opening paragraph.
        (
            "We renew every March. If I cancel now, is there another charge in March? And does cancelling wipe our "
            "projects?",
            "it does not delete your workspace or your data",
        ),
    ],
)
async def test_an_articles_opening_paragraph_is_quoted_with_the_section_when_it_answers_too(
    run: Any, body: str, fact: str
) -> None:
    state = await run("A question", body)
    draft = state["drafted"]["draft"]
    assert fact in draft
    lead = next(q for e in state["retrieval"]["questions"] for q in e["more"] if any(fact in u for u in q["units"]))
    assert lead["passage"] not in {e["passage"] for e in state["retrieval"]["questions"]}  # quoted beside a section
    assert lead["title"] and " › " not in lead["title"]  # the trace names it: the article's title alone heads a lead


async def test_the_reader_reads_token_by_token_and_another_language_on_the_words_it_shares(embedder: Any) -> None:
    passage = item(
        "reset-1",
        title="Reset your password",
        text="Click Forgot password on the sign-in page. We email you a reset link. The link is valid for 60 "
        "minutes and works once. Email security scanners sometimes open links before you do.",
        document="reset",
    )
    reader = Reader(embedder)
    [read] = await reader.passages([passage])
    assert len(read.unit_tokens) == len(read.units) and read.unit_tokens[0].dtype == np.float16
    english = Question("How long does the reset link stay usable?")
    german = Question("Wie lange bleibt der Link gültig, wenn ich auf Forgot password klicke?")
    tokens = await reader.token_queries([english, german], [None, None], [read])
    assert tokens is not None
    assert tokens[0].question is not None  # English, like the help centre: every word counts
    # Another language: only the words some unit has count ("Forgot password"), not the German ones.
    german_query = tokens[1].question
    assert german_query is not None
    [rows] = embedder.encode_tokens([german.query])
    unit_ids = {int(i) for ids in read.unit_token_ids for i in ids}
    counted = {int(i) for i, w in zip(rows.ids, german_query.weights, strict=True) if w > 0}
    assert counted and counted <= unit_ids
    vectors = embedder.encode([english.query])
    scores = read.unit_scores(vectors[0], asked_for(english.text), tokens[0].question)
    assert "valid for 60 minutes" in read.units[int(np.argmax(scores))]


async def test_a_question_read_twice_is_encoded_token_by_token_once(embedder: Any) -> None:
    # A question asking several things is read twice (the second time with its article's sections).
    class CountingTokens:
        def __init__(self) -> None:
            self.name, self.dimension, self.token_texts = embedder.name, embedder.dimension, 0

        def encode(self, texts: Sequence[str]) -> np.ndarray:
            return np.asarray(embedder.encode(texts))

        def encode_tokens(self, texts: Sequence[str]) -> list[TokenRows]:
            self.token_texts += len(texts)
            return list(embedder.encode_tokens(texts))

    counting = CountingTokens()
    reader = Reader(counting)
    passage = item("plans-1", title="Plans", text="Starter includes invoicing. Free has no invoicing.", document="p")
    read = await reader.passages([passage])
    units = counting.token_texts
    question = Question("Which plan has invoicing, and can I try it first?")
    parts = np.asarray(embedder.encode(question.parts))
    first = await reader.token_queries([question], [parts], read)
    assert counting.token_texts == units + 1 + len(question.parts)
    second = await reader.token_queries([question], [parts], read)
    assert counting.token_texts == units + 1 + len(question.parts)  # nothing encoded again
    assert first is not None and second is not None
    assert first[0].question is not None and second[0].question is not None
    assert np.array_equal(first[0].question.weights, second[0].question.weights)


async def test_a_question_is_read_from_one_pass_of_the_model(embedder: Any) -> None:
    # Its vector (to search and score by) and its tokens (to read word by word) come from the same pass, and
    # `token_queries` then reads it without encoding it again.
    class Counting:
        def __init__(self) -> None:
            self.name, self.dimension, self.passes = embedder.name, embedder.dimension, 0

        def encode(self, texts: Sequence[str]) -> np.ndarray:
            self.passes += len(texts)
            return np.asarray(embedder.encode(texts))

        def encode_tokens(self, texts: Sequence[str]) -> list[TokenRows]:
            self.passes += len(texts)
            return list(embedder.encode_tokens(texts))

        def encode_with_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, list[TokenRows]]:
            self.passes += len(texts)
            vectors, rows = embedder.encode_with_tokens(texts)
            return vectors, rows

    counting = Counting()
    reader = Reader(counting)
    passage = item("plans-1", title="Plans", text="Starter includes invoicing. Free has no invoicing.", document="p")
    read = await reader.passages([passage])
    # One pass per unit and one for the whole passage.
    assert counting.passes == len(read[0].units) + 1
    question = Question("Which plan has invoicing?")
    before = counting.passes
    [vector] = await reader.encode_questions([question.query])
    assert counting.passes == before + 1
    np.testing.assert_allclose(vector, embedder.encode([question.query])[0], atol=1e-5)
    tokens = await reader.token_queries([question], [None], read)
    assert counting.passes == before + 1  # the question's tokens came with its vector
    assert tokens is not None and tokens[0].question is not None


class Recording:
    """The real embedder, recording every text it is asked to encode."""

    def __init__(self, embedder: Any) -> None:
        self.name, self.dimension, self.embedder = embedder.name, embedder.dimension, embedder
        self.texts: list[str] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.texts += texts
        return np.asarray(self.embedder.encode(texts))

    def encode_tokens(self, texts: Sequence[str]) -> list[TokenRows]:
        self.texts += texts
        return list(self.embedder.encode_tokens(texts))

    def encode_with_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, list[TokenRows]]:
        self.texts += texts
        vectors, rows = self.embedder.encode_with_tokens(texts)
        return vectors, rows


async def test_a_warmed_up_processor_has_read_the_help_centre_before_its_first_ticket(
    demo_kb: asyncpg.Pool, embedder: Any, make_settings: Callable[..., Settings]
) -> None:
    recording = Recording(embedder)
    processor = TicketProcessor(
        demo_kb, make_settings(), Metrics(), embedder=recording, drafter=OfflineDrafter(), models=RoutingModelCache()
    )
    async with demo_kb.acquire() as conn:
        sections = await help_centre_sections(conn)
    reader = (await processor.embeddings()).reader
    stopped = asyncio.Event()
    stopped.set()
    assert await reader.warm(sections, stopped) == 0  # a worker stopping reads nothing more

    await processor.warm_up()

    recording.texts.clear()
    state = await run_graph_offline(
        processor, {"subject": "Invoices on Free?", "body": "I'm on the free plan. Which plan do I need to invoice?"}
    )
    assert state["evidence"] and state["evidence"][0].item is not None
    # The ticket cost its own text and its questions' texts: every passage it read had been read already.
    questions = {q.query for q in state["questions"]} | {p for q in state["questions"] for p in q.parts}
    assert (
        recording.texts
        and set(recording.texts)
        <= {"Invoices on Free?\n\nI'm on the free plan. Which plan do I need to invoice?"} | questions
    ), recording.texts


async def test_an_article_added_later_is_read_by_the_next_warm_up(
    demo_kb: asyncpg.Pool, embedder: Any, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    recording = Recording(embedder)
    processor = TicketProcessor(
        demo_kb, make_settings(), Metrics(), embedder=recording, drafter=OfflineDrafter(), models=RoutingModelCache()
    )
    await processor.warm_up()
    article = tmp_path / "timesheet-locks.md"
    article.write_text(
        "# Lock timesheets after payroll\n\nAdmins can lock every week up to a date under Settings → Workspace → "
        "Lock timesheets. Locked weeks cannot be edited by members.\n"
    )
    async with demo_kb.acquire() as conn:
        await load_paths(conn, [article], embedder=embedder)

    recording.texts.clear()
    await processor.warm_up()
    assert any("Lock timesheets after payroll" in t for t in recording.texts)  # the new article, and only it
    assert all("Lock timesheets" in t or "Locked weeks" in t for t in recording.texts), recording.texts
    recording.texts.clear()
    await processor.warm_up()
    assert recording.texts == []  # nothing new: nothing encoded


async def test_a_ticket_in_another_language_is_read_with_the_multilingual_model(
    demo_kb: asyncpg.Pool, embedder: Any, make_settings: Callable[..., Settings]
) -> None:
    # Spanish against the English demo help centre: the English model finds nothing to quote; read with the
    # multilingual one (joined to it), the reset-link passage answers and is quoted in English, cited.
    ticket = {
        "subject": "El enlace para cambiar la contraseña no funciona",
        "body": "Hola, pedí cambiar mi contraseña y el enlace del correo dice que ya caducó. ¿Cuánto tiempo "
        "dura el enlace y qué hago si siempre aparece como usado?",
        "channel": "email",
        "customer_name": "Lucía",
    }

    async def draft_with(**env: str) -> tuple[str, list[str], Any]:
        processor = TicketProcessor(
            demo_kb, make_settings(**env), Metrics(), embedder=embedder, drafter=OfflineDrafter()
        )
        state = await run_graph_offline(processor, dict(ticket))
        return state["drafted"]["draft"], cited_titles(state), state["retrieval"]["read_across"]

    draft, titles, across = await draft_with()
    assert draft.startswith("Hola Lucía")  # the frame in the customer's language
    assert "60 minutes" in draft and any("Reset your password" in t for t in titles)
    assert across == {
        "ticket_language": "es",
        "help_centre_language": "en",
        "model": "all-MiniLM-L6-v2+multilingual-use",
    }
    english_only, english_titles, not_across = await draft_with(DESKPILOT_CROSSLINGUAL_READER="false")
    assert "60 minutes" not in english_only and not any("Reset your password" in t for t in english_titles)
    assert not_across is None


async def test_a_warm_up_on_an_empty_deployment_finishes_and_reads_nothing(
    clean_db: asyncpg.Pool, embedder: Any, make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    # A fresh install: no help centre, no history yet. The warm-up has nothing to read and must not fail.
    processor = TicketProcessor(clean_db, make_settings(), Metrics(), embedder=embedder, drafter=OfflineDrafter())
    with caplog.at_level("INFO", logger="agent.runner"):
        await processor.warm_up()
    assert "0 of the help centre's 0 passages read" in caplog.text
