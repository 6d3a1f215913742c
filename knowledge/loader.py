"""`deskpilot kb load`: files and records into the knowledge base, upserted by content hash.

Unchanged input is recognised before anything is embedded; one bad file is reported and skipped, never fatal.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from ingest.normalize import strip_invisible
from ingest.schemas import strict_json_loads
from knowledge import store
from knowledge.chunking import Chunk, chunk_markdown, chunk_plain_text, extract_title, html_to_markdownish
from knowledge.embedder import Embedder, check_dimension, embed

LoadKind = Literal["article", "resolution"]
FORMATS: dict[str, str] = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".txt": "text",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
RECORD_FORMATS = frozenset({"csv", "jsonl"})
DEFAULT_MAX_BYTES = 5 * 1024 * 1024
# MiniLM reads at most 256 word pieces (about 1,000 characters of English): longer chunks lose their tail.
CHUNK_MAX_CHARS = 1000
CHUNK_OVERLAP_CHARS = 120
# Part of every article hash: changing how articles are chunked or embedded re-embeds them on the next load.
ARTICLE_FORMAT_VERSION = "2"
# Texts per encode call: sentence-transformers sorts a call's texts by length, so bigger calls pad less. While
# the model encodes one batch, the loader reads the next files and stores the previous batch.
EMBED_BATCH = 256
RESOLUTION_FIELDS = frozenset(
    {
        "id",
        "subject",
        "body",
        "answer",
        "resolution",
        "category",
        "priority",
        "intent",
        "orig_intent",
        "language",
        "tags",
    }
)
PRIORITY_ALIASES = {"medium": "normal", "critical": "urgent"}
# Record fields read as text: a string, a number or null. Anything else (a list, an object, true/false) is a
# mistake in the export, reported rather than read as a missing field. Checked in a fixed order, so a record with
# several such fields is always reported for the same one.
TEXT_FIELDS = tuple(sorted((RESOLUTION_FIELDS - {"tags"}) | {"title", "text"}))
# What PostgreSQL text and jsonb cannot hold; JSON can spell both (\u0000, \ud800).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
CSV_ERROR = "not valid CSV"


class LoadProgress(Protocol):
    """Where the loader reports progress (the CLI draws a bar from it)."""

    def start(self, total_files: int) -> None: ...

    def advance(self, files: int, description: str) -> None: ...


@dataclass(frozen=True, slots=True)
class LoadError:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class LoadReport:
    files: int = 0
    documents: int = 0
    chunks: int = 0
    resolutions: int = 0
    unchanged: int = 0
    skipped: int = 0
    pruned: int = 0
    ignored: int = 0
    embedded: int = 0
    errors: list[LoadError] = field(default_factory=list)
    # Not errors: records skipped because they have nothing to load (the contract of `skipped`), one per file.
    warnings: list[LoadError] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        return (
            f"files: {self.files}, documents: {self.documents} (unchanged: {self.unchanged}), "
            f"chunks: {self.chunks}, resolutions: {self.resolutions}, skipped: {self.skipped}, "
            f"pruned: {self.pruned}, errors: {len(self.errors)}, embedded: {self.embedded}, "
            f"{self.seconds:.1f} s"
        )


class BadFile(Exception):
    """A file that cannot be loaded; the message is the reason shown to the user."""


# --- finding files ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceFile:
    path: Path
    source: str
    format: str
    root: Path


@dataclass(frozen=True, slots=True)
class Root:
    """A path given on the command line; `prefix` is what its documents' source ids start with."""

    path: Path
    prefix: str
    is_dir: bool

    def owns(self, source: str) -> bool:
        if self.is_dir:
            return source.startswith(self.prefix)
        return source == self.prefix or source.startswith(self.prefix + "#")


def discover(paths: Sequence[Path], kind: LoadKind) -> tuple[list[SourceFile], list[Root], list[LoadError], int]:
    """Files to load under `paths`, the roots, the paths that cannot be loaded, and how many were ignored.

    A folder's source ids are `<folder name>/<path inside it>`: moving the checkout changes nothing, and two
    folders with different names cannot overwrite each other's documents.
    """
    files: list[SourceFile] = []
    roots: list[Root] = []
    errors: list[LoadError] = []
    ignored = 0
    for given in paths:
        if given.is_dir():
            root_real = given.resolve()
            root = Root(path=given, prefix=f"{root_real.name or 'root'}/", is_dir=True)
            roots.append(root)
            found, bad, skipped = _walk(given, root_real, root.prefix, kind)
            files.extend(found)
            errors.extend(bad)
            ignored += skipped
        elif given.exists() or given.is_symlink():
            fmt = FORMATS.get(given.suffix.lower())
            if fmt is None:
                errors.append(LoadError(str(given), f"unsupported file type; expected one of {_suffixes()}"))
            elif kind == "resolution" and fmt not in RECORD_FORMATS:
                errors.append(LoadError(str(given), "only CSV and JSONL records can be loaded as resolutions"))
            else:
                roots.append(Root(path=given, prefix=given.name, is_dir=False))
                files.append(SourceFile(path=given, source=given.name, format=fmt, root=given))
        else:
            errors.append(LoadError(str(given), "no such file or directory"))
    return files, roots, errors, ignored


