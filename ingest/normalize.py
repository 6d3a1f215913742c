"""Text normalization for inbound tickets: HTML to text, reply history and signatures trimmed, invisible
characters removed, whitespace collapsed, lengths capped. Never raises; `normalize_body` is idempotent.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from selectolax.lexbor import LexborHTMLParser, LexborNode

SUBJECT_MAX = 500
BODY_MAX = 20_000
NAME_MAX = 200

# Only bounds direct callers: the HTTP layer caps request bodies far below this.
_RAW_BODY_MAX = 1_000_000
# Text beyond this is never looked at: reply trimming works line by line in Python, and whatever survives it
# is capped at BODY_MAX anyway. Generous, so a long quoted history cannot push the customer's text out.
_WORKING_TEXT_MAX = 5 * BODY_MAX

# --- characters ---------------------------------------------------------------------------------------------

_LINE_BREAKS = re.compile("\r\n?|[\x0b\x0c\x85\u2028\u2029]")
_INVISIBLE = re.compile(
    "["
    "\x00-\x08\x0b-\x1f\x7f-\x9f"  # C0/C1 controls except \t and \n
    "\u061c"  # Arabic letter mark (a bidi control)
    "\u200b-\u200f"  # zero-width space/non-joiner/joiner, LRM, RLM
    "\u202a-\u202e"  # bidi embeddings and overrides
    "\u2060-\u2069"  # word joiner, invisible operators, bidi isolates
    "\ufeff"  # zero-width no-break space / stray BOM
    "\U000e0000-\U000e007f"  # tag characters: invisible ASCII used to smuggle instructions
    "\ud800-\udfff"  # lone surrogates: not encodable as UTF-8, so nothing downstream could store them
    "]"
)
# Characters no UTF-8 encoder, lexbor included, or Postgres text column accepts.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def strip_invisible(text: str) -> tuple[str, int]:
    """Unify line breaks, drop invisible and control characters, compose to NFC; count what was dropped."""
    text = _LINE_BREAKS.sub("\n", text)
    visible = _INVISIBLE.sub("", text)
    # NFC last: removing a character can bring a base letter and a combining mark together.
    return unicodedata.normalize("NFC", visible), len(text) - len(visible)


def _tidy_whitespace(text: str) -> str:
    text = _HORIZONTAL_SPACE.sub(" ", text)
    text = "\n".join(line.strip(" ") for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


def clean_text(text: str) -> str:
    """NFC, invisible/control characters and lone surrogates removed, whitespace collapsed, lines stripped."""
    return _tidy_whitespace(strip_invisible(text)[0])


def _truncate_at_word(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit]
    if not text[limit].isspace():
        boundary = max(cut.rfind(" "), cut.rfind("\n"))
        # One giant token (a base64 blob, a URL) has no boundary worth keeping: cut it hard instead.
        if boundary > limit // 2:
            cut = cut[:boundary]
    return cut.rstrip()


def _normalize_line(text: str, limit: int) -> str:
    single_line = strip_invisible(text)[0].replace("\n", " ")
    return _truncate_at_word(_tidy_whitespace(single_line), limit)


def normalize_subject(subject: str) -> str:
    """One cleaned line of at most SUBJECT_MAX characters."""
    return _normalize_line(subject, SUBJECT_MAX)


def normalize_name(name: str) -> str:
    """A customer's display name: one cleaned line of at most NAME_MAX characters."""
    return _normalize_line(name, NAME_MAX)


def normalize_email(addr: str) -> str:
    """Lower-cased, trimmed address; whether it is a valid address is the schema's call."""
    return unicodedata.normalize("NFC", _UNSTORABLE.sub("", addr)).strip().lower()


# --- HTML ---------------------------------------------------------------------------------------------------

