"""Structured output that works on the server in front of it (issue 17), and replies written from the reader's
per-question evidence with every factual sentence checked against the passage it cites (issue 15, item 4).

The scripted server behaves like each of the two llama.cpp servers measured in issue 17: `python -m
llama_cpp.server` (a forced tool call works, a json_schema response format is answered 500) and `llama-server
--jinja` (json_schema works, a forced tool is ignored and the JSON comes back as plain text).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from agent.drafting.llm import LLMDrafter, make_llm_drafter
from agent.drafting.request import DraftRequest
from core.settings import Settings
from tests.support.draft_requests import evidence, item, request
from tests.support.fake_openai import FakeOpenAI, RecordedRequest, Step, computed, reply_json, reply_text

TRASH_ID = "1a2b3c4d-0000-4000-8000-000000000001"
PLANS_ID = "9f8e7d6c-0000-4000-8000-000000000002"
TRASH, PLANS = "KB-1a2b3c4d", "KB-9f8e7d6c"
TRASH_ITEM = item(
    TRASH_ID,
    title="Deleted entries › Restoring",
    text="Deleted time entries stay in the Trash for 30 days. Open Settings › Data › Trash and choose Restore to "
    "bring an entry back. After 30 days they are removed for good.",
)
PLANS_ITEM = item(
    PLANS_ID,
    title="Plans › What each plan includes",
    text="Free – up to 3 users. No invoicing. Starter – $8 per user per month, includes invoicing and exports.",
)
QUESTION_TRASH = "Can we get back the time entries someone deleted yesterday?"
QUESTION_PLANS = "Which plan do we need to send invoices?"
QUESTION_OTHER = "Can you merge our two workspaces into one?"


def knowledge_request(*questions: tuple[str, Any]) -> DraftRequest:
    body = " ".join(q for q, _ in questions)
    return request(
        "Deleted entries and invoicing",
        f"Hi, {body} Thanks, Ana",
        customer_name="Ana Souza",
        items=[TRASH_ITEM, PLANS_ITEM],
        evidence=[evidence(q, passage) for q, passage in questions],
    )


def verdict(reply: str, cited: list[str], **changes: Any) -> dict[str, Any]:
    return {
        "reply": reply,
        "cited_ids": cited,
        "confidence": 0.9,
        "reasons": ["cited"],
        "needs_human": False,
        **changes,
    }


GOOD = verdict(
    f"Hi Ana,\n\nDeleted time entries stay in the Trash for 30 days [{TRASH}]. To bring one back, open Settings › "
    f"Data › Trash and choose Restore [{TRASH}].\n\nKind regards,\nSupport",
    [TRASH],
)


@pytest.fixture
async def drafter_for() -> AsyncIterator[Callable[..., tuple[LLMDrafter, FakeOpenAI]]]:
    """A drafter in front of a scripted server of the given flavor; settings overrides by variable name."""
    made: list[tuple[LLMDrafter, FakeOpenAI]] = []

    def build(flavor: str = "openai", **env: str) -> tuple[LLMDrafter, FakeOpenAI]:
        server = FakeOpenAI(flavor=flavor).start()  # type: ignore[arg-type]
        # These tests are about the written reply (DESKPILOT_LLM_REPLY=write); quote mode: test_llm_quote.py.
        settings = Settings.from_mapping({"OPENAI_BASE_URL": server.base_url, "DESKPILOT_LLM_REPLY": "write", **env})
        drafter = make_llm_drafter(settings, backoff_base_s=0.01)
        assert drafter is not None
        made.append((drafter, server))
        return drafter, server

    yield build
    for drafter, server in made:
        await drafter.aclose()
        server.stop()


# --- the probe ----------------------------------------------------------------------------------------------


async def test_probe_picks_the_forced_tool_on_llama_cpp_python_server(drafter_for: Callable[..., Any]) -> None:
    drafter, server = drafter_for("llama_cpp_python")
    server.script(reply_json(GOOD), reply_json(GOOD))
    first = await drafter.write(knowledge_request((QUESTION_TRASH, TRASH_ITEM)))
    second = await drafter.write(knowledge_request((QUESTION_TRASH, TRASH_ITEM)))

    assert first.ok and first.sendable and second.ok
    assert first.structured_output == "function_calling"
    assert first.probe["results"] == {"function_calling": "works"} and first.probe["method"] == "function_calling"
    assert len(server.probes) == 1  # once at start, not per draft
    assert all(r.json["tool_choice"]["function"]["name"] == "DraftVerdict" for r in server.requests)
    assert all("response_format" not in r.json for r in server.requests)
    assert [a.method for a in first.attempt_log] == ["function_calling"]
    assert first.to_draft().model["structured_output"] == "function_calling"


async def test_probe_picks_json_schema_on_llama_server(drafter_for: Callable[..., Any]) -> None:
    drafter, server = drafter_for("llama_server")
    server.script(reply_json(GOOD))
    result = await drafter.write(knowledge_request((QUESTION_TRASH, TRASH_ITEM)))

    assert result.ok and result.sendable, result.escalate_reasons
    assert result.structured_output == "json_schema"
    assert result.probe["results"] == {
        "function_calling": "the forced tool was ignored: the JSON came back as plain text",
        "json_schema": "works",
    }
    (sent,) = server.requests
    assert sent.json["response_format"]["type"] == "json_schema"
    assert sent.json["response_format"]["json_schema"]["name"] == "DraftVerdict"
    assert "tools" not in sent.json
    # The model is told the keys in the prompt too: a grammar constrains the output, it explains nothing.
    assert '"needs_human" (true or false)' in sent.message_text("system")
    assert sent.message_text("user").rstrip().endswith("Answer with the JSON object only.")


async def test_a_fixed_json_schema_fails_on_llama_cpp_python_server_and_falls_back(
    drafter_for: Callable[..., Any],
) -> None:
    drafter, server = drafter_for("llama_cpp_python", DESKPILOT_LLM_STRUCTURED_OUTPUT="json_schema")
    server.script(reply_json(GOOD), reply_json(GOOD), reply_json(GOOD))
    result = await drafter.write(knowledge_request((QUESTION_TRASH, TRASH_ITEM)))

    assert server.probes == []  # the operator chose: no probe
    assert result.fell_back and result.error_kind == "server_error" and result.reply == ""
    assert [a.status_code for a in result.attempt_log] == [500, 500, 500]


async def test_after_a_failure_the_server_is_probed_again_and_the_draft_recovers(
    drafter_for: Callable[..., Any],
) -> None:
    drafter, server = drafter_for("llama_server")
    server.script(reply_json(GOOD))
    assert (await drafter.write(knowledge_request((QUESTION_TRASH, TRASH_ITEM)))).structured_output == "json_schema"

    server.flavor = "llama_cpp_python"  # another server behind the same URL: json_schema now answers 500
    server.script(reply_json(GOOD), reply_json(GOOD))
    result = await drafter.write(knowledge_request((QUESTION_TRASH, TRASH_ITEM)))

    assert result.ok and result.sendable
    assert [(a.method, a.outcome) for a in result.attempt_log] == [
        ("json_schema", "server_error"),
        ("function_calling", "ok"),
    ]
    assert result.structured_output == "function_calling" and len(server.probes) == 3  # 2 at start, 1 after
    assert result.probe["results"] == {"function_calling": "works"}


async def test_a_fixed_forced_tool_on_llama_server_parses_the_plain_text_json(drafter_for: Callable[..., Any]) -> None:
    drafter, server = drafter_for("llama_server", DESKPILOT_LLM_STRUCTURED_OUTPUT="function_calling")
    server.script(reply_json(GOOD))
    result = await drafter.write(knowledge_request((QUESTION_TRASH, TRASH_ITEM)))

    assert server.probes == []
    assert result.ok and result.sendable and result.cited_ids == [TRASH_ID]
    assert result.attempts == 1  # parsed, not wasted on a retry


async def test_a_server_that_only_writes_text_gets_json_mode_and_a_repair(drafter_for: Callable[..., Any]) -> None:
    drafter, server = drafter_for("plain_text")
    server.script(
        reply_text("Sure! Here is the answer:\n```json\n" + json.dumps(GOOD) + "\n```"),
        reply_text("You can restore deleted entries from the Trash."),  # prose, no JSON
        reply_json(GOOD),
    )
    parsed = await drafter.write(knowledge_request((QUESTION_TRASH, TRASH_ITEM)))
    repaired = await drafter.write(knowledge_request((QUESTION_TRASH, TRASH_ITEM)))

    assert parsed.structured_output == "json_mode"
    assert set(parsed.probe["results"]) == {"function_calling", "json_schema", "json_mode"}
    assert parsed.probe["results"]["json_mode"] == "the answer is not JSON"
    assert parsed.ok and parsed.sendable and parsed.cited_ids == [TRASH_ID]
    assert server.requests[0].json["response_format"] == {"type": "json_object"}
    assert '"reply" (text)' in server.requests[0].message_text("system")  # JSON mode sends no schema: the prompt does

    assert repaired.ok and [a.repair for a in repaired.attempt_log] == [False, True]
    repair = server.requests[2].messages
    assert repair[-2] == {"role": "assistant", "content": "You can restore deleted entries from the Trash."}
    assert "That answer cannot be used" in repair[-1]["content"]


async def test_a_model_that_never_writes_json_falls_back_cleanly(drafter_for: Callable[..., Any]) -> None:
    drafter, server = drafter_for("plain_text")
    server.script(reply_text("Just open the Trash."), reply_text("Open the Trash, really."))
    result = await drafter.write(knowledge_request((QUESTION_TRASH, TRASH_ITEM)))

    assert result.fell_back and result.error_kind == "invalid_output" and result.reply == ""
    assert "instead of the DraftVerdict JSON" in (result.error or "")
    draft = result.to_draft()
    assert draft.fell_back and draft.text == "" and draft.drafter == "llm"


# --- replies from the reader's evidence ---------------------------------------------------------------------


async def test_the_prompt_lists_each_question_with_its_passage_and_marks_the_handover(
    drafter_for: Callable[..., Any],
) -> None:
    drafter, server = drafter_for()
    server.script(reply_json(GOOD))
    result = await drafter.write(knowledge_request((QUESTION_TRASH, TRASH_ITEM), (QUESTION_OTHER, None)))

    user = server.requests[0].message_text("user")
    assert f"Question 1: \u201c{QUESTION_TRASH}\u201d\n[{TRASH}] Knowledge-base passage: Deleted entries" in user
    assert f"Question 2: \u201c{QUESTION_OTHER}\u201d\nNot answered by the reference material" in user
    assert PLANS not in user  # only the passages the reader chose
    assert result.labels == {TRASH: TRASH_ID} and result.mode == "knowledge"
    # The model forgot to say the second question is passed on: the reply says it, before the sign-off.
    assert result.reply.endswith(
        f"I have passed your other question to a colleague, who will get back to you: \u201c{QUESTION_OTHER}\u201d."
        "\n\nKind regards,\nSupport"
    )
    assert "handover sentence added for the questions no passage answers" in result.flags
    assert result.sendable


async def test_an_unsupported_sentence_is_removed_and_recorded(drafter_for: Callable[..., Any]) -> None:
    drafter, server = drafter_for()
    invented = "Our engineers can also recover deleted entries from nightly backups for 90 days."
    reply = GOOD["reply"].replace("\n\nKind regards", f" {invented[:-1]} [{TRASH}].\n\nKind regards")
    server.script(reply_json(verdict(reply, [TRASH])))
    result = await drafter.write(knowledge_request((QUESTION_TRASH, TRASH_ITEM)))

    assert result.removed == [invented]
    assert invented not in result.reply and "[KB-" not in result.reply
    assert "Deleted time entries stay in the Trash for 30 days." in result.reply
    assert result.support["removed"] == [invented] and result.support["removed_share"] == pytest.approx(1 / 3, abs=1e-3)
    assert result.sendable  # one of three factual sentences is within the allowed share
    draft = result.to_draft()
    assert draft.removed == [invented] and draft.text == result.reply and not draft.escalate


async def test_too_much_removed_escalates(drafter_for: Callable[..., Any]) -> None:
    drafter, server = drafter_for()
    reply = (
        f"Deleted time entries stay in the Trash for 30 days [{TRASH}]. Our engineers recover anything from "
        f"nightly backups [{TRASH}]. Restores take about 2 hours [{TRASH}]."
    )
    server.script(reply_json(verdict(reply, [TRASH])))
    result = await drafter.write(knowledge_request((QUESTION_TRASH, TRASH_ITEM)))

    assert len(result.removed) == 2 and result.escalate and not result.sendable
    assert any("2 of 3 factual sentence(s) had no support" in r for r in result.escalate_reasons)
    assert result.to_draft().escalate


async def test_a_question_left_without_a_supported_answer_escalates(drafter_for: Callable[..., Any]) -> None:
    drafter, server = drafter_for()
    # The model answers the first question from its passage but the second from nowhere (and cites a made-up id).
    reply = (
        f"Deleted time entries stay in the Trash for 30 days [{TRASH}]. Invoices need the Enterprise plan "
        "[KB-deadbeef]."
    )
    server.script(reply_json(verdict(reply, [TRASH, PLANS])))
    result = await drafter.write(knowledge_request((QUESTION_TRASH, TRASH_ITEM), (QUESTION_PLANS, PLANS_ITEM)))

    assert result.escalate and not result.sendable
    assert result.support["unanswered"] == [QUESTION_PLANS]
    assert any(QUESTION_PLANS in r and "no supported answer" in r for r in result.escalate_reasons)
    assert "KB-DEADBEEF" in result.invalid_citations


async def test_a_small_context_window_keeps_the_reader_quotes(drafter_for: Callable[..., Any]) -> None:
    long_text = TRASH_ITEM.text + " " + "Entries in the Trash count towards no quota and can be filtered. " * 60
    quoted = "Deleted time entries stay in the Trash for 30 days."
    long_item = item(TRASH_ID, title=TRASH_ITEM.title, text=long_text)
    drafter, server = drafter_for(DESKPILOT_LLM_CONTEXT_TOKENS="1800", DESKPILOT_LLM_MAX_OUTPUT_TOKENS="200")
    server.script(reply_json(GOOD))
    data = request(
        "Deleted entries",
        QUESTION_TRASH,
        items=[long_item],
        evidence=[evidence(QUESTION_TRASH, long_item, units=[quoted])],
    )
    result = await drafter.write(data)

    user = server.requests[0].message_text("user")
    assert "passages shortened to fit the input" in result.flags
    assert f"[{TRASH}] Knowledge-base passage: Deleted entries › Restoring\n{quoted}" in user
    assert "count towards no quota" not in user
    assert result.prompt_tokens_estimate <= 1800 - 200 - 64
    assert result.token_source == "embedding model tokenizer (estimate)"
    assert result.ok and result.sendable  # the check reads the whole passage, not only what fit


def _cite_first_label(request: RecordedRequest) -> Step:
    label = request.message_text("user").split("] Knowledge-base passage", 1)[0].rsplit("[", 1)[1]
    return reply_json(verdict(f"Deleted time entries stay in the Trash for 30 days [{label}].", [label]))


async def test_a_reply_can_be_built_from_what_the_model_was_shown(drafter_for: Callable[..., Any]) -> None:
    drafter, server = drafter_for()
    server.script(computed(_cite_first_label))
    result = await drafter.write(knowledge_request((QUESTION_TRASH, TRASH_ITEM)))
    assert result.cited_ids == [TRASH_ID] and result.sendable