def _walk(top: Path, root_real: Path, prefix: str, kind: LoadKind) -> tuple[list[SourceFile], list[LoadError], int]:
    files: list[SourceFile] = []
    errors: list[LoadError] = []
    ignored = 0
    for directory, dirnames, filenames in os.walk(top, followlinks=False):
        here = Path(directory)
        # Hidden folders (.git, .obsidian) are tooling, not articles.
        kept: list[str] = []
        for name in sorted(dirnames):
            if name.startswith("."):
                continue
            candidate = here / name
            if candidate.is_symlink():
                # Not followed: a link inside the root is reached at its real place, one outside is refused.
                if not _inside(candidate, root_real):
                    errors.append(LoadError(str(candidate), f"symlink points outside {top}"))
                continue
            kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            path = here / name
            fmt = FORMATS.get(path.suffix.lower())
            if name.startswith(".") or fmt is None or (kind == "resolution" and fmt not in RECORD_FORMATS):
                ignored += 1
                continue
            if path.is_symlink() and not _inside(path, root_real):
                errors.append(LoadError(str(path), f"symlink points outside {top}"))
                continue
            relative = path.relative_to(top).as_posix()
            files.append(SourceFile(path=path, source=prefix + relative, format=fmt, root=top))
    return files, errors, ignored


def _inside(path: Path, root_real: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root_real)
    except (OSError, RuntimeError):  # a symlink loop
        return False


def _suffixes() -> str:
    return ", ".join(sorted(FORMATS))


