"""The agent's commands: `deskpilot eval` (quality report on labelled tickets) and `deskpilot calibrate`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click

from agent.scoring.confidence import CALIBRATION_PATH
from app.cli.startup import load_settings


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
    console.print(f"history: {report.get('history')}; timings: {report.get('timings')}")


@click.command("eval")
@click.argument("dataset", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--history",
    "history",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Labelled past tickets to learn from (default: the data set minus the holdout).",
)
@click.option("--kb", type=click.Path(exists=True, path_type=Path), help="Knowledge-base folder or file to load.")
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
def evaluate(
    dataset: Path,
    history: Path | None,
    kb: Path | None,
    json_out: Path | None,
    holdout: float,
    limit: int | None,
    seed: int,
) -> None:
    """Run labelled tickets through routing and the agent without delivering; print the quality report."""
    from agent.quality.evaluation import evaluate as run_evaluation
    from agent.quality.evaluation import finite

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


@click.command("calibrate")
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
def calibrate(
    histories: tuple[Path, ...],
    out: Path,
    folds: int,
    limit: int | None,
    seed: int,
    save_signals: Path | None,
    from_signals: Path | None,
) -> None:
    """Fit the confidence calibration on held-out folds of labelled history and write it as JSON."""
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
    calibration.save(out)
    click.echo(json.dumps(summary, indent=2))
    click.echo(f"calibration written to {out}")
