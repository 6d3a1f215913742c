"""`deskpilot kb load`, `kb search` and `kb reembed`: fill the knowledge base, see what the retriever returns,
re-embed it with another model."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
from pathlib import Path
from typing import Any, Literal

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app.cli.startup import database_url_or_exit, load_settings, migrate_or_exit, when_reachable
from core.settings import Settings
from knowledge.embedder import Embedder
from knowledge.loader import DEFAULT_MAX_BYTES, LoadKind, LoadReport, load_paths
from knowledge.reembed import EmbeddingIdentity, ReembedReport, reembed, stored_identity
from knowledge.retrieval import RetrievedItem, search_query
from knowledge.store import CATEGORIES


class RichLoadProgress:
    """A files bar on stderr; a plain no-op when stderr is not a terminal (logs, CI, pipes)."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("[bold]loading"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            disable=not console.is_terminal,
            transient=True,
        )
        self._task: Any = None

    def __enter__(self) -> RichLoadProgress:
        self._progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._progress.stop()

    def start(self, total_files: int) -> None:
        self._task = self._progress.add_task("", total=total_files)

    def advance(self, files: int, description: str) -> None:
        if self._task is not None:
            self._progress.update(self._task, advance=files, description=description)


log = logging.getLogger(__name__)


@click.group()
def kb() -> None:
    """Knowledge base: load articles and past resolutions, query the retriever."""


@kb.command("load")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--kind",
    type=click.Choice(["article", "resolution"]),
    default="article",
    show_default=True,
    help="Load files as KB articles, or CSV/JSONL records as past resolutions.",
)
@click.option("--prune", is_flag=True, help="Delete articles under the given folders whose files are gone.")
@click.option("--category", type=click.Choice(CATEGORIES), help="Category for everything loaded in this run.")
@click.option(
    "--max-bytes",
    type=click.IntRange(1),
    default=DEFAULT_MAX_BYTES,
    show_default=True,
    help="Skip (and report) files larger than this.",
)
def load(paths: tuple[Path, ...], kind: LoadKind, prune: bool, category: str | None, max_bytes: int) -> None:
    """Load Markdown/HTML/text files, or CSV/JSONL records, into the knowledge base.

    Re-running on unchanged input changes nothing; a bad file or record is reported and the rest still load.
    Exits 1 when anything was reported as an error (after loading the rest), 0 otherwise; records skipped for
    having nothing to load are warnings.
    """
    from core import db
    from knowledge.embedder import EmbeddingDimensionError, get_embedder

    if prune and kind != "article":
        raise click.UsageError("--prune applies to articles only (resolutions are history and never pruned)")
    settings = load_settings()
    url = database_url_or_exit(settings)
    migrate_or_exit(url)
    console = Console(stderr=True)
    if console.is_terminal:
        with console.status("loading the embedding model…"):
            embedder = get_embedder(settings.embedding_model)
    else:
        embedder = get_embedder(settings.embedding_model)

    async def run() -> LoadReport:
        async with db.pool_for(url, settings) as pool, pool.acquire() as conn:
            with RichLoadProgress(console) as progress:
                return await load_paths(
                    conn,
                    list(paths),
                    embedder=embedder,
                    kind=kind,
                    category=category,
                    prune=prune,
                    max_bytes=max_bytes,
                    progress=progress,
                )

    try:
        report = asyncio.run(run())
    except EmbeddingDimensionError as exc:
        raise click.ClickException(str(exc)) from None
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    for error in report.errors:
        click.echo(f"error: {error}", err=True)
    click.echo(report.summary())
    if report.errors:
        sys.exit(1)


