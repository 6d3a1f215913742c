"""`deskpilot report`: reports over the deployment's own data (`go-live`: is each category ready to send alone)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click

from app.cli.startup import database_url_or_exit, load_settings, migrate_or_exit
from core import db
from core.settings import Settings
from review import golive


@click.group()
def report() -> None:
    """Reports over this deployment's reviewed decisions."""


@report.command("go-live")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--target-precision",
    default=golive.DEFAULT_TARGET_PRECISION,
    show_default=True,
    type=click.FloatRange(0.5, 1.0, min_open=True, max_open=True),
    help="Precision the auto-resolved replies must reach (lower bound of the 95% interval).",
)
@click.option(
    "--min-reviews",
    default=golive.DEFAULT_MIN_REVIEWS,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Reviewed would-be auto-resolved replies needed before a category can be ready.",
)
def go_live(as_json: bool, target_precision: float, min_reviews: int) -> None:
    """Per category: replies the agent would have sent alone, their precision (95% Wilson interval), the
    threshold that reaches the target precision, and a verdict (ready / not yet, and why)."""
    settings = load_settings()
    url = database_url_or_exit(settings)
    migrate_or_exit(url)
    data = asyncio.run(_report(url, settings, target_precision, min_reviews))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    print_go_live(data)


async def _report(url: str, settings: Settings, target_precision: float, min_reviews: int) -> dict[str, Any]:
    pool = await db.create_pool(url, settings)
    try:
        async with pool.acquire() as conn:
            built = await golive.build_go_live_report(
                conn, settings, target_precision=target_precision, min_reviews=min_reviews
            )
    finally:
        await pool.close()
    return golive.report_as_dict(built)


def print_go_live(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=(
            f"Go-live report (auto-resolve at {data['current_threshold']:.2f}; target precision "
            f"{data['target_precision']:.2f}, at least {data['min_reviews']} reviews)"
        )
    )
    for column, justify in (
        ("category", "left"),
        ("mode", "left"),
        ("reviewed", "right"),
        ("would auto-resolve", "right"),
        ("precision (95% CI)", "right"),
        ("threshold", "right"),
        ("verdict", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for line in data["categories"]:
        current = line["at_current_threshold"]
        precision = (
            f"{current['precision']:.3f} ({current['ci95'][0]:.3f}-{current['ci95'][1]:.3f})"
            if current["precision"] is not None
            else "—"
        )
        threshold = line["recommended_threshold"]
        table.add_row(
            line["category"],
            line["mode"] or "—",
            str(line["reviewed"]),
            f"{current['right']} / {current['would_auto_resolve']}",
            precision,
            f"{threshold:.2f}" if threshold is not None else "—",
            line["verdict"],
        )
    Console(width=160).print(table)


def calibrate_from_reviews(*, holdout_share: float, min_reviews: int, as_json: bool) -> None:
    """`deskpilot calibrate --from-reviews`: refit on this deployment's reviews; store the refit as a new
    version, activated only when better than the calibration in use on the held-out reviews."""
    settings = load_settings()
    url = database_url_or_exit(settings)
    migrate_or_exit(url)
    summary = asyncio.run(_refit(url, settings, holdout_share, min_reviews))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    state = "activated" if summary["activated"] else "not activated"
    version = f"version {summary['version']}" if summary["version"] is not None else "nothing stored"
    click.echo(f"calibration from reviews: {state} ({version}): {summary['reason']}")
    click.echo(
        f"  reviews: {summary['n_train']} to fit, {summary['n_holdout']} held out; refitted: "
        f"{', '.join(summary['refitted_models']) or 'none'}"
    )
    current, refitted = summary["holdout"]["current"], summary["holdout"]["refitted"]
    click.echo(
        f"  held out: Brier {current['brier']} -> {refitted['brier']}, ECE {current['ece']} -> {refitted['ece']}"
    )


async def _refit(url: str, settings: Settings, holdout_share: float, min_reviews: int) -> dict[str, Any]:
    from agent.scoring.confidence import Calibration, active_calibration
    from review import calibration

    pool = await db.create_pool(url, settings)
    try:
        async with pool.acquire() as conn:
            labels = await calibration.load_review_labels(conn)
            current = await active_calibration(conn) or Calibration.load()
            train, holdout = calibration.split(labels, holdout_share)
            refit = calibration.refit_from_reviews(train, holdout, current, min_reviews=min_reviews)
            # A refit too small to judge is not worth a version; one that lost to the current is, for the record.
            version = (
                await calibration.store_refit(conn, refit, actor="deskpilot calibrate --from-reviews")
                if refit.refitted_models
                else None
            )
    finally:
        await pool.close()
    return calibration.refit_summary(refit, version)
