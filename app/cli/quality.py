"""The agent's commands: `deskpilot eval` (quality report on labelled tickets) and `deskpilot calibrate`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from agent.scoring.confidence import CALIBRATION_PATH, Calibration
from app.cli.report import calibrate_from_reviews, calibrated_ece_range, own_or_demo_deployment
from app.cli.startup import load_settings

if TYPE_CHECKING:
    from agent.quality.evaluation import DeploymentFiles


def _settings() -> Any:

    return load_settings()


class _Bars:
    """One rich progress bar per phase (embedding, tickets), created on first report."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description:<20}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        self.tasks: dict[str, Any] = {}

    def __call__(self, label: str, done: int, total: int) -> None:
        if label not in self.tasks:
            self.tasks[label] = self.progress.add_task(label, total=total)
        self.progress.update(self.tasks[label], completed=done, total=total)


def _fmt(value: Any, percent: bool = True) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.1%}" if percent else f"{value:.3f}"
    return str(value)


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"DeskPilot evaluation: {report.get('dataset')}  (n={report['n']})", show_header=True)
    table.add_column("metric")
    table.add_column("DeskPilot", justify="right")
    table.add_column("TF-IDF + LR baseline", justify="right")
    table.add_row(
        "category accuracy", _fmt(report["category_accuracy"]), _fmt(report.get("baseline_category_accuracy"))
    )
    table.add_row("category macro-F1", _fmt(report["category_macro_f1"], False), "")
    table.add_row("priority accuracy", _fmt(report["priority_accuracy"]), "")
    table.add_row("auto-resolve rate", _fmt(report["auto_resolve_rate"]), "")
    table.add_row("auto-resolve precision", _fmt(report["auto_resolve_precision"]), "")
    table.add_row("flag rate", _fmt(report["flag_rate"]), "")
    table.add_row("flag precision", _fmt(report["flag_precision"]), "")
    table.add_row("escalate rate", _fmt(report["escalate_rate"]), "")
    by_confidence = report.get("by_confidence") or {}
    if by_confidence:
        table.add_row(
            "by confidence alone: auto rate / precision",
            f"{_fmt(by_confidence.get('auto_resolve_rate'))} / {_fmt(by_confidence.get('auto_resolve_precision'))}",
            "",
        )
    table.add_row("grounding accuracy", _fmt(report.get("grounding_accuracy")), "")
    table.add_row("ECE (10 bins)", _fmt(report["ece"], False), "")
    table.add_row("reply similarity to gold answer", _fmt(report.get("reply_similarity"), False), "")
    table.add_row("tickets/s", _fmt(report["tickets_per_second"], False), "")
    console.print(table)
    console.print(f"rightness: {report.get('rightness')}")
    matrix = report.get("confusion_matrix") or {}
    if matrix:
        cm = Table(title="category confusion (rows: gold, columns: predicted)")
        columns = sorted({p for row in matrix.values() for p in row})
        cm.add_column("gold \\ predicted")
        for column in columns:
            cm.add_column(column, justify="right")
        for gold, row in matrix.items():
            cm.add_row(gold, *(str(row.get(c, 0)) for c in columns))
        console.print(cm)
    print_languages(console, report)
    console.print(f"history: {report.get('history')}; timings: {report.get('timings')}")


def print_languages(console: Any, report: dict[str, Any]) -> None:
    """The per-language breakdown (`agent.quality.evaluation.language_breakdown`) and the embedding model."""
    from rich.table import Table

    languages = report.get("by_language") or {}
    if not languages:
        return
    embedding = report.get("embedding") or {}
    table = Table(title=f"by language ({embedding.get('model')}, {embedding.get('dimension')}-d)")
    for column in ("language", "n", "category accuracy", "reply similarity", "subject finds its ticket (top 5)"):
        table.add_column(column, justify="left" if column == "language" else "right")
    for language, row in languages.items():
        table.add_row(
            language,
            str(row["n"]),
            _fmt(row["category_accuracy"]),
            _fmt(row["reply_similarity"], False),
            f"{_fmt(row['subject_finds_ticket_at_5'])} of {row['retrieval_checks']}",
        )
    console.print(table)