@kb.command("search")
@click.argument("query")
@click.option("--category", type=click.Choice(CATEGORIES), help="Only this category (and articles without one).")
@click.option("-k", "k", type=click.IntRange(1, 100), help="Number of hits [default: retrieve_k].")
@click.option("--kind", type=click.Choice(["article", "resolution"]), help="Only articles or resolutions.")
@click.option("--json", "as_json", is_flag=True, help="Print the hits as a JSON list.")
def search(
    query: str,
    category: str | None,
    k: int | None,
    kind: Literal["article", "resolution"] | None,
    as_json: bool,
) -> None:
    """Show what the retriever returns for QUERY, with its scores."""
    from core import db
    from knowledge.embedder import get_embedder

    if not query.strip():
        raise click.UsageError("QUERY must not be empty")
    settings = load_settings()
    url = database_url_or_exit(settings)
    migrate_or_exit(url)
    embedder = get_embedder(settings.embedding_model)

    async def run() -> list[RetrievedItem]:
        async with db.pool_for(url, settings) as pool, pool.acquire() as conn:
            return await search_query(
                conn,
                embedder,
                query,
                kind=kind,
                category=category,
                k=k or settings.retrieve_k,
                ef_search=settings.hnsw_ef_search,
            )

    items = asyncio.run(run())
    if as_json:
        click.echo(json.dumps([item.to_json() for item in items], ensure_ascii=False, indent=2))
        return
    if not items:
        click.echo("no hits (is the knowledge base loaded? `deskpilot kb load PATH`)")
        return
    table = Table(title=f"{len(items)} hits for {query!r}", show_lines=True)
    for column in ("#", "kind", "score", "similarity", "text rank", "vector rank", "category"):
        table.add_column(column, no_wrap=True, justify="left" if column in ("kind", "category") else "right")
    table.add_column("title / preview", ratio=1, overflow="fold")
    for rank, item in enumerate(items, start=1):
        table.add_row(
            str(rank),
            "article" if item.kind == "kb_chunk" else "resolution",
            f"{item.score:.4f}",
            f"{item.similarity:.3f}" if item.similarity is not None else "",
            str(item.text_rank or "–"),
            str(item.vector_rank or "–"),
            item.category or "–",
            f"[bold]{escape(item.title)}[/bold]\n{escape(item.preview)}",
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)  # piped output: room for the preview instead of rich's 80 columns
    console.print(table)


@kb.command("reembed")
def reembed_command() -> None:
    """Re-embed every KB chunk and past resolution with the configured model (DESKPILOT_EMBEDDING_MODEL).

    Does nothing when the stored vectors are already that model's. Otherwise the new vectors go to a new column
    while searches keep using the old ones, and one transaction switches to them (a new knowledge version).
    An interrupted run resumes where it stopped.
    """
    from knowledge.embedder import get_embedder

    settings = load_settings()
    url = database_url_or_exit(settings)
    migrate_or_exit(url)
    embedder = get_embedder(settings.embedding_model)
    click.echo(reembed_now(url, settings, embedder).summary())


def reembed_now(url: str, settings: Settings, embedder: Embedder) -> ReembedReport:
    from core import db

    def progress(table: str, rows: int) -> None:
        log.info("re-embedded %d rows of %s", rows, table)

    async def run() -> ReembedReport:
        async with db.pool_for(url, settings) as pool, pool.acquire() as conn:
            return await reembed(conn, embedder, progress=progress)

    return asyncio.run(run())


def reembed_on_start(url: str, settings: Settings) -> threading.Thread | None:
    """What `serve` and `worker` do when the stored vectors were made by another model than the configured one:
    of the same dimension, they start at once and re-embed in a background thread (searches use the old vectors
    until the switch); of another dimension, the old vectors cannot answer the new model's queries, so they
    re-embed first and then start (`deskpilot kb reembed` does it ahead of time, while the old deployment keeps
    serving). Returns the background thread, if one was started."""
    from core import db
    from knowledge.embedder import get_embedder

    embedder = get_embedder(settings.embedding_model)
    target = EmbeddingIdentity.of(embedder)

    async def read() -> EmbeddingIdentity:
        async with db.pool_for(url, settings) as pool, pool.acquire() as conn:
            return await stored_identity(conn)

    # After migrate_when_reachable, but the model's load takes seconds: the database may have gone meanwhile.
    stored = when_reachable(lambda: asyncio.run(read()))
    if stored == target:
        return None
    if stored.dimension != target.dimension:
        click.echo(
            f"the stored vectors are {stored} and the configured model makes {target}: re-embedding the knowledge "
            "base before starting (run `deskpilot kb reembed` beforehand to keep the old deployment serving "
            "meanwhile)",
            err=True,
        )
        click.echo(reembed_now(url, settings, embedder).summary(), err=True)
        return None
    click.echo(
        f"the stored vectors are {stored}, the configured model is {target}: re-embedding in the background; "
        "searches use the old vectors until it switches (`deskpilot kb reembed` shows the progress)",
        err=True,
    )

    def background() -> None:
        try:
            reembed_now(url, settings, embedder)
        except Exception:  # the service goes on with the old vectors; the next start tries again
            log.exception("background re-embed failed; searches keep the old vectors")

    thread = threading.Thread(target=background, name="reembed", daemon=True)
    thread.start()
    return thread
