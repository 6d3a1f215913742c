"""The `deskpilot` command line: serve, worker, migrate, db-url, customers, mailbox, and the knowledge/agent
commands."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from app.cli.kb import kb, reembed_on_start
from app.cli.llm import llm
from app.cli.mailbox import mailbox
from app.cli.startup import (
    configure_logging,
    database_url_or_exit,
    load_settings,
    migrate_or_exit,
    require_secrets_off_loopback,
    when_reachable,
)
from core import db
from core.settings import redact_url


def _evaluate() -> click.Command:
    from app.cli.quality import evaluate

    return evaluate


def _calibrate() -> click.Command:
    from app.cli.quality import calibrate

    return calibrate


def _report() -> click.Command:
    from app.cli.report import report

    return report


class CommandGroup(click.Group):
    """A group whose `lazy` commands are imported when one is run or the commands are listed (`--help`), not when
    the program starts: `eval`, `calibrate` and `report` bring in the whole agent (scikit-learn, LangChain; seconds),
    which `serve` refused for a missing token, `migrate`, `db-url` or `llm serve` never need."""

    def __init__(self, *args: Any, lazy: Mapping[str, Callable[[], click.Command]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        load = self.lazy.pop(cmd_name, None)
        if load is not None:
            self.add_command(load(), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=CommandGroup,
    lazy={"eval": _evaluate, "calibrate": _calibrate, "report": _report},
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option("--log-level", default="INFO", show_default=True, help="Logging level.")
def main(log_level: str) -> None:
    """DeskPilot: self-hosted support automation."""
    configure_logging(log_level)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--no-worker", is_flag=True, help="Serve the API only; run `deskpilot worker` separately.")
@click.option("--demo", is_flag=True, help="Load the demo knowledge base and customers into an empty database.")
@click.option(
    "--processes",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="API processes sharing the port (with --no-worker).",
)
def serve(host: str, port: int, no_worker: bool, demo: bool, processes: int) -> None:
    """Migrate, then run the API with an in-process worker.

    Off loopback (e.g. --host 0.0.0.0) DESKPILOT_ADMIN_TOKEN and DESKPILOT_WEBHOOK_SECRET are required: without
    either the command refuses to start.
    """
    import uvicorn

    from app.asgi import create_app

    if processes > 1 and not no_worker:
        raise click.UsageError("--processes needs --no-worker: run the ticket workers with `deskpilot worker`")
    settings = load_settings()
    # Before anything is started or bound: an open admin API or unsigned ingest is acceptable on this machine only.
    require_secrets_off_loopback(host, settings)
    url = database_url_or_exit(settings)
    applied = migrate_or_exit(url)
    if applied:
        click.echo(f"applied migrations: {', '.join(applied)}", err=True)
    if not settings.webhook_secret:
        click.secho(
            "WARNING: DESKPILOT_WEBHOOK_SECRET is not set: the ingest webhook accepts UNSIGNED requests and "
            "takes the customer they name on trust (serving on a non-loopback address needs it).",
            fg="yellow",
            bold=True,
            err=True,
        )
    if not settings.admin_token:
        click.secho(
            "WARNING: DESKPILOT_ADMIN_TOKEN is not set: the admin API and console are open to anyone on this "
            "machine (serving on a non-loopback address needs it).",
            fg="yellow",
            bold=True,
            err=True,
        )
    reembed_on_start(url, settings)
    if demo:
        from app.demo import load_demo_if_empty

        asyncio.run(load_demo_if_empty(url, settings))
    base = f"http://{host}:{port}"
    click.echo(
        f"DeskPilot on {base}  (database: {redact_url(url)})\n"
        f"  console        {base}/\n"
        f"  health         {base}/health\n"
        f"  tickets        {base}/api/tickets\n"
        f"  review queue   {base}/api/review-queue\n"
        f"  OpenAPI        {base}/schema/openapi.json\n"
        f"  post a ticket  curl -X POST {base}/api/webhooks/support/ingest "
        f"-H 'content-type: application/json' -d @examples/tickets/howto-invoice.json",
        err=True,
    )
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": "auto",
        "http": "auto",
        "lifespan": "on",
        "log_level": "warning",
        "access_log": False,
        "timeout_graceful_shutdown": 30,
    }
    if processes > 1:
        # Each process builds its own app from the environment; this one supervises them (and owns the embedded
        # database, when there is one).
        os.environ["DESKPILOT_DATABASE_URL"] = url
        uvicorn.run("app.asgi:create_app", factory=True, workers=processes, **options)
        return
    config = uvicorn.Config(create_app(settings, database_url=url, run_worker=not no_worker), **options)
    # uvicorn re-raises the SIGTERM it handled once shutdown is done; turning that into a normal exit lets the
    # atexit hooks run, which stop the embedded PostgreSQL this process started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.Server(config).run()


@main.command()
@click.option("--concurrency", default=None, type=click.IntRange(1, 256), help="Tickets processed at once.")
def worker(concurrency: int | None) -> None:
    """Run workers only (no HTTP API)."""
    from app.worker import run_on_event_loop, run_worker_process

    settings = load_settings()
    url = database_url_or_exit(settings)
    migrate_when_reachable(url)
    reembed_on_start(url, settings)
    run_on_event_loop(run_worker_process(settings, url, concurrency=concurrency or settings.worker_concurrency))


def migrate_when_reachable(url: str) -> None:
    """Migrate, waiting for the database first: a worker may start before it, or while it restarts (a
    supervisor restarting a crashed worker during a database restart), and must not exit then."""

    def run() -> None:
        try:
            asyncio.run(db.migrate(url))
        except db.MigrationError as exc:
            raise click.ClickException(f"migration failed: {exc}") from None

    when_reachable(run)


@main.command()
def migrate() -> None:
    """Apply pending migrations."""
    settings = load_settings()
    url = database_url_or_exit(settings)
    applied = migrate_or_exit(url)
    click.echo("applied: " + ", ".join(applied) if applied else "schema is up to date")


@main.command("db-url")
def db_url() -> None:
    """Print the database URL in use (the embedded server is started and left running if needed)."""
    settings = load_settings()
    url = database_url_or_exit(settings, keep_running=True)
    if not settings.database_url:
        click.echo(f"embedded PostgreSQL under {settings.embedded_pgdata} (left running)", err=True)
    click.echo(url)


@main.group()
def customers() -> None:
    """Customer accounts."""


@customers.command("load")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def customers_load(file: Path) -> None:
    """Load customer accounts and their events from CSV or JSONL."""
    from tickets.customer_loader import load_customers_file

    settings = load_settings()
    url = database_url_or_exit(settings)
    migrate_or_exit(url)
    report = asyncio.run(load_customers_file(url, settings, file))
    click.echo(f"customers: {report.customers} loaded, events: {report.events} added, errors: {len(report.errors)}")
    for error in report.errors:
        click.echo(f"  {error}", err=True)
    if report.errors:
        sys.exit(1)


main.add_command(kb)
main.add_command(mailbox)
main.add_command(llm)

if __name__ == "__main__":
    main()
