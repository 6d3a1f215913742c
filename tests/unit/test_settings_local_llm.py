"""DESKPILOT_LLM=local turns drafting on against the local model server (no key), unless OPENAI_BASE_URL names
another server; bad values are refused with the variable named."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import Settings, SettingsError


def test_drafting_stays_offline_by_default() -> None:
    settings = Settings.from_mapping({})
    assert not settings.llm_enabled
    assert not settings.llm_local
    assert settings.llm_local_model == "qwen2.5-coder-1.5b"
    assert settings.llm_home == Path.home() / ".cache" / "deskpilot" / "llm"


def test_local_points_the_drafter_at_the_local_server_without_a_key() -> None:
    settings = Settings.from_mapping({"DESKPILOT_LLM": "local"})
    assert settings.llm_enabled
    assert settings.llm_local
    assert settings.openai_base_url == "http://127.0.0.1:8091/v1"
    assert settings.llm_model == "qwen2.5-coder-1.5b"  # the alias `deskpilot llm serve` gives the model
    assert settings.openai_api_key is None
    assert settings.llm_timeout_s == 120.0  # one CPU thread: a reply takes tens of seconds


def test_a_timeout_set_for_the_local_model_is_kept() -> None:
    assert Settings.from_mapping({"DESKPILOT_LLM": "local", "DESKPILOT_LLM_TIMEOUT": "45"}).llm_timeout_s == 45.0
    assert Settings.from_mapping({"OPENAI_API_KEY": "sk-x"}).llm_timeout_s == 30.0


def test_the_local_model_and_port_follow_their_settings() -> None:
    settings = Settings.from_mapping(
        {"DESKPILOT_LLM": " Local ", "DESKPILOT_LLM_LOCAL_MODEL": "smollm2-135m", "DESKPILOT_LLM_LOCAL_PORT": "9123"}
    )
    assert settings.openai_base_url == "http://127.0.0.1:9123/v1"
    assert settings.llm_model == "smollm2-135m"


def test_openai_base_url_and_model_name_win_over_local() -> None:
    settings = Settings.from_mapping(
        {"DESKPILOT_LLM": "local", "OPENAI_BASE_URL": "http://10.0.0.5:8000/v1", "DESKPILOT_LLM_MODEL": "served"}
    )
    assert settings.openai_base_url == "http://10.0.0.5:8000/v1"
    assert settings.llm_model == "served"


def test_the_local_settings_alone_do_not_turn_drafting_on() -> None:
    settings = Settings.from_mapping({"DESKPILOT_LLM_LOCAL_MODEL": "qwen2.5-coder-0.5b"})
    assert not settings.llm_enabled
    assert settings.llm_model == "gpt-4o-mini"


def test_the_cache_folder_can_move(tmp_path: Path) -> None:
    assert Settings.from_mapping({"DESKPILOT_LLM_HOME": str(tmp_path)}).llm_home == tmp_path
    assert Settings.from_mapping({"DESKPILOT_LLM_HOME": "~/models"}).llm_home == Path.home() / "models"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DESKPILOT_LLM", "ollama", "DESKPILOT_LLM must be 'local'"),
        ("DESKPILOT_LLM_LOCAL_MODEL", "llama-70b", "DESKPILOT_LLM_LOCAL_MODEL must be one of smollm2-135m"),
        ("DESKPILOT_LLM_LOCAL_PORT", "0", "DESKPILOT_LLM_LOCAL_PORT must be between 1 and 65535"),
        ("DESKPILOT_LLM_LOCAL_PORT", "eighty", "DESKPILOT_LLM_LOCAL_PORT must be a whole number"),
    ],
)
def test_a_bad_local_setting_names_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_mapping({"DESKPILOT_LLM": "local", name: value})