def read_text_file(path: Path, max_bytes: int) -> str:
    """The file's text, or `BadFile` saying why it cannot be used."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise BadFile("not a regular file")
        if size > max_bytes:
            raise BadFile(f"file is {size} bytes, over the {max_bytes}-byte limit (--max-bytes)")
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise BadFile(f"cannot read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise BadFile(f"file is over the {max_bytes}-byte limit (--max-bytes)")
    if b"\x00" in data:
        raise BadFile("binary file (contains NUL bytes)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadFile(f"not UTF-8 text (undecodable byte at offset {exc.start})") from None
    if not text.strip():
        raise BadFile("empty file")
    return text


# --- turning files into articles and resolutions ------------------------------------------------------------


@dataclass
class PendingArticle:
    source: str
    title: str
    category: str | None
    metadata: dict[str, Any]
    content_hash: str
    chunks: list[store.ChunkRow]
    file: str

    @property
    def embed_texts(self) -> list[str]:
        return [f"{chunk.title}\n\n{chunk.content}" for chunk in self.chunks]


@dataclass
class PendingResolution:
    row: dict[str, Any]
    file: str

    @property
    def content_hash(self) -> str:
        return store.resolution_hash(self.row["ticket_text"], self.row["resolution"])


class RecordError(Exception):
    """A record of a CSV/JSONL file that cannot be used; reported as `file:line: reason`."""


# What a reader of the article never sees must not reach the model either: comments and hidden elements are a
# classic way to plant instructions in a knowledge base.
_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.DOTALL)
_HIDDEN_ELEMENT = re.compile(
    r"<(?P<tag>[a-zA-Z][\w-]*)\b[^>]*?(?:display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0|"
    r"opacity\s*:\s*0(?![.\d]*[1-9])|\bhidden\b|aria-hidden\s*=\s*[\"']?true)[^>]*>.*?</(?P=tag)\s*>",
    re.DOTALL | re.IGNORECASE,
)


def visible_text_only(text: str) -> str:
    """The article as a person reads it: no HTML comments, hidden elements or invisible characters."""
    text = _HTML_COMMENT.sub("", text)
    text = _HIDDEN_ELEMENT.sub("", text)
    return strip_invisible(text)[0]


def article_from_text(
    source: str,
    text: str,
    fmt: str,
    *,
    category: str | None,
    fallback_title: str,
    metadata: dict[str, Any],
    default_category: str | None = None,
) -> PendingArticle:
    """An article file as a document with its chunks.

    The category is `category` when given (--category), else the Markdown front matter's, else
    `default_category` (the folder's).
    """
    meta_fields: dict[str, str] = {}
    text = visible_text_only(text)
    if fmt == "markdown":
        meta_fields, text = split_front_matter(text)
        title = meta_fields.get("title") or extract_title(text, fallback=fallback_title)
        chunks = chunk_markdown(text, title=title, max_chars=CHUNK_MAX_CHARS, overlap_chars=CHUNK_OVERLAP_CHARS)
    elif fmt == "html":
        html_title, text = html_to_markdownish(text)
        title = html_title or fallback_title
        chunks = chunk_markdown(text, title=title, max_chars=CHUNK_MAX_CHARS, overlap_chars=CHUNK_OVERLAP_CHARS)
    else:
        title = extract_title(text, fallback=fallback_title)
        chunks = chunk_plain_text(text, title=title, max_chars=CHUNK_MAX_CHARS, overlap_chars=CHUNK_OVERLAP_CHARS)
    if not chunks:
        raise BadFile("no text to index")
    if category is None:
        category = normalize_category(meta_fields.get("category")) or default_category
    digest = store.content_hash("article", ARTICLE_FORMAT_VERSION, source, title, category, text)
    return PendingArticle(
        source=source,
        title=title,
        category=category,
        metadata={**metadata, "format": fmt},
        content_hash=digest,
        chunks=[_chunk_row(chunk) for chunk in chunks],
        file=source,
    )


def _chunk_row(chunk: Chunk) -> store.ChunkRow:
    # The chunk title carries the document title and section path: a passage reads (and embeds) in context.
    heading = chunk.heading
    if not heading:
        title = chunk.title
    elif heading.startswith(chunk.title):
        title = heading
    else:
        title = f"{chunk.title} › {heading}"
    return store.ChunkRow(seq=chunk.seq, title=title, content=chunk.text)


def split_front_matter(text: str) -> tuple[dict[str, str], str]:
    """`key: value` lines between leading `---` fences (the common Markdown front matter), and the rest."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}, text
    for end in range(1, min(len(lines), 100)):
        if lines[end].strip() in {"---", "..."}:
            fields: dict[str, str] = {}
            for line in lines[1:end]:
                key, sep, value = line.partition(":")
                if sep and key.strip():
                    fields[key.strip().lower()] = value.strip().strip("\"'")
            return fields, "\n".join(lines[end + 1 :])
    return {}, text


def normalize_category(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    category = str(value).strip().lower()
    if category not in store.CATEGORIES:
        raise RecordError(f"category {value!r} is not one of {', '.join(store.CATEGORIES)}")
    return category


def normalize_priority(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    priority = str(value).strip().lower()
    priority = PRIORITY_ALIASES.get(priority, priority)
    if priority not in store.PRIORITIES:
        raise RecordError(f"priority {value!r} is not one of {', '.join(store.PRIORITIES)}")
    return priority


def iter_records(text: str, fmt: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, record) for each record, or (line number, reason) for one that cannot be parsed.

    A CSV error other than a short or long row ends the file (the parser cannot tell where the next record
    starts); its reason starts with `CSV_ERROR`.
    """
    if fmt == "csv":
        # strict: an unterminated quote is an error, not a field that swallows the rest of the file.
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        try:
            for row in reader:
                width = len(reader.fieldnames or ())
                if None in row:  # restkey: more fields than the header
                    yield reader.line_num, f"{width + len(row[None])} fields, the header has {width}"
                elif any(value is None for value in row.values()):  # restval: fewer fields than the header
                    count = sum(1 for value in row.values() if value is not None)
                    yield reader.line_num, f"{count} fields, the header has {width}"
                else:
                    yield reader.line_num, {k.strip().lower(): v for k, v in row.items()}
        except csv.Error as exc:
            # DictReader.line_num is the last good record's end: the bad one starts on the next line.
            start, end = reader.line_num + 1, reader.reader.line_num
            where = f" in the record starting here (read to line {end})" if end > start else ""
            yield start, f"{CSV_ERROR}: {exc}{where}; the rest of the file was not read"
        return
    # Lines end at \n only: str.splitlines would also split inside a JSON string at U+2028, \x1c and the like.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = strict_json_loads(line)
        except json.JSONDecodeError as exc:
            yield number, f"not JSON: {exc.msg}"
            continue
        except ValueError as exc:  # NaN, Infinity, 1e999, an integer of thousands of digits
            yield number, f"not JSON: {exc}"
            continue
        except RecursionError:
            yield number, "not JSON: nested too deeply"
            continue
        if not isinstance(value, dict):
            yield number, "a record must be a JSON object"
        elif _unstorable(value):
            yield number, "contains a NUL character or an unpaired surrogate (\\u0000, \\ud800-\\udfff)"
        else:
            yield number, value


def _unstorable(value: Any) -> bool:
    if isinstance(value, str):
        return _UNSTORABLE.search(value) is not None
    if isinstance(value, dict):
        return any(_unstorable(k) or _unstorable(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_unstorable(item) for item in value)
    return False


def check_field_types(record: dict[str, Any]) -> None:
    """`RecordError` naming the first field of a type the loader cannot read."""
    for name in TEXT_FIELDS:
        value = record.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, str | int | float)):
            raise RecordError(f"field {name!r} must be text, a number or null, not {_json_type(value)}")
    tags = record.get("tags")
    if tags is not None and not isinstance(tags, str | list):
        raise RecordError(f"field 'tags' must be a list or comma-separated text, not {_json_type(tags)}")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _text(record: dict[str, Any], *names: str) -> str | None:
    for name in names:
        value = record.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    return None


def _tags(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(tag).strip() for tag in value if tag is not None and str(tag).strip()]
    if isinstance(value, str):
        return [tag.strip() for tag in value.replace(";", ",").split(",") if tag.strip()]
    return []


def resolution_from_record(
    record: dict[str, Any], *, file_source: str, line: int, category: str | None
) -> dict[str, Any] | None:
    """The resolution row of a record, or None without ticket text or answer (skipped, not an error)."""
    subject, body = _text(record, "subject"), _text(record, "body")
    answer = _text(record, "answer", "resolution")
    ticket_text = f"{subject}\n\n{body}" if subject and body else subject or body
    if not ticket_text or not answer:
        return None
    record_id = _text(record, "id")
    extras = {
        key: value
        for key, value in record.items()
        if key not in RESOLUTION_FIELDS and isinstance(value, str | int | float | bool) and value != ""
    }
    return {
        "ticket_text": ticket_text,
        "resolution": answer,
        "category": category or normalize_category(record.get("category")),
        "priority": normalize_priority(record.get("priority")),
        "intent": _text(record, "intent", "orig_intent"),
        "tags": _tags(record.get("tags")),
        "language": _text(record, "language"),
        "source": "history",
        "source_ref": f"{file_source}#{record_id}" if record_id else f"{file_source}#L{line}",
        "metadata": {**extras, "file": file_source, "line": line},
    }


def article_from_record(
    record: dict[str, Any], *, file_source: str, line: int, category: str | None
) -> PendingArticle | None:
    """A record as a one-document article: title = subject, text = body and answer; None without text."""
    subject, body = _text(record, "subject", "title"), _text(record, "body", "text")
    answer = _text(record, "answer", "resolution")
    text = "\n\n".join(part for part in (body, answer) if part)
    if not text:
        return None
    record_id = _text(record, "id") or f"L{line}"
    source = f"{file_source}#{record_id}"
    title = subject or extract_title(text, fallback=record_id)
    category = category or normalize_category(record.get("category"))
    chunks = chunk_plain_text(text, title=title, max_chars=CHUNK_MAX_CHARS, overlap_chars=CHUNK_OVERLAP_CHARS)
    if not chunks:
        return None
    return PendingArticle(
        source=source,
        title=title,
        category=category,
        metadata={"file": file_source, "line": line, "record_id": record_id, "format": "record"},
        content_hash=store.content_hash("article", ARTICLE_FORMAT_VERSION, source, title, category, text),
        chunks=[_chunk_row(chunk) for chunk in chunks],
        file=file_source,
    )


def _category_from_folder(file: SourceFile) -> str | None:
    """`kb/billing/refunds.md` is a billing article unless told otherwise."""
    for part in reversed(Path(file.source).parent.parts):
        if part.lower() in store.CATEGORIES:
            return part.lower()
    return None


def title_from_file_name(path: Path) -> str:
    return path.stem.replace("-", " ").replace("_", " ").strip().capitalize() or path.name


# --- the load -----------------------------------------------------------------------------------------------


class _Batch:
    """Work waiting for its embeddings; sent to the model once it holds `EMBED_BATCH` texts."""

    def __init__(self) -> None:
        self.articles: list[PendingArticle] = []
        self.resolutions: list[PendingResolution] = []
        self.texts = 0
        self.files: list[str] = []

    def embed_texts(self) -> list[str]:
        texts = [text for article in self.articles for text in article.embed_texts]
        return texts + [resolution.row["ticket_text"] for resolution in self.resolutions]


class _Loader:
    def __init__(
        self,
        conn: Any,
        embedder: Embedder,
        kind: LoadKind,
        category: str | None,
        max_bytes: int,
        progress: LoadProgress | None,
        report: LoadReport,
    ) -> None:
        self.conn = conn
        self.embedder = embedder
        self.kind = kind
        self.category = category
        self.max_bytes = max_bytes
        self.progress = progress
        self.report = report
        self.batch = _Batch()
        # The batch the model is encoding now (in a worker thread) and the task that returns its vectors.
        self.encoding: tuple[_Batch, asyncio.Task[np.ndarray]] | None = None
        # Every source id met in this run, with where it came from: duplicates are errors, prune keeps these.
        self.seen: dict[str, str] = {}
        self.failed_sources: set[str] = set()
        self.pending_hashes: set[str] = set()

    async def load_file(self, file: SourceFile) -> None:
        try:
            text = read_text_file(file.path, self.max_bytes)
            if file.format in RECORD_FORMATS:
                await self._load_records(file, text)
            else:
                await self._load_article_file(file, text)
        except BadFile as exc:
            self.report.errors.append(LoadError(str(file.path), str(exc)))
            self.failed_sources.add(file.source)
            self._advance([file.source])
            return
        self.report.files += 1
        if self.batch.texts == 0 and self.encoding is None:
            self._advance([file.source])  # nothing of it (or before it) waits for the model: done now
        else:
            self.batch.files.append(file.source)
        if self.batch.texts >= EMBED_BATCH:
            await self.submit()

    async def _load_article_file(self, file: SourceFile, text: str) -> None:
        try:
            article = article_from_text(
                file.source,
                text,
                file.format,
                category=self.category,
                default_category=_category_from_folder(file),
                fallback_title=title_from_file_name(file.path),
                metadata={"root": file.root.name, "path": file.source},
            )
        except RecordError as exc:  # a bad category in the front matter
            raise BadFile(str(exc)) from None
        if not self._claim(file.source, str(file.path)):
            raise BadFile(f"source id {file.source!r} was already loaded from {self.seen[file.source]} in this run")
        stored = await store.document_hashes(self.conn, [article.source])
        if stored.get(article.source) == article.content_hash:
            self.report.unchanged += 1
            return
        self._add_article(article)

    async def _load_records(self, file: SourceFile, text: str) -> None:
        articles: list[PendingArticle] = []
        resolutions: list[PendingResolution] = []
        skipped: list[int] = []
        for line, record in iter_records(text, file.format):
            where = f"{file.path}:{line}"
            if isinstance(record, str):
                self.report.errors.append(LoadError(where, record))
                if record.startswith(CSV_ERROR):
                    # The rest of the file was not read: --prune must keep what it loaded before.
                    self.failed_sources.add(file.source)
                continue
            try:
                check_field_types(record)
                if self.kind == "resolution":
                    row = resolution_from_record(record, file_source=file.source, line=line, category=self.category)
                    if row is None:
                        skipped.append(line)
                    else:
                        resolutions.append(PendingResolution(row=row, file=file.source))
                    continue
                article = article_from_record(record, file_source=file.source, line=line, category=self.category)
            except (RecordError, BadFile) as exc:
                self.report.errors.append(LoadError(where, str(exc)))
                continue
            if article is None:
                skipped.append(line)
            elif not self._claim(article.source, where):
                self.report.errors.append(
                    LoadError(
                        where,
                        f"duplicate id: {article.source!r} already came from {self.seen[article.source]}",
                    )
                )
            else:
                articles.append(article)
        if skipped:
            self.report.skipped += len(skipped)
            needs = "ticket text (subject or body) and an answer" if self.kind == "resolution" else "text"
            lines = ", ".join(str(n) for n in skipped[:5]) + (", …" if len(skipped) > 5 else "")
            self.report.warnings.append(
                LoadError(str(file.path), f"{len(skipped)} record(s) skipped without {needs} (line {lines})")
            )
        if articles:
            stored = await store.document_hashes(self.conn, [a.source for a in articles])
            for article in articles:
                if stored.get(article.source) == article.content_hash:
                    self.report.unchanged += 1
                else:
                    self._add_article(article)
        if resolutions:
            stored_hashes = await store.existing_resolution_hashes(self.conn, [r.content_hash for r in resolutions])
            for resolution in resolutions:
                digest = resolution.content_hash
                if digest in stored_hashes or digest in self.pending_hashes:
                    self.report.unchanged += 1
                    continue
                self.pending_hashes.add(digest)
                self.batch.resolutions.append(resolution)
                self.batch.texts += 1

    def _claim(self, source: str, where: str) -> bool:
        if source in self.seen:
            return False
        self.seen[source] = where
        return True

    def _add_article(self, article: PendingArticle) -> None:
        self.batch.articles.append(article)
        self.batch.texts += len(article.chunks)

    async def submit(self) -> None:
        """Start encoding the current batch, then store the previous one while the model works."""
        batch, self.batch = self.batch, _Batch()
        task = asyncio.ensure_future(embed(self.embedder, batch.embed_texts()))
        previous, self.encoding = self.encoding, (batch, task)
        if previous is not None:
            await self._store(*previous)

    async def drain(self) -> None:
        """Encode and store whatever is still waiting."""
        if self.batch.texts or self.batch.files:
            await self.submit()
        if self.encoding is not None:
            previous, self.encoding = self.encoding, None
            await self._store(*previous)

    def cancel(self) -> None:
        if self.encoding is not None:
            self.encoding[1].cancel()

    async def _store(self, batch: _Batch, encoding: asyncio.Task[np.ndarray]) -> None:
        vectors = await encoding
        self.report.embedded += len(vectors)
        offset = 0
        async with self.conn.transaction():
            for article in batch.articles:
                count = len(article.chunks)
                await store.upsert_document(
                    self.conn,
                    source=article.source,
                    title=article.title,
                    content_hash=article.content_hash,
                    category=article.category,
                    metadata=article.metadata,
                    chunks=article.chunks,
                    embeddings=vectors[offset : offset + count],
                )
                offset += count
                self.report.documents += 1
                self.report.chunks += count
            if batch.resolutions:
                rows = [
                    store.ResolutionRow(embedding=vector, **resolution.row)
                    for resolution, vector in zip(batch.resolutions, vectors[offset:], strict=True)
                ]
                added = await store.insert_resolutions(self.conn, rows)
                self.report.resolutions += added
                # Stored meanwhile by someone else: already there, so unchanged rather than lost.
                self.report.unchanged += len(rows) - added
        self._advance(batch.files)

    def _advance(self, files: list[str]) -> None:
        if self.progress is not None and files:
            self.progress.advance(
                len(files),
                f"{self.report.chunks} chunks, {self.report.resolutions} resolutions",
            )

    async def prune(self, roots: list[Root]) -> None:
        doomed: set[str] = set()
        for root in roots:
            for source in await store.document_sources_under(self.conn, root.prefix):
                if not root.owns(source) or source in self.seen:
                    continue
                # A file that failed to load this time is still there: keep what it loaded before.
                if any(source == bad or source.startswith(bad + "#") for bad in self.failed_sources):
                    continue
                doomed.add(source)
        self.report.pruned = await store.delete_documents(self.conn, sorted(doomed))


async def load_paths(
    conn: Any,
    paths: Sequence[Path | str],
    *,
    embedder: Embedder,
    kind: LoadKind = "article",
    category: str | None = None,
    prune: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress: LoadProgress | None = None,
) -> LoadReport:
    """Load files and folders as articles, or CSV/JSONL records as past resolutions.

    `prune` (articles only) deletes documents under the given roots whose files or records are gone.
    """
    started = time.perf_counter()
    if kind not in ("article", "resolution"):
        raise ValueError(f"kind must be 'article' or 'resolution', got {kind!r}")
    if category is not None:
        category = normalize_category(category)
    await check_dimension(conn, embedder)
    report = LoadReport()
    files, roots, errors, report.ignored = discover([Path(p) for p in paths], kind)
    report.errors.extend(errors)
    if progress is not None:
        progress.start(len(files))
    loader = _Loader(conn, embedder, kind, category, max_bytes, progress, report)
    try:
        for file in files:
            await loader.load_file(file)
        await loader.drain()
    finally:
        loader.cancel()
    if prune and kind == "article":
        await loader.prune(roots)
    await store.refresh_statistics(conn)
    report.seconds = time.perf_counter() - started
    return report
