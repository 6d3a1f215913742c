"""The LLM drafter against a scripted server (issue 17): prompts counted with the server's own tokenizer when it
offers one, and `deskpilot eval --llm`, the offline and the LLM drafter side by side on the same tickets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from agent.drafting.llm import LLMDrafter, make_llm_drafter
from agent.drafting.prompts import TOOL_TEMPLATE_TOKENS, VERDICT_TOOL
from agent.drafting.tokens import MESSAGE_OVERHEAD
from app.cli import main
from core.settings import PROJECT_ROOT, Settings
from tests.support.draft_requests import evidence, item, request
from tests.support.fake_openai import FakeOpenAI, RecordedRequest, Step, computed, reply_json

TRASH_ID = "1a2b3c4d-0000-4000-8000-000000000001"
TRASH = "KB-1a2b3c4d"
TRASH_ITEM = item(
    TRASH_ID,
    title="Deleted entries › Restoring",
    text="Deleted time entries stay in the Trash for 30 days. Open Settings › Data › Trash and choose Restore to "
    "bring an entry back. After 30 days they are removed for good.",
)
QUESTION = "Can we get back the time entries someone deleted yesterday?"
GOOD = {
    "reply": f"Hi Ana,\n\nDeleted time entries stay in the Trash for 30 days [{TRASH}].\n\nKind regards,\nSupport",
    "cited_ids": [TRASH],
    "confidence": 0.9,
    "reasons": ["cited"],
    "needs_human": False,
}


def trash_request() -> Any:
    return request(
        "Deleted entries",
        f"Hi, {QUESTION} Thanks, Ana",
        customer_name="Ana Souza",
        items=[TRASH_ITEM],
        evidence=[evidence(QUESTION, TRASH_ITEM)],
    )


@pytest.fixture
async def drafter_for() -> AsyncIterator[Callable[..., tuple[LLMDrafter, FakeOpenAI]]]:
    made: list[tuple[LLMDrafter, FakeOpenAI]] = []

    def build(flavor: str = "openai", **env: str) -> tuple[LLMDrafter, FakeOpenAI]:
        server = FakeOpenAI(flavor=flavor).start()  # type: ignore[arg-type]
        # The written reply (DESKPILOT_LLM_REPLY=write): its prompt carries the passages whole.
        mapping = {"OPENAI_BASE_URL": server.base_url, "DESKPILOT_LLM_REPLY": "write", **env}
        drafter = make_llm_drafter(Settings.from_mapping(mapping))
        assert drafter is not None
        made.append((drafter, server))
        return drafter, server

    yield build
    for drafter, server in made:
        await drafter.aclose()
        server.stop()


@pytest.mark.parametrize(
    ("flavor", "source", "field"),
    [
        ("llama_server", "server tokenizer (llama-server /tokenize)", "content"),
        ("llama_cpp_python", "server tokenizer (llama_cpp.server /extras/tokenize)", "input"),
    ],
)
async def test_the_servers_own_tokenizer_counts_the_prompt(
    drafter_for: Callable[..., Any], flavor: str, source: str, field: str
) -> None:
    drafter, server = drafter_for(flavor)
    server.script(reply_json(GOOD))
    result = await drafter.write(trash_request())

    assert result.ok and result.sendable
    assert result.token_source == source
    assert drafter.describe()["token_counter"] == source
    # The fake counts one token per word: the prompt's estimate is that count, not the characters / 4 guess.
    assert any("support assistant" in str(r.json.get(field)) for r in server.tokenized)
    texts = [str(m["content"]) for m in server.requests[0].messages]
    tool = len(json.dumps(VERDICT_TOOL).split()) + TOOL_TEMPLATE_TOKENS
    tool = tool if result.structured_output == "function_calling" else 0
    assert result.prompt_tokens_estimate == sum(len(t.split()) + MESSAGE_OVERHEAD for t in texts) + tool


async def test_without_a_tokenize_endpoint_the_estimate_counts(drafter_for: Callable[..., Any]) -> None:
    drafter, server = drafter_for("openai")
    server.script(reply_json(GOOD))
    result = await drafter.write(trash_request())

    assert result.ok and result.token_source == "embedding model tokenizer (estimate)"
    assert not server.tokenized
    assert drafter.describe()["tokenizer_probe"]["/tokenize"] == "HTTP 404"


async def test_a_tokenizer_file_wins_over_the_server(drafter_for: Callable[..., Any]) -> None:
    from knowledge.embedder import packaged_model_path

    path = str(Path(packaged_model_path()) / "tokenizer.json")
    drafter, server = drafter_for("llama_server", DESKPILOT_LLM_TOKENIZER=path)
    server.script(reply_json(GOOD))
    result = await drafter.write(trash_request())

    assert result.token_source == f"model tokenizer {path}"
    assert not server.tokenized


# --- `deskpilot eval --llm` -----------------------------------------------------------------------------------

DEPLOYMENT_SET = PROJECT_ROOT / "examples" / "deployment" / "tickets.jsonl"


USAGE = {"prompt_tokens": 900, "completion_tokens": 60}


def _cite_the_first_passage(req: RecordedRequest) -> Step:
    """A model that copies the first sentence of the first passage it was shown and cites it; with none, it asks
    for a person."""
    user = req.message_text("user")
    if "] Knowledge-base passage" not in user:
        handover = {**GOOD, "reply": "A colleague will follow up.", "cited_ids": [], "needs_human": True}
        return reply_json(handover, usage=USAGE)
    label = user.split("] Knowledge-base passage", 1)[0].rsplit("[", 1)[1]
    passage = user.split("] Knowledge-base passage", 1)[1].split("\n", 2)[1]
    first = passage.split(". ")[0].rstrip(".")
    reply = f"Hello,\n\n{first} [{label}]. Our office is open on Sundays [{label}].\n\nKind regards,\nSupport"
    return reply_json(
        {**GOOD, "reply": reply, "cited_ids": [label]}, usage={"prompt_tokens": 900, "completion_tokens": 60}
    )


@pytest.mark.slow
def test_eval_llm_reports_both_drafters_side_by_side(pg_admin_url: str, embedder: Any, tmp_path: Path) -> None:
    out = tmp_path / "side_by_side.json"
    with FakeOpenAI("llama_server") as server:
        server.default = computed(_cite_the_first_passage)
        result = CliRunner().invoke(
            main,
            ["eval", str(DEPLOYMENT_SET), "--demo", "--llm", "--limit", "6", "--json", str(out)],
            env={
                "DESKPILOT_DATABASE_URL": pg_admin_url,
                "DESKPILOT_DATA_DIR": str(tmp_path),
                "OPENAI_BASE_URL": server.base_url,
                "DESKPILOT_LLM_MODEL": "fake-model",
                "DESKPILOT_LLM_REPLY": "write",
            },
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.output
        asked = len(server.requests)
    assert "offline vs LLM" in result.output and "auto-sent replies with an unsupported sentence" in result.output
    report = json.loads(out.read_text())
    assert report["n"] == 6 and len(report["tickets"]) == 6
    assert asked == 6  # one draft per ticket: the offline run never asks the model
    offline, llm = report["drafters"]["offline"], report["drafters"]["llm"]
    for summary in (offline, llm):
        for key in (
            "answered_right_rate",
            "required_facts_present",
            "unsupported_per_reply",
            "auto_sent_with_unsupported",
            "must_escalate_sent",
            "ece",
            "seconds_per_reply_p50",
            "seconds_per_reply_p95",
            "tokens_in_per_reply",
            "tokens_out_per_reply",
        ):
            assert key in summary, key
    assert offline["tokens_in_total"] == 0 and llm["tokens_in_total"] == 900 * 6
    assert llm["token_counter"] == {"server tokenizer (llama-server /tokenize)": 6}
    # The invented sentence was written, and taken out before any reply could go out.
    assert llm["written_unsupported_per_reply"] > 0
    written = [t["llm"]["llm"]["written_unsupported"] for t in report["tickets"] if t["llm"]["llm"]["ok"]]
    assert any("Our office is open on Sundays." in w for w in written)
    assert all("Sundays" not in t["llm"]["reply"] for t in report["tickets"])
    assert llm["auto_sent_with_unsupported"] == 0
    metrics = {row["key"]: row for row in report["side_by_side"]}
    assert set(metrics["answered_right_rate"]) >= {"offline", "llm", "metric"}


def test_eval_llm_without_a_model_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["eval", str(DEPLOYMENT_SET), "--demo", "--llm"],
        env={"DESKPILOT_DATA_DIR": str(tmp_path), "OPENAI_BASE_URL": "", "OPENAI_API_KEY": ""},
    )
    assert result.exit_code == 2
    assert "--llm needs a model" in result.output


# --- what real small models write (Qwen2.5-Coder 1.5B on llama-server, measured) ----------------------------

# The JSON wrapped in a tag of the model's own invention, the label on the first sentence only.
REAL_OUTPUT = (
    "<draft_verdict>\n{\n"
    '  "reply": "Hi Ana, deleted entries can be restored [KB-1a2b3c4d]. Deleted time entries stay in the '
    "Trash for 30 days. Open Settings › Data › Trash and choose Restore. Restored entries are also emailed to "
    'your accountant every Friday.",\n'
    '  "cited_ids": ["KB-1a2b3c4d"],\n  "confidence": 0.9,\n'
    '  "reasons": ["The passage answers the question."],\n  "needs_human": false\n}\n</draft_verdict>'
)


async def test_a_tagged_answer_with_one_label_is_parsed_and_checked_sentence_by_sentence(
    drafter_for: Callable[..., Any],
) -> None:
    from tests.support.fake_openai import reply_text

    drafter, server = drafter_for("llama_server")
    server.script(reply_text(REAL_OUTPUT))
    result = await drafter.write(trash_request())

    assert result.ok and result.structured_output == "json_schema"
    # Unlabelled sentences are checked against the passages the verdict cites: the two the passage states stay,
    # the invented one goes.
    assert "Deleted time entries stay in the Trash for 30 days." in result.reply
    assert "Open Settings › Data › Trash and choose Restore." in result.reply
    assert result.removed == ["Restored entries are also emailed to your accountant every Friday."]
    assert "accountant" not in result.reply
    assert result.sendable


async def test_plain_prose_with_no_json_falls_back_cleanly(drafter_for: Callable[..., Any]) -> None:
    from tests.support.fake_openai import reply_text

    drafter, server = drafter_for("llama_server", DESKPILOT_LLM_MAX_RETRIES="1")
    prose = "Hi Ana, deleted time entries stay in the Trash for 30 days. Kind regards"
    server.script(reply_text(prose), reply_text(prose))
    result = await drafter.write(trash_request())

    assert not result.ok and result.fell_back and result.fallback == "offline"
    assert result.reply == "" and result.error_kind == "invalid_output"
    assert result.to_draft().fell_back
