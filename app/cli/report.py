"""`deskpilot report`: reports over the deployment's own data (`go-live`: is each category ready to send alone)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from app.cli.startup import database_url_or_exit, load_settings, migrate_or_exit
from core import db
from core.settings import Settings
from review import golive, rehearsal

if TYPE_CHECKING:
    from agent.quality.evaluation import DeploymentFiles


def own_or_demo_deployment(kb: Path | None, history: Path | None, customers: Path | None) -> DeploymentFiles:
    """What a deployment-shaped set runs against: the operator's files when `kb` names a help centre, else the
    demo's help centre, history and customers."""
    from agent.quality.evaluation import DeploymentFiles
    from app.demo import demo_deployment

    if kb is None:
        if history is not None or customers is not None:
            raise click.UsageError("--history and --customers belong to a help centre: give it with --kb")
        return demo_deployment()
    return DeploymentFiles(kb=kb, history=history, customers=customers)


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


@report.command("go-live-rehearsal")
@click.argument("dataset", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the figures here."
)
@click.option(
    "--reviewed-share",
    default=rehearsal.DEFAULT_REVIEWED_SHARE,
    show_default=True,
    type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    help="Share of the tickets that become simulated reviews; the rest is scored.",
)
@click.option(
    "--min-reviews",
    default=rehearsal.DEFAULT_MIN_REVIEWS,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Simulated reviews the refit needs before it can be activated.",
)
@click.option(
    "--kb",
    type=click.Path(exists=True, path_type=Path),
    help="The deployment's help centre (folder or file); without it, the demo's content.",
)
@click.option(
    "--history",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --kb: its past resolutions (as `deskpilot kb load --kind resolution` reads them).",
)
@click.option(
    "--customers",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --kb: its customers' accounts (as `deskpilot customers load` reads them).",
)
def go_live_rehearsal(
    dataset: Path,
    json_out: Path | None,
    reviewed_share: float,
    min_reviews: int,
    kb: Path | None,
    history: Path | None,
    customers: Path | None,
) -> None:
    """Rehearse going live on a labelled deployment-shaped set, against the deployment's own help centre (--kb,
    --history, --customers) or the demo's: reviews simulated from the labels of one share of the tickets refit the
    calibration and place the threshold; the other share is scored as it would go out (ECE, would-be
    auto-resolved replies and their precision)."""
    from agent.quality.evaluation import evaluate_deployment, finite
    from agent.scoring.confidence import Calibration

    deployment = own_or_demo_deployment(kb, history, customers)
    settings = load_settings()
    try:
        run = asyncio.run(evaluate_deployment(dataset, settings=settings, deployment=deployment))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    data = rehearsal.rehearse_go_live(
        run.results,
        Calibration.load(),
        share=reviewed_share,
        min_reviews=min_reviews,
        review_threshold=settings.review_threshold,
    )
    data["deployment"] = run.report["deployment"]
    print_rehearsal(data)
    if json_out is not None:
        json_out.write_text(json.dumps(finite(data), indent=2) + "\n", encoding="utf-8")
        click.echo(f"figures written to {json_out}")


def calibrated_ece_range(noise: dict[str, float] | None) -> str:
    """`evaluation.ece_if_calibrated` as "median (5th–95th percentile)"."""
    return "—" if not noise else f"{noise['median']:.3f} ({noise['p05']:.3f}–{noise['p95']:.3f})"


def print_rehearsal(data: dict[str, Any]) -> None:
    refit = data["refit"]
    click.echo(f"deployment: {data['deployment']}")
    click.echo(
        f"{data['labelled']} of {data['tickets']} tickets scored by a calibration model: "
        f"{data['reviewed']} simulated reviews, {data['unseen']} unseen"
    )
    click.echo(f"refit: {'activated' if refit['activated'] else 'not activated'}: {refit['reason']}")
    ece = data["ece_unseen"]
    click.echo(
        f"unseen half: ECE {ece['in_force']} (shipped curve {ece['shipped']}; a perfectly calibrated curve would "
        f"show {calibrated_ece_range(ece.get('if_calibrated'))} on these tickets), "
        f"highest confidence {data['max_confidence_unseen']}, right {data['right_share_unseen']}"
    )
    at = data["at_recommended_threshold"]
    if at is None:
        click.echo(f"no threshold recommended: {data['verdict_on_reviews']}")
    else:
        click.echo(
            f"at the recommended threshold {data['recommended_threshold']:.2f}: {at['would_auto_resolve']} would be "
            f"auto-resolved ({at['share_of_unseen']} of unseen), {at['right']} right, precision {at['precision']} "
            f"(95% CI {at['ci95'][0]}-{at['ci95'][1]})"
        )


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