_HTML_TAG_NAMES = frozenset(
    {
        "html", "head", "body", "div", "p", "br", "span", "a", "b", "i", "u", "s", "em", "strong", "small",
        "big", "sub", "sup", "font", "center", "table", "thead", "tbody", "tfoot", "tr", "td", "th",
        "caption", "col", "colgroup", "ul", "ol", "li", "dl", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6",
        "img", "hr", "blockquote", "pre", "code", "tt", "style", "script", "meta", "link", "title", "section",
        "article", "header", "footer", "nav", "main", "aside", "label", "form", "input", "button", "select",
        "option", "textarea", "iframe", "svg", "template", "noscript", "wbr", "abbr", "cite", "q", "mark",
        "del", "ins", "figure", "figcaption", "details", "summary", "o:p",
    }
)  # fmt: skip
# Anything shaped like a start or end tag; `_is_known_tag` then keeps the HTML ones. (An alternation of the
# names would be retried at every "<" and is ten times slower on text full of them.)
_TAG_SHAPE = re.compile(r"<(?:(!doctype\s+html)\b[^<>]*|/?([A-Za-z][A-Za-z0-9:]*)(?:\s[^<>]*)?/?)>", re.IGNORECASE)


def _is_known_tag(tag: re.Match[str]) -> bool:
    return tag.group(1) is not None or tag.group(2).lower() in _HTML_TAG_NAMES


def looks_like_html(text: str) -> bool:
    """True when the text opens with a known HTML tag or contains at least two of them.

    A single tag mid-sentence ("use the <br> tag") is a plain-text mention, not markup; "a < b" never counts.
    """
    known_tags = (tag for tag in _TAG_SHAPE.finditer(text) if _is_known_tag(tag))
    first = next(known_tags, None)
    if first is None:
        return False
    return not text[: first.start()].strip() or next(known_tags, None) is not None


def _defuse_markup(text: str) -> str:
    """Swap the '<' of every HTML tag for '‹' so the text can never be parsed as HTML again."""
    return _TAG_SHAPE.sub(lambda tag: "‹" + tag.group(0)[1:] if _is_known_tag(tag) else tag.group(0), text)


@dataclass(frozen=True, slots=True)
class RenderedHtml:
    text: str
    removed_hidden: int  # hidden elements (inline style, `hidden`, aria-hidden) that carried text
    truncated: bool  # pathological nesting or size: only a prefix was rendered


# Elements whose content is never shown to a reader, or is not text.
_DROPPED_ELEMENTS = frozenset(
    {
        "script", "style", "head", "template", "noscript", "title", "meta", "link", "img", "picture",
        "source", "svg", "math", "canvas", "iframe", "frame", "frameset", "object", "embed", "audio", "video",
        "map", "input", "textarea",
    }
)  # fmt: skip
_PARAGRAPH_ELEMENTS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "dl", "table", "pre", "hr"})
_BLOCK_ELEMENTS = frozenset(
    {
        "address", "article", "aside", "body", "caption", "center", "dd", "details", "dialog", "dir", "div",
        "dt", "fieldset", "figcaption", "figure", "footer", "form", "header", "hgroup", "html", "legend",
        "main", "menu", "nav", "section", "summary", "tbody", "tfoot", "thead", "tr",
    }
)  # fmt: skip
_CELL_ELEMENTS = frozenset({"td", "th"})
_HIDDEN_STYLE = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*(?:hidden|collapse)|mso-hide\s*:\s*all"
    r"|(?:font-size|opacity)\s*:\s*0(?:\.0*)?[a-z%]*\s*(?:;|!|$)",
    re.IGNORECASE,
)
_HTML_SPACE = re.compile(r"[ \t\n\f\r]+")

# lexbor's tree construction is quadratic in nesting depth for block elements (50 000 nested <div>s take
# seconds), so markup nested beyond this is cut before parsing. Real emails stay far below it.
_MAX_OPEN_ELEMENTS = 512
_MAX_HTML_NODES = 50_000
_TAG_TOKEN = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9:-]*)([^<>]*)>")
_VOID_ELEMENTS = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track",
     "wbr"}
)  # fmt: skip
# Closed implicitly by their next sibling, so an unclosed run of them never nests.
_SELF_CLOSING_SIBLINGS = frozenset(
    {"p", "li", "dt", "dd", "option", "optgroup", "tr", "td", "th", "thead", "tbody", "tfoot", "rb", "rt",
     "rp", "rtc", "colgroup", "caption", "html", "head", "body"}
)  # fmt: skip


