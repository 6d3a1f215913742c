"""Structure-aware chunking of knowledge-base documents: sections by heading, paragraphs packed to a size.

HTML is first turned into Markdown-like text so one chunker serves Markdown, HTML and plain-text articles.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from selectolax.lexbor import LexborHTMLParser, LexborNode

HEADING_PATH_SEPARATOR = " › "
TITLE_MAX_CHARS = 80

_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*$")
_ATX_CLOSING_HASHES = re.compile(r"(?:^|[ \t]+)#+$")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_THEMATIC_BREAK = re.compile(r"^ {0,3}([-*_])[ \t]*(?:\1[ \t]*){2,}$")
_FENCE_OPENING = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+]|\d{1,9}[.)])(?:[ \t]+|$)")
# Group 1 ends a sentence (terminal punctuation plus any closing quotes or brackets); the whitespace after it
# is where the next sentence starts.
_SENTENCE_BOUNDARY = re.compile(r"([.!?][\"'”’)\]]*)\s+")
_SENTENCE_OR_LINE_START = re.compile(r"[.!?][\"'”’)\]]*\s+|\n\s*")
_WORD_START = re.compile(r"\s+")
_WHITESPACE_RUN = re.compile(r"\s+")

_BLOCK_SEPARATOR = "\n\n"
_LINE_SEPARATOR = "\n"
_WORD_SEPARATOR = " "

BlockKind = Literal["paragraph", "list", "code"]
# A piece of a section that is never split further, with the separator that joins it to the piece before.
_Unit = tuple[str, str]


@dataclass(frozen=True)
class Chunk:
    """One retrievable passage: `heading` is the section path inside the document titled `title`."""

    title: str
    heading: str
    text: str
    seq: int


@dataclass
class _Block:
    kind: BlockKind
    lines: list[str]

    @property
    def text(self) -> str:
        return _LINE_SEPARATOR.join(self.lines).strip("\n")


@dataclass
class _Section:
    heading: str
    blocks: list[_Block] = field(default_factory=list)


def extract_title(text: str, fallback: str) -> str:
    """The first `# ` heading, else the first non-empty line shortened, else `fallback`."""
    first_line = ""
    fence_closing: re.Pattern[str] | None = None
    for line in text.splitlines():
        if fence_closing is not None:
            if fence_closing.match(line):
                fence_closing = None
            continue
        if opening := _FENCE_OPENING.match(line):
            fence_closing = _fence_closing_pattern(opening.group(1))
            continue
        heading = _ATX_HEADING.match(line)
        if heading and len(heading.group(1)) == 1 and (heading_text := _clean_heading(heading.group(2))):
            return heading_text
        if not first_line and line.strip():
            first_line = line.strip().lstrip("#").strip() or line.strip()
    return _shorten(first_line, TITLE_MAX_CHARS) if first_line else fallback


def chunk_markdown(text: str, *, title: str, max_chars: int = 1200, overlap_chars: int = 150) -> list[Chunk]:
    """Split Markdown into sections by heading and pack each section's paragraphs into chunks."""
    _check_sizes(max_chars, overlap_chars)
    return _chunk_sections(_parse_blocks(text, markdown=True), title, max_chars, overlap_chars)


def chunk_plain_text(text: str, *, title: str, max_chars: int = 1200, overlap_chars: int = 150) -> list[Chunk]:
    """Pack the paragraphs of plain text into chunks, by section: a short line standing alone between paragraphs,
    with no closing punctuation, is a heading (the first one, opening the text, the article's title). `#` and code
    fences mean nothing in plain text."""
    _check_sizes(max_chars, overlap_chars)
    return _chunk_sections(_plain_sections(_parse_blocks(text, markdown=False)), title, max_chars, overlap_chars)


def html_to_markdownish(html: str) -> tuple[str, str]:
    """(title, text) of an HTML page: headings as `#` lines, lists as item lines, scripts and styles gone."""
    tree = LexborHTMLParser(html)
    title = ""
    if (title_node := tree.css_first("title")) is not None:
        title = _collapse_whitespace(title_node.text())
    if not title and (first_h1 := tree.css_first("h1")) is not None:
        title = _inline_text(first_h1)
    root = tree.body if tree.body is not None else tree.root
    renderer = _HtmlRenderer()
    if root is not None:
        renderer.visit(root)
        renderer.flush()
    text = _BLOCK_SEPARATOR.join(renderer.blocks)
    return title or extract_title(text, fallback=""), text


