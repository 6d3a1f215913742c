"""Server-rendered pages: the trace viewer and the operator console (Jinja templates, no build step)."""

from __future__ import annotations

from pathlib import Path

from litestar.contrib.jinja import JinjaTemplateEngine
from litestar.template.config import TemplateConfig

TEMPLATES_DIR = Path(__file__).parent / "templates"


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    # Autoescape is on for .html templates: every ticket and model string is escaped by default.
    return TemplateConfig(directory=TEMPLATES_DIR, engine=JinjaTemplateEngine)