def _within_nesting_budget(html: str) -> tuple[str, bool]:
    """The longest prefix of `html` whose estimated element nesting stays within _MAX_OPEN_ELEMENTS."""
    open_elements: list[str] = []
    open_counts: dict[str, int] = {}
    for token in _TAG_TOKEN.finditer(html):
        closing, name, rest = token.groups()
        name = name.lower()
        if closing:
            if open_counts.get(name):
                # An end tag closes everything opened inside it, as the parser would.
                while open_elements:
                    top = open_elements.pop()
                    open_counts[top] -= 1
                    if top == name:
                        break
        elif name not in _VOID_ELEMENTS and name not in _SELF_CLOSING_SIBLINGS and not rest.endswith("/"):
            open_elements.append(name)
            open_counts[name] = open_counts.get(name, 0) + 1
            if len(open_elements) > _MAX_OPEN_ELEMENTS:
                return html[: token.start()], True
    return html, False


def _is_hidden(attributes: dict[str, str | None]) -> bool:
    if "hidden" in attributes:
        return True
    if (attributes.get("aria-hidden") or "").strip().lower() == "true":
        return True
    style = attributes.get("style")
    return bool(style) and _HIDDEN_STYLE.search(style or "") is not None


def _add_break(out: list[str], newlines: int) -> None:
    """End the current line (1) or paragraph (2), merged with the break and inter-element whitespace already
    at the end of `out`, so adjacent blocks (`</div><div>`) do not stack up blank lines."""
    pending = 0
    while out and not out[-1].strip():
        pending += out.pop().count("\n")
    out.append("\n" * max(pending, newlines))


def _quote_block(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.split("\n"))