def print_deployment_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    kinds = report.get("by_kind") or {}
    answerable = kinds.get("answerable") or {}
    table = Table(title=f"DeskPilot deployment evaluation: {report.get('dataset')}  (n={report['n']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    right = f" ({answerable.get('answered_right')}/{answerable.get('n')})" if answerable else ""
    table.add_row("answered right (answerable, reply sent)", _fmt(report["answered_right_rate"]) + right)
    table.add_row("replied right (answerable, any decision)", _fmt(report["replied_right_rate"]))
    table.add_row(
        "auto-resolve rate (all / answerable)",
        f"{_fmt(report['auto_resolve_rate'])} / {_fmt(report['auto_resolve_rate_answerable'])}",
    )
    table.add_row("auto-resolve precision", _fmt(report["auto_resolve_precision"]))
    table.add_row("flag rate / precision", f"{_fmt(report['flag_rate'])} / {_fmt(report['flag_precision'])}")
    table.add_row("escalate rate", _fmt(report["escalate_rate"]))
    table.add_row(
        "not covered, auto-resolved (sent at all)", f"{report['not_covered_auto']} ({report['not_covered_sent']})"
    )
    table.add_row("must escalate, reply sent", str(report["must_escalate_replied"]))
    table.add_row("category accuracy", _fmt(report["category_accuracy"]))
    table.add_row("priority accuracy", _fmt(report["priority_accuracy"]))
    table.add_row("ECE (10 bins)", _fmt(report["ece"], False))
    table.add_row("ECE a perfect curve would show here", calibrated_ece_range(report.get("ece_if_calibrated")))
    table.add_row("tickets/s", _fmt(report["tickets_per_second"], False))
    console.print(table)
    per_kind = Table(title="by kind")
    for column in ("kind", "n", "deliver", "flag", "escalate", "answered right", "category", "priority"):
        per_kind.add_column(column, justify="left" if column == "kind" else "right")
    for kind, row in kinds.items():
        per_kind.add_row(
            kind,
            str(row["n"]),
            str(row["deliver"]),
            str(row["flag_for_review"]),
            str(row["escalate"]),
            "" if row["answered_right"] is None else str(row["answered_right"]),
            _fmt(row["category_accuracy"]),
            _fmt(row["priority_accuracy"]),
        )
    console.print(per_kind)
    failures = report.get("failures") or []
    if failures:
        listing = Table(title=f"failures ({len(failures)})")
        for column in ("id", "kind", "decision", "confidence", "why", "missing facts"):
            listing.add_column(column)
        for failure in failures:
            listing.add_row(
                failure["id"],
                failure["kind"],
                failure["decision"],
                f"{failure['confidence']:.3f}",
                failure["reason"],
                "; ".join(failure["missing_facts"]),
            )
        console.print(listing)
    console.print(f"rightness: {report.get('rightness')}")
    console.print(f"deployment: {report.get('deployment')}; timings: {report.get('timings')}")


@click.command("eval")
@click.argument("dataset", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--history",
    "history",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Labelled past tickets to learn from (default: the data set minus the holdout); with a deployment-shaped "
    "set, its past resolutions (as `deskpilot kb load --kind resolution` reads them).",
)
@click.option("--kb", type=click.Path(exists=True, path_type=Path), help="Knowledge-base folder or file to load.")
@click.option(
    "--customers",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With a deployment-shaped set: its customers' accounts (as `deskpilot customers load` reads them).",
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the report here.")
@click.option(
    "--holdout",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0.01, 0.99),
    help="Share of DATASET evaluated when --history is not given.",
)
@click.option("--limit", type=click.IntRange(1), help="Use at most N rows of DATASET (a deterministic sample).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the split and the sample.")
@click.option(
    "--demo",
    is_flag=True,
    help="Run a deployment-shaped set (ingest payloads plus `expect`) against the demo KB, history and customers. "
    "Without it such a set runs against --kb, --history and --customers, in a scratch database either way.",
)
@click.option(
    "--llm",
    "with_llm",
    is_flag=True,
    help="Run the tickets through the offline drafter and the configured LLM drafter (OPENAI_BASE_URL / "
    "DESKPILOT_LLM_MODEL) in the same run and report them side by side.",
)
def evaluate(
    dataset: Path,
    history: Path | None,
    kb: Path | None,
    customers: Path | None,
    json_out: Path | None,
    holdout: float,
    limit: int | None,
    seed: int,
    demo: bool,
    with_llm: bool,
) -> None:
    """Run labelled tickets through routing and the agent without delivering; print the quality report."""
    from agent.quality.evaluation import evaluate as run_evaluation
    from agent.quality.evaluation import finite

    deployment = _deployment_of(dataset, demo=demo, kb=kb, history=history, customers=customers)
    if with_llm:
        _evaluate_side_by_side(
            dataset, json_out, deployment=deployment, history=history, kb=kb, holdout=holdout, limit=limit, seed=seed
        )
        return
    if deployment is not None:
        _evaluate_deployment(dataset, json_out, deployment, limit=limit, seed=seed)
        return
    settings = _settings()
    bars = _Bars()
    with bars.progress:
        run = asyncio.run(
            run_evaluation(
                dataset,
                settings=settings,
                history_path=history,
                kb=kb,
                holdout=holdout,
                limit=limit,
                seed=seed,
                progress=bars,
            )
        )
    print_report(run.report)
    if json_out is not None:
        json_out.write_text(json.dumps(finite(run.report), indent=2, default=str) + "\n", encoding="utf-8")
        click.echo(f"report written to {json_out}")


def _deployment_of(
    dataset: Path, *, demo: bool, kb: Path | None, history: Path | None, customers: Path | None
) -> DeploymentFiles | None:
    """What a deployment-shaped DATASET runs against: the demo's content or the given files; None for a set of
    labelled tickets (`--kb` and `--history` then mean what they mean there)."""
    from agent.quality.evaluation import is_deployment_set
    from app.demo import demo_deployment

    if demo:
        if kb is not None or history is not None or customers is not None:
            raise click.UsageError(
                "--demo brings its own knowledge base, history and customers: drop --kb, --history and --customers"
            )
        return demo_deployment()
    if not is_deployment_set(dataset):
        if customers is not None:
            raise click.UsageError(
                f"--customers: only a deployment-shaped set (lines with `expect`) has senders to look up; "
                f"{dataset.name} is a set of labelled tickets"
            )
        return None
    if kb is None:
        raise click.UsageError(
            f"{dataset.name} is a deployment-shaped set (its lines carry `expect`): give its help centre with --kb "
            "(and its past resolutions with --history, its customers with --customers), or --demo for the demo's"
        )
    return own_or_demo_deployment(kb, history, customers)


def _evaluate_deployment(
    dataset: Path, json_out: Path | None, deployment: DeploymentFiles, *, limit: int | None, seed: int
) -> None:
    from agent.quality.evaluation import evaluate_deployment, finite

    settings = _settings()
    bars = _Bars()
    try:
        with bars.progress:
            run = asyncio.run(
                evaluate_deployment(
                    dataset,
                    settings=settings,
                    deployment=deployment,
                    limit=limit,
                    seed=seed,
                    progress=bars,
                )
            )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    print_deployment_report(run.report)
    if json_out is not None:
        json_out.write_text(json.dumps(finite(run.report), indent=2, default=str) + "\n", encoding="utf-8")
        click.echo(f"report written to {json_out}")


def _evaluate_side_by_side(
    dataset: Path,
    json_out: Path | None,
    *,
    deployment: DeploymentFiles | None,
    history: Path | None,
    kb: Path | None,
    holdout: float,
    limit: int | None,
    seed: int,
) -> None:
    from agent.quality.drafters import evaluate_deployment_side_by_side, evaluate_side_by_side
    from agent.quality.evaluation import finite

    settings = _settings()
    if not settings.llm_enabled:
        raise click.UsageError(
            "--llm needs a model: set OPENAI_BASE_URL (e.g. http://127.0.0.1:8092/v1) and DESKPILOT_LLM_MODEL, "
            "or OPENAI_API_KEY"
        )
    bars = _Bars()
    try:
        with bars.progress:
            if deployment is not None:
                report = asyncio.run(
                    evaluate_deployment_side_by_side(
                        dataset,
                        settings=settings,
                        deployment=deployment,
                        limit=limit,
                        seed=seed,
                        progress=bars,
                    )
                )
            else:
                report = asyncio.run(
                    evaluate_side_by_side(
                        dataset,
                        settings=settings,
                        history_path=history,
                        kb=kb,
                        holdout=holdout,
                        limit=limit,
                        seed=seed,
                        progress=bars,
                    )
                )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    print_side_by_side(report)
    if json_out is not None:
        json_out.write_text(json.dumps(finite(report), indent=2, default=str) + "\n", encoding="utf-8")
        click.echo(f"report written to {json_out}")


def print_side_by_side(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    model = report.get("model") or {}
    table = Table(title=f"offline vs LLM ({model.get('model')}): {report.get('dataset')}  (n={report['n']})")
    table.add_column("metric")
    table.add_column("offline", justify="right")
    table.add_column("LLM", justify="right")
    for row in report["side_by_side"]:
        kind = row["format"]
        cells = [
            _fmt(row.get(name), percent=True) if kind == "%" else _fmt(row.get(name), percent=False)
            for name in ("offline", "llm")
        ]
        table.add_row(row["metric"], *cells)
    console.print(table)
    llm = report["drafters"]["llm"]
    console.print(
        f"LLM: {llm.get('llm_replies')} replies written by the model, {llm.get('not_asked')} not asked (nothing to "
        f"cite), {llm.get('fell_back')} fell back "
        f"{llm.get('fell_back_by_kind')}, {llm.get('escalated_by_llm_check')} escalated by its checks; "
        f"structured output {llm.get('structured_output')}; token counter {llm.get('token_counter')}; "
        f"tokens in/out {llm.get('tokens_in_total')}/{llm.get('tokens_out_total')}"
    )
    console.print(f"rightness: {report.get('rightness')}")
    console.print(f"timings: {report.get('timings')}")


@click.command("calibrate")
@click.option(
    "--from-reviews",
    is_flag=True,
    help="Refit on this deployment's reviewed decisions instead (versioned in the database, activated only when "
    "better on the held-out reviews).",
)
@click.option(
    "--holdout-share",
    default=0.3,
    show_default=True,
    type=click.FloatRange(0.05, 0.9),
    help="With --from-reviews: share of the reviews held out to compare the refit with the current calibration.",
)
@click.option(
    "--min-reviews",
    default=100,
    show_default=True,
    type=click.IntRange(10),
    help="With --from-reviews: below this many reviews the current calibration stays.",
)
@click.option("--json", "as_json", is_flag=True, help="With --from-reviews: print the result as JSON.")
@click.option(
    "--history",
    "histories",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Labelled tickets with issue labels; repeat to fit on a mix of data sets.",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=CALIBRATION_PATH, show_default=True)
@click.option("--folds", default=3, show_default=True, type=click.IntRange(2, 10))
@click.option("--limit", type=click.IntRange(1), help="Use at most N rows of each file.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--save-signals",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the collected (signals, right) rows here.",
)
@click.option(
    "--from-signals",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Refit from rows saved by --save-signals instead of running the graph.",
)
@click.option(
    "--deployment",
    "deployments",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Fit only the knowledge-base replies' mapping, on this deployment-shaped set against the demo deployment; "
    "repeat to fit on several sets.",
)
def calibrate(
    histories: tuple[Path, ...],
    deployments: tuple[Path, ...],
    out: Path,
    folds: int,
    limit: int | None,
    seed: int,
    save_signals: Path | None,
    from_signals: Path | None,
    from_reviews: bool,
    holdout_share: float,
    min_reviews: int,
    as_json: bool,
) -> None:
    """Fit the confidence calibration on held-out folds of labelled history and write it as JSON (or, with
    --from-reviews, refit it on this deployment's reviews)."""
    if from_reviews:
        calibrate_from_reviews(holdout_share=holdout_share, min_reviews=min_reviews, as_json=as_json)
        return
    if deployments:
        calibrate_knowledge(list(deployments), out)
        return
    from agent.quality.calibration import fit_calibration, fit_from_signals

    if from_signals is not None:
        saved = json.loads(from_signals.read_text(encoding="utf-8"))
        calibration, summary = fit_from_signals(
            tuple(saved["with"]),
            tuple(saved["plain"]),
            list(histories),
            saved.get("files", {}),
            folds=folds,
            limit=limit,
            seed=seed,
        )
    else:
        if not histories:
            raise click.UsageError("give at least one --history file (or --from-signals)")
        settings = _settings()
        bars = _Bars()
        with bars.progress:
            calibration, summary = asyncio.run(
                fit_calibration(
                    list(histories),
                    settings=settings,
                    folds=folds,
                    limit=limit,
                    seed=seed,
                    progress=bars,
                    signals_out=save_signals,
                )
            )
    # The history fit leaves the knowledge-base replies' mapping (`--deployment`) as it was.
    calibration.knowledge = Calibration.load(out).knowledge
    calibration.save(out)
    click.echo(json.dumps(summary, indent=2))
    click.echo(f"calibration written to {out}")


def calibrate_knowledge(datasets: list[Path], out: Path) -> None:
    """`deskpilot calibrate --deployment FILE …`: refit the knowledge-base replies' mapping, keep the others."""
    from agent.quality.calibration import fit_knowledge_calibration
    from app.demo import demo_deployment

    settings = _settings()
    bars = _Bars()
    with bars.progress:
        model, summary = asyncio.run(
            fit_knowledge_calibration(
                datasets,
                settings=settings,
                deployment=demo_deployment(),
                progress=bars,
            )
        )
    calibration = Calibration.load(out)
    calibration.knowledge = model
    calibration.meta.setdefault("summary", {})["knowledge"] = summary
    calibration.save(out)
    click.echo(json.dumps({"knowledge": summary}, indent=2))
    click.echo(f"knowledge-base mapping written to {out}")