# A plain-text heading: one line of a few words, starting with a letter, not ending as a sentence or a lead-in does.
_PLAIN_HEADING = re.compile(rf"^[^\W\d_][^\n]{{0,{TITLE_MAX_CHARS - 1}}}(?<![.!?:;,…])$")
PLAIN_HEADING_WORDS = 10


def _plain_sections(sections: list[_Section]) -> list[_Section]:
    """Plain text's one section cut where a line stands alone as a heading: "Check the sync status" between two
    paragraphs heads the second (exported help centres often lose their Markdown). The opening line, when it is one,
    is the level-1 heading the others sit under, as a Markdown article's title is."""
    if len(sections) != 1:
        return sections
    blocks = sections[0].blocks

    def looks_like_heading(n: int) -> bool:
        line = blocks[n].text.strip()
        return (
            blocks[n].kind == "paragraph"
            and "\n" not in line
            and len(line.split()) <= PLAIN_HEADING_WORDS
            and bool(_PLAIN_HEADING.match(line))
        )

    out = [_Section(heading="")]
    top = ""
    for n, block in enumerate(blocks):
        line = block.text.strip()
        # A heading heads a paragraph: of short lines in a row, only the last can be one.
        if n + 1 < len(blocks) and looks_like_heading(n) and not looks_like_heading(n + 1):
            if n == 0:
                top = line
                out.append(_Section(heading=top))
            else:
                out.append(_Section(heading=HEADING_PATH_SEPARATOR.join(h for h in (top, line) if h)))
            continue
        out[-1].blocks.append(block)
    return [section for section in out if section.blocks]


def _check_sizes(max_chars: int, overlap_chars: int) -> None:
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")
    if not 0 <= overlap_chars < max_chars:
        raise ValueError(f"overlap_chars must be in [0, max_chars), got {overlap_chars}")


def _parse_blocks(text: str, *, markdown: bool) -> list[_Section]:
    """Sections (Markdown only) holding paragraphs, lists and code fences, in document order."""
    sections = [_Section(heading="")]
    heading_stack: list[tuple[int, str]] = []
    block: _Block | None = None
    fence_closing: re.Pattern[str] | None = None

    def close_block() -> None:
        nonlocal block
        if block is not None and block.text.strip():
            sections[-1].blocks.append(block)
        block = None

    def open_section(level: int, heading_text: str) -> None:
        close_block()
        while heading_stack and heading_stack[-1][0] >= level:
            heading_stack.pop()
        heading_stack.append((level, heading_text))
        path = HEADING_PATH_SEPARATOR.join(name for _, name in heading_stack if name)
        sections.append(_Section(heading=path))

    for raw_line in text.splitlines():
        line = raw_line.rstrip()
        if fence_closing is not None and block is not None:
            block.lines.append(line)
            if fence_closing.match(line):
                fence_closing = None
                close_block()
            continue
        if not line.strip():
            # A blank line ends a paragraph, but a loose list goes on while items or indented lines follow.
            if block is not None and block.kind == "list":
                block.lines.append("")
            else:
                close_block()
            continue
        if markdown:
            if opening := _FENCE_OPENING.match(line):
                close_block()
                block = _Block("code", [line])
                fence_closing = _fence_closing_pattern(opening.group(1))
                continue
            if heading := _ATX_HEADING.match(line):
                open_section(len(heading.group(1)), _clean_heading(heading.group(2)))
                continue
            if block is not None and block.kind == "paragraph" and (underline := _SETEXT_UNDERLINE.match(line)):
                heading_text = " ".join(part.strip() for part in block.lines)
                block = None
                open_section(1 if underline.group(1).startswith("=") else 2, heading_text)
                continue
            if _THEMATIC_BREAK.match(line):
                close_block()
                continue
        is_list_item = bool(_LIST_ITEM.match(line))
        if block is None:
            block = _Block("list" if is_list_item else "paragraph", [line])
        elif block.kind == "list":
            after_blank = block.lines[-1] == ""
            if after_blank and not (is_list_item or line[0] in " \t"):
                close_block()
                block = _Block("paragraph", [line])
            else:
                block.lines.append(line)
        else:
            if is_list_item:
                # A lead-in line such as "To update the card:" stays with the list it introduces.
                block.kind = "list"
            block.lines.append(line)
    close_block()
    return [section for section in sections if section.blocks]


