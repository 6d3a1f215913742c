"""`deskpilot kb load`: input formats, idempotent re-runs, replaced and pruned files, bad files, real data."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from click.testing import CliRunner, Result

from app.cli import main
from core.settings import Settings
from knowledge import store
from knowledge.chunking import chunk_markdown, chunk_plain_text, html_to_markdownish
from knowledge.loader import CHUNK_MAX_CHARS, CHUNK_OVERLAP_CHARS, LoadReport, load_paths
from tests.support.knowledge import (
    EXAMPLES_DIR,
    SAMPLE_DATA,
    SEARCH_HIT_KEYS,
    CountingEmbedder,
    MemoEmbedder,
)

MARKDOWN = """# Refunds for annual plans

Annual plans can be refunded within 30 days of the renewal date.

## How to ask

Open Settings → Billing → Refunds and click **Request refund**. Say which invoice the refund is for.

## After you ask

The billing team answers within two working days. Approved refunds reach your card in five to ten days.
"""

HTML = """<!doctype html><html><head><title>Export your timesheets</title><style>p{}</style></head>
<body><h1>Export your timesheets</h1><p>Timesheets export as CSV or PDF from the Reports page.</p>
<h2>Scheduled exports</h2><ul><li>Open Reports.</li><li>Click <b>Schedule</b> and pick a day.</li></ul>
<script>alert("not text")</script></body></html>"""

TEXT = """Mobile app offline mode

