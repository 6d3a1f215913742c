"""Server-rendered pages: the trace viewer and the operator console (Jinja templates, no build step)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.template.config import TemplateConfig

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(template_environment()))


def template_environment() -> Environment:
    # Autoescape on for every template, whatever its extension: ticket and model text is untrusted and is only
    # ever rendered escaped (no template uses `|safe`). Undefined stays lenient: node outputs are optional.
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        {
            "duration": format_duration,
            "when": format_when,
            "num": format_number,
            "pct": to_percent,
            "pretty_json": pretty_json,
            "by_value_desc": by_value_desc,
        }
    )
    return env


def format_duration(ms: Any) -> str:
    if not isinstance(ms, int | float):
        return "—"
    if ms < 1:
        return f"{ms:.2f} ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    return f"{ms / 1000:.2f} s"


def format_when(value: Any) -> str:
    """Timestamps in UTC to the second: the page is read by people in several time zones."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return str(value.strftime("%Y-%m-%d %H:%M:%S UTC"))
    return "" if value is None else str(value)


def format_number(value: Any, digits: int = 2) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"  # as the JSON trace spells it
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, float):
        return "—" if value is None else str(value)
    return f"{value:.{digits}f}"


def to_percent(value: Any) -> float:
    """A 0–1 value as an SVG coordinate on a 0–100 axis, clamped so odd data cannot draw outside the bar."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return round(min(max(float(value), 0.0), 1.0) * 100, 2)


def by_value_desc(mapping: Any) -> list[tuple[Any, Any]]:
    """Items of a {name: number} mapping, largest first (JSONB does not keep the order they were written)."""
    if not isinstance(mapping, dict):
        return []

    def key(item: tuple[Any, Any]) -> float:
        value = item[1]
        return -float(value) if isinstance(value, int | float) and not isinstance(value, bool) else float("inf")

    return sorted(mapping.items(), key=key)


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)