def _chunk_sections(sections: list[_Section], title: str, max_chars: int, overlap_chars: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    for section in sections:
        units = [unit for block in section.blocks for unit in _block_units(block, max_chars)]
        previous_body: str | None = None
        for leading_separator, body in _pack_units(units, max_chars):
            text = body
            if previous_body is not None and overlap_chars:
                joiner = leading_separator or _WORD_SEPARATOR
                if tail := _overlap_tail(previous_body, overlap_chars - len(joiner)):
                    text = tail + joiner + body
            chunks.append(Chunk(title=title, heading=section.heading, text=text, seq=len(chunks)))
            previous_body = body
    return chunks


def _block_units(block: _Block, max_chars: int) -> list[_Unit]:
    """A block that fits stays whole; a larger one is cut between lines (code) or items (lists) first."""
    text = block.text
    if len(text) <= max_chars or block.kind == "paragraph":
        return _fit_units(text, _BLOCK_SEPARATOR, max_chars)
    parts = block.lines if block.kind == "code" else _list_items(block.lines)
    units: list[_Unit] = []
    for part in parts:
        units.extend(_fit_units(part, _LINE_SEPARATOR if units else _BLOCK_SEPARATOR, max_chars))
    return units


def _list_items(lines: list[str]) -> list[str]:
    items: list[list[str]] = []
    for line in lines:
        if not items or _LIST_ITEM.match(line):
            items.append([line])
        else:
            items[-1].append(line)
    return [_LINE_SEPARATOR.join(item).strip("\n") for item in items]


def _fit_units(text: str, separator: str, max_chars: int) -> list[_Unit]:
    """`text` as units of at most `max_chars`: whole, else by sentence, then by word, then by hard slices."""
    if not text.strip():
        return []
    if len(text) <= max_chars:
        return [(separator, text)]
    splitters: tuple[Callable[[str], list[str]], ...] = (_split_sentences, str.split)
    for split in splitters:
        parts = split(text)
        if len(parts) > 1:
            units: list[_Unit] = []
            for part in parts:
                units.extend(_fit_units(part, _WORD_SEPARATOR if units else separator, max_chars))
            return units
    slices = [text[start : start + max_chars] for start in range(0, len(text), max_chars)]
    # Slices of one token are glued back without a separator, so the token reads whole across chunks.
    return [(separator if index == 0 else "", piece) for index, piece in enumerate(slices) if piece.strip()]


def _split_sentences(text: str) -> list[str]:
    sentences: list[str] = []
    start = 0
    for boundary in _SENTENCE_BOUNDARY.finditer(text):
        sentences.append(text[start : boundary.end(1)].strip())
        start = boundary.end()
    sentences.append(text[start:].strip())
    return [sentence for sentence in sentences if sentence]


def _pack_units(units: list[_Unit], max_chars: int) -> list[tuple[str, str]]:
    """Greedily join units into bodies of at most `max_chars`, each with the separator it started with."""
    packed: list[tuple[str, str]] = []
    body = ""
    leading_separator = ""
    for separator, text in units:
        if body and len(body) + len(separator) + len(text) <= max_chars:
            body += separator + text
            continue
        if body:
            packed.append((leading_separator, body))
        body, leading_separator = text, separator
    if body:
        packed.append((leading_separator, body))
    return packed


def _overlap_tail(text: str, budget: int) -> str:
    """The longest end of `text` within `budget` starting a sentence or line, else one starting a word."""
    if budget <= 0:
        return ""
    if len(text) <= budget:
        return text.strip()
    earliest_start = len(text) - budget
    for boundary_pattern in (_SENTENCE_OR_LINE_START, _WORD_START):
        for boundary in boundary_pattern.finditer(text):
            if earliest_start <= boundary.end() < len(text):
                return text[boundary.end() :].strip()
    return ""


def _fence_closing_pattern(opening_marker: str) -> re.Pattern[str]:
    fence_char = re.escape(opening_marker[0])
    return re.compile(rf"^ {{0,3}}{fence_char}{{{len(opening_marker)},}}[ \t]*$")


def _clean_heading(raw: str | None) -> str:
    return _ATX_CLOSING_HASHES.sub("", raw or "").strip()


def _shorten(text: str, limit: int) -> str:
    text = _collapse_whitespace(text)
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut:
        cut = cut[: cut.rfind(" ")]
    return cut.rstrip(" ,;:-") + "…"


def _collapse_whitespace(text: str) -> str:
    return _WHITESPACE_RUN.sub(" ", text).strip()


_HTML_DROPPED_TAGS = frozenset(
    {"head", "title", "script", "style", "noscript", "template", "svg", "canvas", "iframe", "object", "embed"}
)
_HTML_HEADING_LEVELS = {f"h{level}": level for level in range(1, 7)}
_HTML_BLOCK_TAGS = frozenset(
    {
        "html", "body", "main", "article", "section", "header", "footer", "nav", "aside", "div", "p",
        "blockquote", "address", "figure", "figcaption", "details", "summary", "dialog", "form", "fieldset",
        "dl", "dt", "dd", "hr", "caption", "li",
    }
)  # fmt: skip


class _HtmlRenderer:
    """Walks an HTML tree, collecting Markdown-like blocks; inline text gathers until a block boundary."""

    def __init__(self) -> None:
        self.blocks: list[str] = []
        self._inline: list[str] = []

    def visit(self, node: LexborNode) -> None:
        if node.is_text_node:
            # Source line breaks are just spaces in HTML; only <br> makes a line break.
            self._inline.append(_WHITESPACE_RUN.sub(" ", node.text(deep=False)))
            return
        if not node.is_element_node or node.tag in _HTML_DROPPED_TAGS:
            return
        tag = node.tag or ""
        if tag in _HTML_HEADING_LEVELS:
            self.flush()
            if heading_text := _inline_text(node):
                self.blocks.append(f"{'#' * _HTML_HEADING_LEVELS[tag]} {heading_text}")
        elif tag in ("ul", "ol"):
            self.flush()
            if list_lines := _html_list_lines(node, depth=0):
                self.blocks.append(_LINE_SEPARATOR.join(list_lines))
        elif tag == "pre":
            self.flush()
            code = node.text(deep=True).strip("\n")
            if code.strip():
                self.blocks.append(f"```\n{code}\n```")
        elif tag == "table":
            self.flush()
            rows = [" | ".join(_inline_text(cell) for cell in row.css("th, td")) for row in node.css("tr")]
            if table_text := _LINE_SEPARATOR.join(row for row in rows if row.strip(" |")):
                self.blocks.append(table_text)
        elif tag == "br":
            self._inline.append("\n")
        elif tag in _HTML_BLOCK_TAGS:
            self.flush()
            self._visit_children(node)
            self.flush()
        else:
            self._visit_children(node)

    def flush(self) -> None:
        lines = (" ".join(line.split()) for line in "".join(self._inline).split("\n"))
        self._inline.clear()
        if paragraph := _LINE_SEPARATOR.join(line for line in lines if line):
            self.blocks.append(paragraph)

    def _visit_children(self, node: LexborNode) -> None:
        for child in node.iter(include_text=True):
            self.visit(child)


def _inline_text(node: LexborNode) -> str:
    """All readable text under `node` on one line."""
    renderer = _HtmlRenderer()
    for child in node.iter(include_text=True):
        renderer.visit(child)
    renderer.flush()
    return _collapse_whitespace(" ".join(renderer.blocks))


def _html_list_lines(list_node: LexborNode, depth: int) -> list[str]:
    ordered = list_node.tag == "ol"
    try:
        number = int(list_node.attributes.get("start") or "1")
    except ValueError:
        number = 1
    indent = "  " * depth
    lines: list[str] = []
    for item in list_node.iter():
        if item.tag in ("ul", "ol"):
            # A list nested directly in a list (invalid HTML, common in the wild) is read as a sub-list.
            lines.extend(_html_list_lines(item, depth + 1))
            continue
        if item.tag != "li":
            continue
        renderer = _HtmlRenderer()
        nested_lines: list[str] = []
        for child in item.iter(include_text=True):
            if child.tag in ("ul", "ol"):
                nested_lines.extend(_html_list_lines(child, depth + 1))
            else:
                renderer.visit(child)
        renderer.flush()
        marker = f"{number}." if ordered else "-"
        number += 1
        if item_text := _collapse_whitespace(" ".join(renderer.blocks)):
            lines.append(f"{indent}{marker} {item_text}")
        lines.extend(nested_lines)
    return lines