The mobile app keeps the last 30 days of entries on the phone. Entries made offline sync when the phone
is back online; conflicts keep the newest edit.
"""

CSV_ARTICLES = (
    "id,subject,body,answer,category\n"
    'faq-1,Which currencies can I invoice in?,"Customers abroad want invoices in euros.",'
    '"Invoices can be issued in 24 currencies; pick one per client under Clients → Billing.",billing\n'
    'faq-2,Can I track time without a project?,"Some work has no project yet.",'
    '"Yes: entries without a project land in Unassigned until you move them.",general\n'
)


def jsonl(*records: dict[str, Any]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


JSONL_ARTICLES = jsonl(
    {
        "id": "j-1",
        "subject": "Two-factor codes are rejected",
        "body": "My authenticator codes never work.",
        "answer": "Check the phone's clock is set automatically; codes depend on the exact time.",
        "category": "technical",
    },
    {
        "id": "j-2",
        "subject": None,
        "body": "Where is the dark mode switch?",
        "answer": "Profile → Appearance → Theme.",
        "category": None,
    },
)


def write_kb(root: Path) -> Path:
    (root / "billing").mkdir(parents=True)
    (root / "billing" / "annual-refunds.md").write_text(MARKDOWN, encoding="utf-8")
    (root / "export.html").write_text(HTML, encoding="utf-8")
    (root / "offline.txt").write_text(TEXT, encoding="utf-8")
    (root / "faq.csv").write_text(CSV_ARTICLES, encoding="utf-8")
    (root / "faq.jsonl").write_text(JSONL_ARTICLES, encoding="utf-8")
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")  # not a KB format: ignored, not an error
    return root


async def load(pool: asyncpg.Pool, paths: list[Path], embedder: Any, **options: Any) -> LoadReport:
    async with pool.acquire() as conn:
        return await load_paths(conn, paths, embedder=embedder, **options)


async def chunk_counts(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT d.source, count(c.id) AS n FROM kb_documents d LEFT JOIN kb_chunks c ON c.document_id = d.id "
        "GROUP BY d.source"
    )
    return {row["source"]: row["n"] for row in rows}


def expected_chunks(text: str, *, title: str, markdown: bool) -> int:
    chunker = chunk_markdown if markdown else chunk_plain_text
    return len(chunker(text, title=title, max_chars=CHUNK_MAX_CHARS, overlap_chars=CHUNK_OVERLAP_CHARS))


async def kb_state(pool: asyncpg.Pool) -> tuple[list[asyncpg.Record], list[asyncpg.Record], int]:
    """What a load that changes nothing leaves as it was: documents (with their hashes and update times), chunk
    ids, and the knowledge version."""
    documents = await pool.fetch("SELECT id, source, content_hash, updated_at FROM kb_documents ORDER BY source")
    chunks = await pool.fetch("SELECT id FROM kb_chunks ORDER BY id")
    return documents, chunks, await store.knowledge_version(pool)


async def test_every_format_loads_with_its_chunks_titles_and_categories(
    clean_db: asyncpg.Pool, memo: MemoEmbedder, tmp_path: Path
) -> None:
    root = write_kb(tmp_path / "helpdesk")

    report = await load(clean_db, [root], memo)

    assert report.errors == []
    assert report.files == 5
    assert report.ignored == 1
    html_title, html_text = html_to_markdownish(HTML)
    expected = {
        "helpdesk/billing/annual-refunds.md": expected_chunks(
            MARKDOWN, title="Refunds for annual plans", markdown=True
        ),
        "helpdesk/export.html": expected_chunks(html_text, title=html_title, markdown=True),
        "helpdesk/offline.txt": expected_chunks(TEXT, title="Mobile app offline mode", markdown=False),
        "helpdesk/faq.csv#faq-1": 1,
        "helpdesk/faq.csv#faq-2": 1,
        "helpdesk/faq.jsonl#j-1": 1,
        "helpdesk/faq.jsonl#j-2": 1,
    }
    assert await chunk_counts(clean_db) == expected
    assert expected["helpdesk/billing/annual-refunds.md"] == 3  # one per section
    assert report.documents == len(expected)
    assert report.chunks == report.embedded == sum(expected.values())

    documents = {
        row["source"]: row for row in await clean_db.fetch("SELECT source, title, category, metadata FROM kb_documents")
    }
    assert documents["helpdesk/billing/annual-refunds.md"]["category"] == "billing"  # from the folder
    assert documents["helpdesk/export.html"]["title"] == "Export your timesheets"
    assert documents["helpdesk/export.html"]["category"] is None
    assert documents["helpdesk/faq.csv#faq-1"]["title"] == "Which currencies can I invoice in?"
    assert documents["helpdesk/faq.csv#faq-1"]["category"] == "billing"
    assert documents["helpdesk/faq.jsonl#j-1"]["category"] == "technical"
    assert documents["helpdesk/faq.jsonl#j-2"]["title"] == "Where is the dark mode switch?"

    chunks = await clean_db.fetch(
        "SELECT c.title, c.content FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id "
        "WHERE d.source = 'helpdesk/billing/annual-refunds.md' ORDER BY c.seq"
    )
    assert [c["title"] for c in chunks] == [
        "Refunds for annual plans",
        "Refunds for annual plans › How to ask",
        "Refunds for annual plans › After you ask",
    ]
    html_chunks = await clean_db.fetch(
        "SELECT c.content FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id "
        "WHERE d.source = 'helpdesk/export.html'"
    )
    assert not any("alert" in c["content"] for c in html_chunks)
    record_article = await clean_db.fetchval(
        "SELECT c.content FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id "
        "WHERE d.source = 'helpdesk/faq.csv#faq-1'"
    )
    assert "euros" in record_article
    assert "24 currencies" in record_article


async def test_rerun_on_unchanged_input_changes_nothing_and_embeds_nothing(
    clean_db: asyncpg.Pool, memo: MemoEmbedder, tmp_path: Path
) -> None:
    root = write_kb(tmp_path / "helpdesk")
    first = await load(clean_db, [root], memo)
    before = await kb_state(clean_db)

    counting = CountingEmbedder(memo)
    again = await load(clean_db, [root], counting)

    assert first.documents == 7
    assert counting.calls == 0
    assert counting.texts == 0
    assert again.embedded == 0
    assert again.documents == 0
    assert again.chunks == 0
    assert again.unchanged == 7
    assert await kb_state(clean_db) == before


async def test_a_changed_file_replaces_its_chunks_only(
    clean_db: asyncpg.Pool, memo: MemoEmbedder, tmp_path: Path
) -> None:
    root = write_kb(tmp_path / "helpdesk")
    await load(clean_db, [root], memo)
    source = "helpdesk/billing/annual-refunds.md"
    document_id = await clean_db.fetchval("SELECT id FROM kb_documents WHERE source = $1", source)
    untouched = await clean_db.fetch(
        "SELECT c.id FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id WHERE d.source <> $1",
        source,
    )
    version = await store.knowledge_version(clean_db)

    changed = "# Refunds for annual plans\n\nAnnual plans are refunded pro rata within 14 days of renewal.\n"
    (root / "billing" / "annual-refunds.md").write_text(changed, encoding="utf-8")
    counting = CountingEmbedder(memo)
    report = await load(clean_db, [root], counting)

    assert report.documents == 1
    assert report.unchanged == 6
    assert counting.texts == 1  # only the changed file's one chunk
    rows = await clean_db.fetch("SELECT content FROM kb_chunks WHERE document_id = $1", document_id)
    assert [row["content"] for row in rows] == ["Annual plans are refunded pro rata within 14 days of renewal."]
    assert await clean_db.fetchval("SELECT id FROM kb_documents WHERE source = $1", source) == document_id
    assert (
        await clean_db.fetch(
            "SELECT c.id FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id WHERE d.source <> $1",
            source,
        )
        == untouched
    )
    assert await store.knowledge_version(clean_db) > version


async def test_the_same_files_loaded_into_an_empty_database_get_the_same_ids(
    clean_db: asyncpg.Pool, memo: MemoEmbedder, tmp_path: Path
) -> None:
    # Searches break ties in score by id: content-derived ids make two databases holding the same help centre and
    # history (two `deskpilot eval` runs, a rebuilt replica) rank and answer alike.
    root = write_kb(tmp_path / "helpdesk")
    history = tmp_path / "history.jsonl"
    history.write_text(JSONL_ARTICLES, encoding="utf-8")

    async def load_all() -> tuple[list[tuple[str, int, str]], list[tuple[str, str]]]:
        await load(clean_db, [root], memo)
        await load(clean_db, [history], memo, kind="resolution")
        async with clean_db.acquire() as conn:  # one row at a time, as resolved tickets are stored
            await store.upsert_resolution(
                conn,
                ticket_text="Can I pause a timer?",
                resolution="Yes: click Pause.",
                source="resolved_ticket",
                embedding=memo.encode(["Can I pause a timer?"])[0],
            )
        chunks = await clean_db.fetch(
            "SELECT d.source, c.seq, c.id FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id ORDER BY 1, 2"
        )
        resolutions = await clean_db.fetch("SELECT content_hash, id FROM past_resolutions ORDER BY 1")
        return [(r["source"], r["seq"], str(r["id"])) for r in chunks], [
            (r["content_hash"], str(r["id"])) for r in resolutions
        ]

    first = await load_all()
    await clean_db.execute("DELETE FROM kb_documents; DELETE FROM past_resolutions")
    again = await load_all()
    assert len(first[0]) >= 7 and len(first[1]) == 3
    assert again == first
    # A changed document's chunks are new ones.
    (root / "offline.txt").write_text(TEXT + "\nConflicts now keep both edits.\n", encoding="utf-8")
    await load(clean_db, [root], memo)
    changed = await clean_db.fetch(
        "SELECT c.id FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id WHERE d.source LIKE '%offline.txt'"
    )
    assert {str(r["id"]) for r in changed}.isdisjoint(
        chunk for source, _, chunk in first[0] if source.endswith("offline.txt")
    )


async def test_prune_removes_only_vanished_documents_under_the_given_roots(
    clean_db: asyncpg.Pool, memo: MemoEmbedder, tmp_path: Path
) -> None:
    root = write_kb(tmp_path / "helpdesk")
    other = tmp_path / "internal"
    other.mkdir()
    (other / "runbook.md").write_text("# Runbook\n\nRestart the sync worker when the queue stalls.\n")
    await load(clean_db, [root, other], memo)

    (root / "offline.txt").unlink()
    (root / "faq.jsonl").write_text(JSONL_ARTICLES.splitlines(keepends=True)[0], encoding="utf-8")  # j-2 removed
    without_prune = await load(clean_db, [root], memo)
    assert without_prune.pruned == 0
    assert "helpdesk/offline.txt" in await chunk_counts(clean_db)

    pruned = await load(clean_db, [root], memo, prune=True)

    sources = set(await chunk_counts(clean_db))
    assert pruned.pruned == 2
    assert "helpdesk/offline.txt" not in sources
    assert "helpdesk/faq.jsonl#j-2" not in sources
    assert {"helpdesk/faq.jsonl#j-1", "helpdesk/export.html", "internal/runbook.md"} <= sources
    assert (
        await clean_db.fetchval(
            "SELECT count(*) FROM kb_chunks c LEFT JOIN kb_documents d ON d.id = c.document_id WHERE d.id IS NULL"
        )
        == 0
    )


async def test_resolution_records_load_with_their_labels_and_skip_records_without_an_answer(
    clean_db: asyncpg.Pool, memo: MemoEmbedder, tmp_path: Path
) -> None:
    history = tmp_path / "history.csv"
    history.write_text(
        "id,subject,body,answer,category,priority,orig_intent,language,tags\n"
        "h1,Invoice in euros,Can I get invoices in EUR?,Yes: set the client currency to EUR.,Billing,"
        "medium,invoice_currency,en,billing;invoices\n"
        "h2,,My timer stopped by itself,,technical,high,timer_stops,en,\n"
        "h3,SSO,Okta login loops back to the sign-in page,Re-upload the IdP certificate.,technical,high,"
        "sso_loop,en,sso\n"
        "h4,Oops,Bad category here,An answer,sales,low,x,en,\n",
        encoding="utf-8",
    )
    counting = CountingEmbedder(memo)

    report = await load(clean_db, [history], counting, kind="resolution")

    assert report.resolutions == 2
    assert report.skipped == 1
    assert [str(error) for error in report.errors] == [
        f"{history}:5: category 'sales' is not one of billing, technical, onboarding, general"
    ]
    rows = await clean_db.fetch("SELECT * FROM past_resolutions ORDER BY source_ref")
    assert [row["source_ref"] for row in rows] == ["history.csv#h1", "history.csv#h3"]
    first = rows[0]
    assert first["ticket_text"] == "Invoice in euros\n\nCan I get invoices in EUR?"
    assert first["resolution"] == "Yes: set the client currency to EUR."
    assert (first["category"], first["priority"], first["intent"]) == (
        "billing",
        "normal",
        "invoice_currency",
    )
    assert first["tags"] == ["billing", "invoices"]
    assert first["source"] == "history"
    assert counting.texts == 2

    again = CountingEmbedder(memo)
    rerun = await load(clean_db, [history], again, kind="resolution")
    assert again.calls == 0
    assert rerun.resolutions == 0
    assert rerun.unchanged == 2
    assert await clean_db.fetchval("SELECT count(*) FROM past_resolutions") == 2


async def test_public_jsonl_data_sets_load_as_they_are(
    clean_db: asyncpg.Pool, memo: MemoEmbedder, tmp_path: Path
) -> None:
    # Rows in the public data sets' own columns, unchanged: bitext and banking77 rows from their samples, and
    # tickets written in tobi-bueck-tickets' columns (its licence does not let us ship its rows; tests/data/README.md).
    slices = []
    for name in ("bitext-customer-support", "tobi-bueck-format", "banking77"):
        lines = (SAMPLE_DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        target = tmp_path / f"{name}.jsonl"
        target.write_text("".join(lines[:20]), encoding="utf-8")
        slices.append(target)

    report = await load(clean_db, slices, memo, kind="resolution")

    assert report.errors == []
    assert report.resolutions == 32  # the 20 bitext rows and the 12 tobi-format tickets carry answers
    assert report.skipped == 20  # banking77 has no answers
    counts = dict(await clean_db.fetch("SELECT metadata->>'file', count(*) FROM past_resolutions GROUP BY 1"))
    assert counts == {"bitext-customer-support.jsonl": 20, "tobi-bueck-format.jsonl": 12}
    bitext = await clean_db.fetchrow(
        "SELECT * FROM past_resolutions WHERE source_ref LIKE 'bitext-customer-support.jsonl#%' LIMIT 1"
    )
    assert bitext["intent"]
    assert bitext["category"] in store.CATEGORIES
    assert bitext["metadata"]["orig_category"]
    tobi = await clean_db.fetchrow(
        "SELECT * FROM past_resolutions WHERE source_ref LIKE 'tobi-bueck-format.jsonl#%' LIMIT 1"
    )
    assert tobi["priority"] in store.PRIORITIES
    assert tobi["tags"]


def run_cli(database_url: str, *args: str) -> Result:
    runner = CliRunner()
    return runner.invoke(main, list(args), env={"DESKPILOT_DATABASE_URL": database_url}, catch_exceptions=False)


async def test_bad_files_are_reported_and_skipped_while_good_files_load(
    clean_db: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    root = tmp_path / "kb"
    root.mkdir()
    (root / "good.md").write_text("# Good article\n\nThis one loads.\n", encoding="utf-8")
    (root / "binary.md").write_bytes(b"# Title\n\x00\x01\x02 binary garbage")
    (root / "latin1.txt").write_bytes("Caf\xe9 cr\xe8me".encode("latin-1"))
    (root / "empty.md").write_text("  \n\n ", encoding="utf-8")
    (root / "huge.md").write_text("# Huge\n\n" + "word " * 1000, encoding="utf-8")
    (root / "gone.md").symlink_to(root / "missing-target.md")  # unreadable: a dangling link
    outside = tmp_path / "secret.md"
    outside.write_text("# Outside\n\nMust not be loaded.\n", encoding="utf-8")
    (root / "escape.md").symlink_to(outside)
    (root / "linked-dir").symlink_to(tmp_path, target_is_directory=True)

    result = await asyncio.to_thread(
        run_cli, database_url, "kb", "load", str(root), str(tmp_path / "nope.md"), "--max-bytes", "2000"
    )

    assert result.exit_code == 1, result.output
    stderr = result.stderr
    assert f"{root / 'binary.md'}: binary file (contains NUL bytes)" in stderr
    assert f"{root / 'latin1.txt'}: not UTF-8 text (undecodable byte at offset 3)" in stderr
    assert f"{root / 'empty.md'}: empty file" in stderr
    assert f"{root / 'huge.md'}: file is 5008 bytes, over the 2000-byte limit (--max-bytes)" in stderr
    assert f"{root / 'gone.md'}: cannot read: No such file or directory" in stderr
    assert f"{root / 'escape.md'}: symlink points outside {root}" in stderr
    assert f"{root / 'linked-dir'}: symlink points outside {root}" in stderr
    assert f"{tmp_path / 'nope.md'}: no such file or directory" in stderr
    assert "files: 1, documents: 1" in result.stdout
    assert "errors: 8" in result.stdout
    assert [row["source"] for row in await clean_db.fetch("SELECT source FROM kb_documents")] == ["kb/good.md"]


async def test_cli_search_prints_json_hits(clean_db: asyncpg.Pool, memo: MemoEmbedder, database_url: str) -> None:
    await load(clean_db, [EXAMPLES_DIR / "kb"], memo)

    result = await asyncio.to_thread(
        run_cli, database_url, "kb", "search", "I forgot my password and cannot log in", "-k", "3", "--json"
    )

    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert len(hits) == 3
    assert hits[0]["source"] == "kb/technical/reset-password.md"
    for hit in hits:
        assert set(hit) >= SEARCH_HIT_KEYS
        assert hit["kind"] == "kb_chunk"
        assert 0 < hit["similarity"] <= 1


async def test_demo_loads_once_into_an_empty_database(
    clean_db: asyncpg.Pool,
    memo: MemoEmbedder,
    database_url: str,
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from app import demo

    async def memo_loader(model: str | None = None) -> MemoEmbedder:
        return memo

    monkeypatch.setattr(demo, "load_embedder", memo_loader)
    settings = make_settings()

    await demo.load_demo_if_empty(database_url, settings)
    first = capsys.readouterr().err
    counts = await clean_db.fetchrow(
        "SELECT (SELECT count(*) FROM kb_documents) AS docs, (SELECT count(*) FROM past_resolutions) AS res, "
        "(SELECT count(*) FROM customers) AS customers, (SELECT count(*) FROM kb_chunks) AS chunks"
    )
    await demo.load_demo_if_empty(database_url, settings)
    second = capsys.readouterr().err

    example_articles = sum(1 for path in (EXAMPLES_DIR / "kb").rglob("*") if path.is_file())
    example_resolutions = sum(1 for line in (EXAMPLES_DIR / "resolutions.jsonl").open() if line.strip())
    assert counts["docs"] == example_articles
    assert counts["res"] == example_resolutions
    assert counts["customers"] > 0
    # The example events keep their spacing but end a day ago, inside every window the specialists read.
    newest_age_days = await clean_db.fetchval(
        "SELECT extract(epoch FROM now() - max(occurred_at)) / 86400 FROM customer_events"
    )
    assert 0.9 < newest_age_days < 1.1
    assert f"demo: loaded {example_articles} articles ({counts['chunks']} chunks)" in first
    assert "problems" not in first
    assert "demo data not loaded" in second
    assert await clean_db.fetchval("SELECT count(*) FROM kb_documents") == example_articles


async def test_front_matter_title_and_category_beat_the_folder(
    clean_db: asyncpg.Pool, memo: MemoEmbedder, tmp_path: Path
) -> None:
    folder = tmp_path / "kb" / "billing"
    folder.mkdir(parents=True)
    (folder / "sso.md").write_text(
        "---\ntitle: Single sign-on for finance teams\ncategory: Technical\n---\n\nFinance can sign in with SSO.\n",
        encoding="utf-8",
    )
    (folder / "bad.md").write_text("---\ncategory: sales\n---\n\nText.\n", encoding="utf-8")

    report = await load(clean_db, [tmp_path / "kb"], memo)

    assert [str(error) for error in report.errors] == [
        f"{folder / 'bad.md'}: category 'sales' is not one of billing, technical, onboarding, general"
    ]
    row = await clean_db.fetchrow("SELECT title, category FROM kb_documents WHERE source = 'kb/billing/sso.md'")
    assert (row["title"], row["category"]) == ("Single sign-on for finance teams", "technical")
    content = await clean_db.fetchval("SELECT content FROM kb_chunks")
    assert content == "Finance can sign in with SSO."


class RecordingProgress:
    def __init__(self) -> None:
        self.total: int | None = None
        self.advanced = 0

    def start(self, total_files: int) -> None:
        self.total = total_files

    def advance(self, files: int, description: str) -> None:
        self.advanced += files


async def test_many_small_batches_store_the_same_rows_and_report_every_file(
    clean_db: asyncpg.Pool, memo: MemoEmbedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from knowledge import loader

    # Batches of two texts: the model encodes one batch while the loader stores the one before.
    monkeypatch.setattr(loader, "EMBED_BATCH", 2)
    root = write_kb(tmp_path / "helpdesk")
    (root / "broken.md").write_bytes(b"\x00")
    progress = RecordingProgress()
    counting = CountingEmbedder(memo)

    report = await load(clean_db, [root], counting, progress=progress)

    assert [str(error) for error in report.errors] == [f"{root / 'broken.md'}: binary file (contains NUL bytes)"]
    assert counting.calls > 3
    assert report.documents == 7
    assert report.embedded == report.chunks == await clean_db.fetchval("SELECT count(*) FROM kb_chunks")
    assert progress.total == 6
    assert progress.advanced == 6
    assert min((await chunk_counts(clean_db)).values()) >= 1  # every document kept its chunks


def hostile_records(root: Path) -> tuple[list[str], list[str]]:
    """Malformed JSONL and CSV beside a good article: the expected error and warning lines, in report order."""
    root.mkdir()
    (root / "good.md").write_text("# Good article\n\nThis one loads.\n", encoding="utf-8")
    lines = [
        json.dumps({"id": "ok-1", "subject": "Dark mode", "body": "Where is it?", "answer": "Profile → Theme."}),
        '{"id": "broken", "body": "no closing brace"',
        '["a", "list", "not an object"]',
        '"just a string"',
        json.dumps({"id": "nothing", "category": "billing"}),  # no text at all: skipped, with a warning
        json.dumps({"id": "list-body", "subject": "S", "body": ["a", "b"], "answer": "x"}),
        json.dumps({"id": "object-answer", "body": "b", "answer": {"text": "x"}}),
        json.dumps({"id": "bool-subject", "subject": True, "body": "b"}),
        json.dumps({"id": "dict-tags", "body": "b", "tags": {"a": 1}}),
        json.dumps({"id": "number-category", "body": "b", "answer": "a", "category": 5}),
        '{"id": "nan", "body": "b", "answer": NaN}',
        '{"id": "huge", "body": "b", "score": 1e999}',
        '{"id": "nul", "body": "before\\u0000after"}',
        '{"id": "surrogate", "body": "lone \\ud800 half"}',
        '{"id": "nul-key", "body": "b", "x\\u0000": "y"}',
        '{"a": ' * 5000 + "1" + "}" * 5000,
        # A raw U+2028 inside a string is valid JSON and does not end the line.
        json.dumps(
            {"id": "ok-2", "body": "Line\u2028separator inside", "answer": "Still one record."}, ensure_ascii=False
        ),
    ]
    (root / "records.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "rows.csv").write_text(
        "id,subject,body,answer\n"
        "r1,Invoices,Where are my invoices?,Settings → Billing.\n"
        "r2,Short row\n"
        "r3,Long,row,has,two,extra\n"
        "r4,Timer,My timer stops,Update the app.\n",
        encoding="utf-8",
    )
    (root / "unterminated.csv").write_text(
        'id,subject,body,answer\nu1,Fine,"quoted, fine",Yes\nu2,Broken,"never closed,answer\nu3,Lost,body,answer\n',
        encoding="utf-8",
    )
    (root / "nul.csv").write_bytes(b"id,body\nn1,before\x00after\n")
    jsonl_file, rows, unterminated = root / "records.jsonl", root / "rows.csv", root / "unterminated.csv"
    errors = [
        f"{root / 'nul.csv'}: binary file (contains NUL bytes)",
        f"{jsonl_file}:2: not JSON: Expecting ',' delimiter",
        f"{jsonl_file}:3: a record must be a JSON object",
        f"{jsonl_file}:4: a record must be a JSON object",
        f"{jsonl_file}:6: field 'body' must be text, a number or null, not a list",
        f"{jsonl_file}:7: field 'answer' must be text, a number or null, not an object",
        f"{jsonl_file}:8: field 'subject' must be text, a number or null, not true/false",
        f"{jsonl_file}:9: field 'tags' must be a list or comma-separated text, not an object",
        f"{jsonl_file}:10: category 5 is not one of billing, technical, onboarding, general",
        f"{jsonl_file}:11: not JSON: NaN is not a JSON number",
        f"{jsonl_file}:12: not JSON: 1e999 is out of range",
        f"{jsonl_file}:13: contains a NUL character or an unpaired surrogate (\\u0000, \\ud800-\\udfff)",
        f"{jsonl_file}:14: contains a NUL character or an unpaired surrogate (\\u0000, \\ud800-\\udfff)",
        f"{jsonl_file}:15: contains a NUL character or an unpaired surrogate (\\u0000, \\ud800-\\udfff)",
        f"{jsonl_file}:16: not JSON: nested too deeply",
        f"{rows}:3: 2 fields, the header has 4",
        f"{rows}:4: 6 fields, the header has 4",
        f"{unterminated}:3: not valid CSV: unexpected end of data in the record starting here (read to line 4); "
        "the rest of the file was not read",
    ]
    warnings = [f"{jsonl_file}: 1 record(s) skipped without text (line 5)"]
    return errors, warnings


HOSTILE_SOURCES = [
    "kb/good.md",
    "kb/records.jsonl#ok-1",
    "kb/records.jsonl#ok-2",
    "kb/rows.csv#r1",
    "kb/rows.csv#r4",
    "kb/unterminated.csv#u1",
]


async def test_malformed_records_are_reported_by_file_and_line_while_good_ones_load(
    clean_db: asyncpg.Pool, database_url: str, memo: MemoEmbedder, tmp_path: Path
) -> None:
    root = tmp_path / "kb"
    errors, warnings = hostile_records(root)

    result = await asyncio.to_thread(run_cli, database_url, "kb", "load", str(root))

    # The documented contract (`deskpilot kb load --help`): errors are reported, the rest loads, exit 1.
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    reported = [line for line in result.stderr.splitlines() if line.startswith(("error: ", "warning: "))]
    assert sorted(reported) == sorted([f"error: {e}" for e in errors] + [f"warning: {w}" for w in warnings])
    assert "files: 4, documents: 6" in result.stdout
    assert f"errors: {len(errors)}" in result.stdout
    assert sorted(await chunk_counts(clean_db)) == HOSTILE_SOURCES
    u1 = await clean_db.fetchval(
        "SELECT c.content FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id "
        "WHERE d.source = 'kb/unterminated.csv#u1'"
    )
    assert "quoted, fine" in u1
    ok2 = await clean_db.fetchval(
        "SELECT c.content FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id "
        "WHERE d.source = 'kb/records.jsonl#ok-2'"
    )
    assert "Still one record." in ok2

    # Again with the bad files still there (and --prune): the same report, nothing changed, nothing embedded.
    before = await kb_state(clean_db)
    counting = CountingEmbedder(memo)
    again = await load(clean_db, [root], counting, prune=True)
    assert [str(e) for e in again.errors] == errors
    assert [str(w) for w in again.warnings] == warnings
    assert (counting.calls, again.embedded, again.documents, again.pruned) == (0, 0, 0, 0)
    assert again.unchanged == len(HOSTILE_SOURCES)
    assert await kb_state(clean_db) == before


async def test_malformed_records_loaded_as_resolutions_are_reported_and_written_nowhere(
    clean_db: asyncpg.Pool, memo: MemoEmbedder, tmp_path: Path
) -> None:
    root = tmp_path / "kb"
    errors, _ = hostile_records(root)
    jsonl_file = root / "records.jsonl"
    # A resolution needs ticket text and an answer: the same file skips more records, the errors are the same.
    expected = [e for e in errors if e.startswith(f"{jsonl_file}:")]

    report = await load(clean_db, [jsonl_file], memo, kind="resolution")

    assert [str(e) for e in report.errors] == expected
    assert [str(w) for w in report.warnings] == [
        f"{jsonl_file}: 1 record(s) skipped without ticket text (subject or body) and an answer (line 5)"
    ]
    refs = [row["source_ref"] for row in await clean_db.fetch("SELECT source_ref FROM past_resolutions ORDER BY 1")]
    assert refs == ["records.jsonl#ok-1", "records.jsonl#ok-2"]

    counting = CountingEmbedder(memo)
    again = await load(clean_db, [jsonl_file], counting, kind="resolution")
    assert [str(e) for e in again.errors] == expected
    assert (counting.calls, again.embedded, again.resolutions, again.unchanged) == (0, 0, 0, 2)
    assert await clean_db.fetchval("SELECT count(*) FROM past_resolutions") == 2


async def test_a_csv_cut_short_by_a_parse_error_keeps_what_it_loaded_before_under_prune(
    clean_db: asyncpg.Pool, memo: MemoEmbedder, tmp_path: Path
) -> None:
    root = tmp_path / "kb"
    root.mkdir()
    faq = root / "faq.csv"
    faq.write_text(
        "id,subject,body,answer\n"
        "f1,One,First question,First answer.\n"
        "f2,Two,Second question,Second answer.\n"
        "f3,Three,Third question,Third answer.\n",
        encoding="utf-8",
    )
    await load(clean_db, [root], memo)
    assert sorted(await chunk_counts(clean_db)) == ["kb/faq.csv#f1", "kb/faq.csv#f2", "kb/faq.csv#f3"]

    # A stray quote in f2 hides f2 and f3 from the parser: they are not gone, so --prune must not delete them.
    faq.write_text(
        "id,subject,body,answer\n"
        "f1,One,First question,First answer.\n"
        'f2,Two,"Second question,Second answer.\n'
        "f3,Three,Third question,Third answer.\n",
        encoding="utf-8",
    )
    report = await load(clean_db, [root], memo, prune=True)

    assert [str(e) for e in report.errors] == [
        f"{faq}:3: not valid CSV: unexpected end of data in the record starting here (read to line 4); "
        "the rest of the file was not read"
    ]
    assert report.pruned == 0
    assert sorted(await chunk_counts(clean_db)) == ["kb/faq.csv#f1", "kb/faq.csv#f2", "kb/faq.csv#f3"]
