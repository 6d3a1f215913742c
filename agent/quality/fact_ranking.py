"""Where the help-centre sentence holding a required fact ranks, by model, for English and other-language tickets.

Every sentence of the help centre (the reader's units, each with its section title) is ranked by its cosine to the
whole ticket; for each required fact of an answerable ticket of a deployment-shaped set, the best rank of a sentence
holding it counts (facts that no single sentence holds are left out). Models: the packaged ones by name, and joint
readings (`agent.drafting.crosslingual.JointEmbedder`) of MiniLM with the multilingual USE at the given weights:

    python -m agent.quality.fact_ranking examples/deployment/tickets.jsonl examples/deployment/second-set.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from agent.drafting.crosslingual import joint
from agent.drafting.questions import language_of
from agent.drafting.reader import passage_units, plain
from agent.quality.evaluation import read_deployment_set
from agent.state import ticket_text
from knowledge.embedder import Embedder, get_embedder
from knowledge.embedding_models import E5_SMALL, MINILM, MULTILINGUAL_USE
from knowledge.loader import article_from_text, discover, title_from_file_name

TOPS = (1, 3, 10, 30)
ENGLISH = "en"


def help_centre_sentences(kb: Path) -> list[str]:
    """The help centre's units as the reader embeds them ("title: sentence"), each once."""
    files, _, errors, _ = discover([kb], "article")
    if errors:
        raise ValueError(f"{kb}: {errors[0]}")
    units: list[str] = []
    for file in files:
        article = article_from_text(
            file.source,
            file.path.read_text(encoding="utf-8"),
            file.format,
            category=None,
            fallback_title=title_from_file_name(file.path),
            metadata={},
        )
        units.extend(f"{chunk.title}: {unit}" for chunk in article.chunks for unit in passage_units(chunk.content))
    return list(dict.fromkeys(units))


def fact_ranks(embedder: Embedder, units: Sequence[str], tickets: Sequence[tuple[str, list[str]]]) -> list[int]:
    """For each (ticket text, facts), each fact's best rank (0 = first) among the units holding it."""
    unit_vectors = np.asarray(embedder.encode(list(units)))
    ticket_vectors = np.asarray(embedder.encode([text for text, _ in tickets]))
    plain_units = [plain(u).lower() for u in units]
    ranks: list[int] = []
    for vector, (_, facts) in zip(ticket_vectors, tickets, strict=True):
        position = np.empty(len(units), dtype=int)
        position[np.argsort(-(unit_vectors @ vector))] = np.arange(len(units))
        for fact in facts:
            holding = [position[n] for n, unit in enumerate(plain_units) if fact.lower() in unit]
            if holding:
                ranks.append(int(min(holding)))
    return ranks


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", type=Path, help="deployment-shaped sets (ingest payloads + expect)")
    parser.add_argument("--kb", type=Path, default=Path("examples/kb"), help="the help centre they are about")
    parser.add_argument(
        "--joint", type=float, nargs="*", default=[0.3, 0.7], help="MiniLM's weights in joint readings with USE"
    )
    parser.add_argument("--json", type=Path, help="write the table here")
    args = parser.parse_args(argv)
    try:
        units = help_centre_sentences(args.kb)
        sets = [read_deployment_set(dataset) for dataset in args.datasets]
    except (OSError, ValueError) as exc:
        print(f"fact_ranking: {exc}", file=sys.stderr)
        return 2
    by_language: dict[str, list[tuple[str, list[str]]]] = {ENGLISH: [], "other": []}
    for items in sets:
        for item in items:
            if item.expect.kind == "answerable" and item.expect.answer_facts:
                text = ticket_text(item.ticket)
                by_language[ENGLISH if language_of(text) == ENGLISH else "other"].append(
                    (text, list(item.expect.answer_facts))
                )
    models: dict[str, Embedder] = {name: get_embedder(name) for name in (MINILM, E5_SMALL, MULTILINGUAL_USE)}
    for weight in args.joint:
        models[f"joint {weight:g} MiniLM + {1 - weight:g} USE"] = joint(
            models[MINILM], models[MULTILINGUAL_USE], weight
        )
    table: dict[str, dict[str, dict[str, int]]] = {}
    for name, embedder in models.items():
        table[name] = {}
        for language, tickets in by_language.items():
            ranks = np.array(fact_ranks(embedder, units, tickets))
            table[name][language] = {"facts": len(ranks), **{f"top{k}": int((ranks < k).sum()) for k in TOPS}}
        print(name, json.dumps(table[name]))
    if args.json:
        args.json.write_text(json.dumps({"units": len(units), "models": table}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
