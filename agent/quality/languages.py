"""Category accuracy per language by k-fold cross-validation over a whole labelled set.

`deskpilot eval` scores one held-out sample (363 tickets of tobi-bueck at `--limit 2000`); split by language, its
English and non-English accuracies each rest on 150-200 tickets, and their gap moves by several points from one
sample to the next (one standard error of the gap is about 4.5 points). Here every ticket of the set is predicted
once, by the routing models fitted on the other folds (the same models the agent fits on its history, from the
configured embedding model's vectors), so the gap rests on every labelled ticket:

    python -m agent.quality.languages ../shared/data/tobi-bueck-tickets/dev.jsonl --folds 5 --json languages.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.drafting.questions import language_of
from agent.quality.evaluation import LabelledTicket, _rank, encode_all, read_labelled
from agent.triage.classifier import History, RoutingModels
from core.settings import Settings
from knowledge.embedder import get_embedder
from knowledge.store import resolution_hash

ENGLISH = "en"


def history_of(tickets: Sequence[LabelledTicket], vectors: dict[str, np.ndarray]) -> History:
    """The tickets as the agent's history holds them: one row per distinct ticket and answer, ordered as rows
    stored in one transaction are read (by content hash)."""
    rows: dict[str, LabelledTicket] = {}
    for ticket in tickets:
        rows.setdefault(resolution_hash(ticket.text, ticket.answer or ""), ticket)
    ordered = [rows[h] for h in sorted(rows)]
    return History(
        ids=[t.id for t in ordered],
        texts=[t.text for t in ordered],
        embeddings=np.stack([vectors[t.id] for t in ordered]),
        categories=[t.category for t in ordered],
        intents=[t.intent for t in ordered],
        priorities=[t.priority for t in ordered],
        ticket_ids=[None] * len(ordered),
    )


def cross_validate(
    tickets: Sequence[LabelledTicket], vectors: dict[str, np.ndarray], folds: int, seed: int = 0
) -> list[tuple[str, str, str]]:
    """(language, gold category, predicted category) for every labelled ticket, each predicted by the models
    fitted on the folds it is not in."""
    out: list[tuple[str, str, str]] = []
    for fold in range(folds):
        held = [t for t in tickets if _rank(t.id, seed) % folds == fold]
        models = RoutingModels.fit(history_of([t for t in tickets if _rank(t.id, seed) % folds != fold], vectors), 1)
        for ticket in held:
            if not ticket.category:
                continue
            probs = models.predict(ticket.text, vectors[ticket.id]).category_probs
            out.append((language_of(ticket.text), ticket.category, max(probs, key=probs.__getitem__)))
    return out


def _accuracy(rows: Sequence[tuple[str, str, str]]) -> dict[str, Any]:
    right = sum(gold == predicted for _, gold, predicted in rows)
    return {"n": len(rows), "category_accuracy": right / len(rows) if rows else None}


def summarize(rows: Sequence[tuple[str, str, str]]) -> dict[str, Any]:
    """Accuracy overall, per language, English against the rest, and the gap with one standard error."""
    english = [r for r in rows if r[0] == ENGLISH]
    others = [r for r in rows if r[0] != ENGLISH]
    report: dict[str, Any] = {
        "all": _accuracy(rows),
        "by_language": {lang: _accuracy([r for r in rows if r[0] == lang]) for lang in sorted({r[0] for r in rows})},
        "english": _accuracy(english),
        "non_english": _accuracy(others),
    }
    a, b = report["english"]["category_accuracy"], report["non_english"]["category_accuracy"]
    if a is not None and b is not None:
        report["gap_points"] = round(100 * (a - b), 2)
        report["gap_standard_error_points"] = round(
            100 * math.sqrt(a * (1 - a) / len(english) + b * (1 - b) / len(others)), 2
        )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.quality.languages", description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="a labelled JSONL file, as `deskpilot eval` reads")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="which hash assigns tickets to folds")
    parser.add_argument("--json", type=Path, dest="json_out", help="also write the report here")
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error("--folds must be at least 2")
    if not args.dataset.is_file():
        parser.error(f"dataset: no such file: {args.dataset}")
    tickets = read_labelled(args.dataset)
    if len({t.id for t in tickets}) < args.folds:
        parser.error(f"dataset: {len(tickets)} tickets cannot fill {args.folds} folds")
    settings = Settings.from_env()
    embedder = get_embedder(settings.embedding_model)
    started = time.perf_counter()
    vectors = dict(
        zip([t.id for t in tickets], encode_all(embedder, [t.text for t in tickets], None, "tickets"), strict=True)
    )
    encoded = time.perf_counter()
    report = summarize(cross_validate(tickets, vectors, args.folds, args.seed))
    report.update(
        dataset=str(args.dataset),
        folds=args.folds,
        seed=args.seed,
        embedding_model=embedder.name,
        encode_seconds=round(encoded - started, 1),
        fit_and_predict_seconds=round(time.perf_counter() - encoded, 1),
    )
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
