"""DESKPILOT_MODE: live by default, shadow on request, anything else refused with the variable named."""

from __future__ import annotations

import pytest

from core.settings import Settings, SettingsError


def test_live_by_default_and_shadow_on_request() -> None:
    assert Settings.from_mapping({}).mode == "live"
    assert Settings.from_mapping({"DESKPILOT_MODE": " Shadow "}).mode == "shadow"
    assert Settings.from_mapping({"DESKPILOT_MODE": "live"}).mode == "live"


@pytest.mark.parametrize("value", ["paused", "off", "shadow-live"])
def test_a_bad_mode_names_the_variable(value: str) -> None:
    with pytest.raises(SettingsError, match="DESKPILOT_MODE must be 'live' or 'shadow'"):
        Settings.from_mapping({"DESKPILOT_MODE": value})
