"""Prompt token counts with a real tokenizer, the budget a context window leaves, and the LLM settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.drafting.llm import input_budget
from agent.drafting.prompts import build_messages
from agent.drafting.tokens import MESSAGE_OVERHEAD, token_counter
from core.settings import Settings, SettingsError
from knowledge.embedder import packaged_model_path
from tests.support.draft_requests import evidence, item, request

MINILM_TOKENIZER = str(Path(packaged_model_path()) / "tokenizer.json")


def test_the_estimate_counts_the_whole_text_with_the_embedding_tokenizer() -> None:
    counter = token_counter()
    assert counter.source == "embedding model tokenizer (estimate)" and not counter.exact
    # The tokenizer file caps inputs at 128 tokens for the embedding model: a count must not.
    assert counter.count("restore " * 1000) >= 1000
    # Ids and links split into many word pieces: more than a characters / 4 guess would say.
    ids = " ".join(f"KB-{n:08x}" for n in range(200))
    assert counter.count(ids) > len(ids) / 4
    # Never below characters / 4: an instruct model's BPE may split finer than WordPiece.
    assert counter.count("internationalization " * 50) >= len("internationalization " * 50) / 4


def test_the_models_own_tokenizer_counts_exactly() -> None:
    counter = token_counter(MINILM_TOKENIZER)
    assert counter.exact and counter.source == f"model tokenizer {MINILM_TOKENIZER}"
    text = "internationalization " * 50
    assert counter.count(text) < len(text) / 4  # exact: no characters / 4 floor
    assert counter.count_messages(["a", "b"]) == 2 + 2 * MESSAGE_OVERHEAD


@pytest.mark.parametrize("budget", [1700, 2500, 4000])
def test_a_knowledge_prompt_fits_the_budget_as_the_tokenizer_counts_it(budget: int) -> None:
    counter = token_counter()
    passages = [
        item(f"{n:08x}-0000-4000-8000-000000000000", title=f"Article {n}", text="Exports run nightly. " * 120)
        for n in range(4)
    ]
    data = request(
        "Several questions",
        "word " * 2000,
        items=passages,
        evidence=[
            evidence(f"Question {n} about exports?", p, units=["Exports run nightly."]) for n, p in enumerate(passages)
        ],
    )
    built = build_messages(data, max_input_tokens=budget, counter=counter)
    counted = counter.count_messages([str(m.content) for m in built.messages])
    assert built.approx_tokens <= budget and counted <= built.approx_tokens
    assert built.token_source == counter.source
    assert "passages" in built.truncated  # quotes before anything is dropped


def test_the_budget_is_what_the_context_window_leaves() -> None:
    assert input_budget(Settings.from_mapping({})) == 4096 - 700 - 64
    small = Settings.from_mapping({"DESKPILOT_LLM_CONTEXT_TOKENS": "2048", "DESKPILOT_LLM_MAX_OUTPUT_TOKENS": "400"})
    assert input_budget(small) == 2048 - 400 - 64
    capped = Settings.from_mapping({"DESKPILOT_LLM_CONTEXT_TOKENS": "128000", "DESKPILOT_LLM_MAX_INPUT_TOKENS": "6000"})
    assert input_budget(capped) == 6000


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DESKPILOT_LLM_STRUCTURED_OUTPUT": "xml"}, "DESKPILOT_LLM_STRUCTURED_OUTPUT"),
        ({"DESKPILOT_LLM_CONTEXT_TOKENS": "900"}, "DESKPILOT_LLM_CONTEXT_TOKENS"),
        ({"DESKPILOT_LLM_TOKENIZER": "/no/such/tokenizer.json"}, "DESKPILOT_LLM_TOKENIZER"),
        ({"DESKPILOT_LLM_MAX_UNSUPPORTED_SHARE": "1.5"}, "DESKPILOT_LLM_MAX_UNSUPPORTED_SHARE"),
    ],
)
def test_bad_llm_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_mapping(env)


def test_llm_settings_defaults_and_overrides() -> None:
    default = Settings.from_mapping({})
    assert default.llm_structured_output == "auto" and default.llm_max_unsupported_share == 0.34
    chosen = Settings.from_mapping(
        {"DESKPILOT_LLM_STRUCTURED_OUTPUT": "JSON_MODE", "DESKPILOT_LLM_TOKENIZER": MINILM_TOKENIZER}
    )
    assert chosen.llm_structured_output == "json_mode" and chosen.llm_tokenizer == MINILM_TOKENIZER