def _tidy_rendered(text: str) -> str:
    lines = []
    for line in _HORIZONTAL_SPACE.sub(" ", text).split("\n"):
        stripped = line.strip(" ")
        # Keep the RFC 3676 signature delimiter's trailing space so email trimming still recognises it.
        lines.append("-- " if stripped == "--" and line.endswith(" ") else stripped)
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def render_html(html: str) -> RenderedHtml:
    """Visible text of an HTML document: hidden and non-text elements dropped, blocks as line breaks, link
    text kept without its href, blockquotes rendered as '> ' quoted lines."""
    html, truncated = _within_nesting_budget(_UNSTORABLE.sub("", html))
    root = LexborHTMLParser(html).root
    if root is None:
        return RenderedHtml("", 0, truncated)
    out: list[str] = []
    outer_outs: list[list[str]] = []  # one per open blockquote: the text written before it opened
    removed_hidden = 0
    preformatted = 0
    visited = 0
    text_written = 0
    # Iterative walk, (node, leaving): deeply nested markup must not exhaust the Python stack.
    stack: list[tuple[LexborNode, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        tag = node.tag or ""
        if leaving:
            if tag == "blockquote":
                quoted = _quote_block(_tidy_rendered("".join(out)))
                out = outer_outs.pop()
                _add_break(out, 1)
                out.append(quoted)
                _add_break(out, 1)
            elif tag == "pre":
                preformatted -= 1
                _add_break(out, 2)
            elif tag in _PARAGRAPH_ELEMENTS:
                _add_break(out, 2)
            elif tag in _BLOCK_ELEMENTS or tag == "li":
                _add_break(out, 1)
            elif tag in _CELL_ELEMENTS:
                out.append(" ")
            continue
        visited += 1
        if visited > _MAX_HTML_NODES or text_written > _WORKING_TEXT_MAX:
            truncated = True
            break
        if node.is_text_node:
            text = node.text_content or ""
            out.append(text if preformatted else _HTML_SPACE.sub(" ", text))
            text_written += len(text)
            continue
        if not node.is_element_node or tag in _DROPPED_ELEMENTS:
            continue  # comments, doctype, scripts, images ...
        if _is_hidden(node.attributes):
            # Hidden text is how instructions get smuggled past a human reader; count what carried any.
            if node.text(deep=True).strip():
                removed_hidden += 1
            continue
        if tag == "br":
            out.append("\n")  # not merged: <br><br> is a blank line
        elif tag == "blockquote":
            outer_outs.append(out)
            out = []
        elif tag == "li":
            _add_break(out, 1)
            out.append("- ")
        elif tag == "pre":
            preformatted += 1
            _add_break(out, 2)
        elif tag in _PARAGRAPH_ELEMENTS:
            _add_break(out, 2)
        elif tag in _BLOCK_ELEMENTS:
            _add_break(out, 1)
        stack.append((node, True))
        children = list(node.iter(include_text=True))
        stack.extend((child, False) for child in reversed(children))
    while outer_outs:  # the walk stopped early inside blockquotes
        quoted = _quote_block(_tidy_rendered("".join(out)))
        out = outer_outs.pop()
        _add_break(out, 1)
        out.append(quoted)
    return RenderedHtml(_tidy_rendered("".join(out)), removed_hidden, truncated)


def html_to_text(html: str) -> str:
    """The visible text of an HTML document (see `render_html`)."""
    return render_html(html).text


# --- reply history and signatures ---------------------------------------------------------------------------

# (opening word, verb, whether the verb ends the line before the colon)
_ATTRIBUTIONS = (
    ("on ", " wrote", True),  # On Mon, Jan 1, 2024 at 10:00 AM Bob <bob@x.com> wrote:
    ("am ", " schrieb ", False),  # Am 01.01.2024 um 10:00 schrieb Max <max@x.de>:
    ("le ", " a écrit", True),  # Le lun. 1 janv. 2024 à 10:00, Marie <m@x.fr> a écrit :
    ("el ", " escribió", True),  # El lun, 1 ene 2024 a las 10:00, Juan (<j@x.es>) escribió:
    ("em ", " escreveu", True),  # Em seg., 1 de jan. de 2024 às 10:00, Ana <a@x.br> escreveu:
    ("il ", " ha scritto", True),  # Il giorno lun 1 gen 2024 alle ore 10:00 Luca <l@x.it> ha scritto:
    ("op ", " schreef ", False),  # Op ma 1 jan. 2024 om 10:00 schreef Jan <j@x.nl>:
    ("den ", " skrev ", False),  # Den 1 jan. 2024 kl. 10:00 skrev Sven <s@x.se>:
)
_ATTRIBUTION_MAX = 400
_ORIGINAL_MESSAGE = re.compile(
    r"-{2,} ?(?:original message|ursprüngliche nachricht|message d'origine|mensaje original"
    r"|messaggio originale|oorspronkelijk bericht|mensagem original) ?-{2,}",
    re.IGNORECASE,
)
_RULE = re.compile(r"_{10,}")
# Outlook's plain-text reply header: "From: ..." followed within a few lines by "Sent: ..."/"Date: ...".
_HEADER_FROM = re.compile(r"(?:from|von|de|van|da|från|fra) ?: ?\S.*", re.IGNORECASE)
_HEADER_SENT = re.compile(
    r"(?:sent|date|gesendet|datum|envoyé|enviado|fecha|verzonden|inviato|data|skickat|sendt) ?: ?\S.*",
    re.IGNORECASE,
)
_DEVICE_SIGNATURE = re.compile(
    r"sent (?:from|with|via) (?:my |the )?(?:iphone|ipad|android|samsung|galaxy|mobile|blackberry|phone"
    r"|smartphone|outlook|mail|yahoo|gmail|proton).{0,60}"
    r"|get outlook for (?:ios|android).{0,20}"
    r"|von meinem (?:iphone|ipad|android|smartphone|samsung).{0,40}gesendet"
    r"|envoyé de mon (?:iphone|ipad|android|smartphone|samsung).{0,40}"
    r"|enviado desde mi (?:iphone|ipad|android|smartphone|samsung).{0,40}",
    re.IGNORECASE,
)
_CLOSING = re.compile(
    r"(?:(?:(?:with )?(?:best|kind|kindest|warm|warmest|many) |with )?regards"
    r"|best(?: wishes)?|all the best|cheers|sincerely|yours (?:truly|sincerely)|cordially|respectfully"
    r"|thanks(?: (?:again|so much|a lot|in advance|for your help))?|many thanks|thx"
    r"|thank you(?: (?:so much|very much|in advance|for your help))?"
    r"|(?:mit )?(?:freundlichen|besten|viele|liebe|beste) gr(?:ü|ue)(?:ß|ss)e|gruß|cordialement|bien à vous"
    r"|(?:un )?saludos?(?: cordiales)?|atentamente|gracias)[ ,.!]*",
    re.IGNORECASE,
)
_SIGNATURE_LINE_MAX = 60
_SIGNATURE_BLOCK_LINES = 4
_POSTSCRIPT = re.compile(r"p\.? ?s\b", re.IGNORECASE)


def _is_attribution(line: str) -> bool:
    if len(line) > _ATTRIBUTION_MAX or not line.endswith(":"):
        return False
    lowered = line.lower()
    head = lowered[:-1].rstrip()
    for opening, verb, verb_ends_line in _ATTRIBUTIONS:
        if lowered.startswith(opening):
            found = head.endswith(verb) if verb_ends_line else verb in f"{head[len(opening) - 1 :]} "
            if found:
                return True
    return False


def _opens_reply_history(lines: list[str], squashed: list[str], i: int) -> bool:
    line = squashed[i]
    if lines[i].rstrip("\r") == "-- ":  # RFC 3676 signature delimiter, trailing space and all
        return True
    # Cheap first-character tests keep this one pass over long bodies fast; the regexes run on few lines.
    first = line[0]
    if first == "-" and _ORIGINAL_MESSAGE.fullmatch(line):
        return True
    if first == "_" and _RULE.fullmatch(line):
        return True
    if line[-1] == ":" and _is_attribution(line):
        return True
    following = squashed[i + 1] if i + 1 < len(squashed) else ""
    # The attribution wrapped over two lines.
    if following.endswith(":") and _is_attribution(f"{line} {following}"):
        return True
    if first in "FfVvDd" and _HEADER_FROM.fullmatch(line):
        for j in range(i + 1, min(i + 4, len(squashed))):
            if not squashed[j]:
                break
            if _HEADER_SENT.fullmatch(squashed[j]):
                return True
    return False


def _reply_history_start(lines: list[str], squashed: list[str], first_content: int) -> int | None:
    """Index of the first line that opens quoted history or a signature, with customer text above it."""
    for i in range(first_content + 1, len(lines)):
        if squashed[i] and _opens_reply_history(lines, squashed, i):
            return i
    return None


def _is_quote_or_device_line(line: str) -> bool:
    if not line:
        return False
    return line[0] == ">" or (line[0] in "SsGgVvEe" and _DEVICE_SIGNATURE.fullmatch(line) is not None)


def _is_signature_line(line: str) -> bool:
    return len(line) <= _SIGNATURE_LINE_MAX and not line.endswith("?") and not _POSTSCRIPT.match(line)


def _closing_block_start(squashed: list[str], first_content: int, end: int) -> int | None:
    """Index of a closing line ("Best regards,") followed only by a short name/title block in squashed[:end].

    Only the last few non-blank lines are candidates, and the customer's text must remain above the cut.
    """
    tail: list[int] = []  # indices of the last non-blank lines, latest first
    for i in range(end - 1, first_content, -1):
        if squashed[i]:
            tail.append(i)
            if len(tail) > _SIGNATURE_BLOCK_LINES:
                break
    for position in range(len(tail) - 1, -1, -1):  # earliest candidate first
        i = tail[position]
        if _CLOSING.fullmatch(squashed[i]) and all(_is_signature_line(squashed[j]) for j in tail[:position]):
            return i
    return None


def _trim_reply(text: str) -> tuple[str, bool]:
    """`strip_quoted_reply` plus whether anything was trimmed.

    Each step only applies when customer text remains, and every detector ignores whitespace differences, so
    trimming the result again finds nothing more to trim.
    """
    lines = text.split("\n")
    squashed = [" ".join(line.split()) for line in lines]
    trimmed = False

    kept = [i for i, line in enumerate(squashed) if not _is_quote_or_device_line(line)]
    if len(kept) < len(lines) and any(squashed[i] for i in kept):
        lines = [lines[i] for i in kept]
        squashed = [squashed[i] for i in kept]
        trimmed = True

    first_content = next((i for i, line in enumerate(squashed) if line), None)
    if first_content is None:
        return text, False

    end = len(lines)
    cut = _reply_history_start(lines, squashed, first_content)
    if cut is not None:
        end, trimmed = cut, True
    # Repeat: "Thanks,\nAnn\n\nRegards,\nAnn" sheds one closing block per pass.
    while (cut := _closing_block_start(squashed, first_content, end)) is not None:
        end, trimmed = cut, True
    if trimmed:
        while not squashed[end - 1]:  # stops at first_content at the latest
            end -= 1
    return "\n".join(lines[:end]), trimmed


def strip_quoted_reply(text: str) -> str:
    """Trim quoted history ('>' lines, "On ... wrote:", Outlook headers, "-----Original Message-----") and
    signatures ("-- ", "Sent from my iPhone", a short block after "Best regards,") from an email body.

    A step that would leave no customer text is skipped, so the result is never empty unless the input was.
    """
    return _trim_reply(text)[0]


# --- the body pipeline --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NormalizedBody:
    text: str
    removed_invisible: int
    removed_hidden_html: int
    trimmed_quote: bool
    truncated: bool


def normalize_body(body: str, *, channel: str) -> NormalizedBody:
    """HTML to text, email reply history trimmed, invisible characters removed, whitespace collapsed, capped
    at BODY_MAX characters on a word boundary."""
    truncated = len(body) > _RAW_BODY_MAX
    text, removed_invisible = strip_invisible(body[:_RAW_BODY_MAX])
    removed_hidden = 0
    if looks_like_html(text):
        rendered = render_html(text)
        # Entities decode to characters too: "&#8203;" is a zero-width space.
        text, removed_in_markup = strip_invisible(rendered.text)
        removed_invisible += removed_in_markup
        removed_hidden = rendered.removed_hidden
        truncated = truncated or rendered.truncated
    if len(text) > _WORKING_TEXT_MAX:
        text = _truncate_at_word(text, _WORKING_TEXT_MAX)
        truncated = True
    is_email = channel == "email"
    trimmed = False
    if is_email:
        text, trimmed = _trim_reply(text)
    text = _tidy_whitespace(text)
    if len(text) > BODY_MAX:
        text = _truncate_at_word(text, BODY_MAX)
        truncated = True
        if is_email:
            # The cut can leave a fresh "Thanks,\nAnn" at the very end; trim it now so a second pass agrees.
            text, trimmed_again = _trim_reply(text)
            trimmed = trimmed or trimmed_again
            text = _tidy_whitespace(text)
    if looks_like_html(text):
        # Escaped markup ("&lt;div&gt;") decodes to real tags; were they left intact, normalizing this text
        # again would parse them as HTML and change it.
        text = _defuse_markup(text)
    return NormalizedBody(text, removed_invisible, removed_hidden, trimmed, truncated)
