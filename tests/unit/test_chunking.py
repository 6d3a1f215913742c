"""Structure-aware chunking: sections, packing, splitting, overlap, HTML conversion, size and coverage."""

from __future__ import annotations

import itertools
import string
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knowledge.chunking import (
    Chunk,
    chunk_markdown,
    chunk_plain_text,
    extract_title,
    html_to_markdownish,
)

ARTICLE = """# Update payment method

Your card is charged at the start of each billing period.

## Steps

To replace the card on file:
1. Open Settings → Billing → Payment method.
2. Click Replace card and enter the new details.

   The old card is removed once the new one is verified.
3. Click Save.

## Troubleshooting

### Card declined

Check the billing address matches the one your bank holds.

```
# this hash is code, not a heading
curl https://api.tallyhive.example/v1/billing
```
"""


def _words(chunks: Iterable[Chunk]) -> list[str]:
    """The chunks' words in order, each chunk's heading (its section's path) before its text."""
    return " ".join(f"{chunk.heading} {chunk.text}" for chunk in chunks).split()


def _is_subsequence(needle: list[str], haystack: list[str]) -> bool:
    remaining = iter(haystack)
    return all(item in remaining for item in needle)


def test_empty_or_blank_input_gives_no_chunks() -> None:
    for text in ("", "   ", "\n\n\t\n"):
        assert chunk_markdown(text, title="t") == []
        assert chunk_plain_text(text, title="t") == []


def test_sections_carry_the_heading_path_and_not_the_heading_lines() -> None:
    chunks = chunk_markdown(ARTICLE, title="Update payment method")

    assert [chunk.heading for chunk in chunks] == [
        "Update payment method",
        "Update payment method › Steps",
        "Update payment method › Troubleshooting › Card declined",
    ]
    assert [chunk.seq for chunk in chunks] == [0, 1, 2]
    assert all(chunk.title == "Update payment method" for chunk in chunks)
    assert not any(chunk.text.startswith("#") for chunk in chunks)


def test_a_list_stays_with_its_lead_in_and_loose_items() -> None:
    steps = chunk_markdown(ARTICLE, title="t")[1].text

    assert steps.startswith("To replace the card on file:\n1. Open Settings")
    assert "The old card is removed" in steps
    assert steps.endswith("3. Click Save.")


def test_a_code_fence_is_kept_whole_and_its_hash_lines_are_not_headings() -> None:
    declined = chunk_markdown(ARTICLE, title="t")[2].text

    assert "```\n# this hash is code, not a heading\ncurl https://api.tallyhive.example/v1/billing\n```" in declined


def test_setext_headings_open_sections() -> None:
    text = "Billing\n=======\n\nIntro.\n\nRefunds\n-------\n\nThe billing team reviews requests.\n"

    chunks = chunk_markdown(text, title="Billing")

    assert [(chunk.heading, chunk.text) for chunk in chunks] == [
        ("Billing", "Intro."),
        ("Billing › Refunds", "The billing team reviews requests."),
    ]


def test_small_sections_are_packed_into_one_chunk() -> None:
    text = "## A\n\nFirst paragraph.\n\nSecond paragraph.\n\n- one\n- two\n"

    chunks = chunk_markdown(text, title="t")

    assert len(chunks) == 1
    assert chunks[0].text == "First paragraph.\n\nSecond paragraph.\n\n- one\n- two"


def test_a_long_paragraph_is_split_at_sentence_boundaries() -> None:
    sentences = [f"Retry number {index} happens after a short wait." for index in range(30)]

    chunks = chunk_plain_text(" ".join(sentences), title="t", max_chars=200, overlap_chars=0)

    assert len(chunks) > 1
    for chunk in chunks:
        assert len(chunk.text) <= 200
        assert chunk.text.startswith("Retry number ")
        assert chunk.text.endswith("wait.")
    assert _words(chunks) == " ".join(sentences).split()


def test_overlap_repeats_the_previous_chunk_end_from_a_sentence_start() -> None:
    sentences = [f"Sentence {index} says something useful." for index in range(40)]

    chunks = chunk_plain_text(" ".join(sentences), title="t", max_chars=300, overlap_chars=80)

    assert len(chunks) > 2
    for previous, current in itertools.pairwise(chunks):
        last_number = int(previous.text.rsplit("Sentence ", 1)[1].split()[0])
        overlap = current.text[: current.text.index(f"Sentence {last_number + 1} ")].rstrip()
        assert overlap.startswith("Sentence ")
        assert previous.text.endswith(overlap)
        assert len(current.text) <= 300 + 80


def test_overlap_falls_back_to_a_word_boundary() -> None:
    text = " ".join(f"word{index}" for index in range(200))

    chunks = chunk_plain_text(text, title="t", max_chars=100, overlap_chars=30)

    for previous, current in itertools.pairwise(chunks):
        first_word = current.text.split()[0]
        assert first_word in previous.text.split()
        assert len(current.text) <= 130


def test_no_overlap_across_sections() -> None:
    body = " ".join(f"Line {index} of the section." for index in range(20))
    text = f"## One\n\n{body}\n\n## Two\n\nShort."

    chunks = chunk_markdown(text, title="t", max_chars=120, overlap_chars=60)

    assert chunks[-1].heading == "Two"
    assert chunks[-1].text == "Short."


def test_an_unbroken_token_is_hard_split() -> None:
    token = "x" * 250

    chunks = chunk_plain_text(f"start {token} end", title="t", max_chars=100, overlap_chars=0)

    assert all(len(chunk.text) <= 100 for chunk in chunks)
    assert "".join(chunk.text for chunk in chunks).replace(" ", "") == f"start{token}end"


def test_an_oversized_list_is_split_between_items() -> None:
    items = [f"- Item {index} explains one setting in a few words" for index in range(12)]

    chunks = chunk_markdown("\n".join(items), title="t", max_chars=160, overlap_chars=0)

    assert len(chunks) > 1
    for chunk in chunks:
        assert all(line.startswith("- Item ") and line.endswith("words") for line in chunk.text.split("\n"))


def test_plain_text_does_not_treat_hashes_as_headings() -> None:
    chunks = chunk_plain_text("# Not a heading\n\nBody text.", title="t")

    assert chunks == [Chunk(title="t", heading="", text="# Not a heading\n\nBody text.", seq=0)]


def test_plain_text_lines_standing_alone_head_their_sections() -> None:
    """An exported help-centre article that lost its Markdown: its title and section names are lines of their own.
    Read as sentences they were quoted in replies ("Check the sync status"), and one section's steps were never a
    passage of their own."""
    text = (
        "Mobile app not syncing\n\nThe apps work offline.\n\nIf the app is slow\n\n1. Close and reopen the app.\n"
        "2. Tap Clear cache.\n\nStill not working\n\nSend diagnostics from Settings."
    )
    chunks = chunk_plain_text(text, title="Mobile app not syncing")

    assert [(chunk.heading, chunk.text) for chunk in chunks] == [
        ("Mobile app not syncing", "The apps work offline."),
        ("Mobile app not syncing › If the app is slow", "1. Close and reopen the app.\n2. Tap Clear cache."),
        ("Mobile app not syncing › Still not working", "Send diagnostics from Settings."),
    ]


def test_plain_text_sentences_lead_ins_and_runs_of_short_lines_are_not_headings() -> None:
    text = (
        "Thanks for reading.\n\nTo update the card:\n\nOpen Billing.\n\nNote\nThis line belongs to the note.\n\n"
        "Release 4.2\n\nKnown issues\n\nExports can be slow.\n\nThe end"
    )
    chunks = chunk_plain_text(text, title="t")

    # Only "Known issues" heads a section: "Release 4.2" is followed by another short line, "The end" by nothing.
    assert [chunk.heading for chunk in chunks] == ["", "Known issues"]
    assert chunks[0].text.endswith("Release 4.2")
    assert chunks[1].text == "Exports can be slow.\n\nThe end"


@pytest.mark.parametrize(("max_chars", "overlap_chars"), [(0, 0), (100, -1), (100, 100), (100, 150)])
def test_nonsense_sizes_are_rejected(max_chars: int, overlap_chars: int) -> None:
    with pytest.raises(ValueError, match="_chars"):
        chunk_markdown("text", title="t", max_chars=max_chars, overlap_chars=overlap_chars)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("# Reset your password\n\nBody", "Reset your password"),
        ("Intro line\n\n## Sub\n\n# Real title #\n", "Real title"),
        ("```\n# not a title\n```\n\nFirst words here", "First words here"),
        ("\n\n   Plain first line  \nsecond", "Plain first line"),
        ("## Only a subheading", "Only a subheading"),
        ("", "fallback"),
        ("  \n\t\n", "fallback"),
    ],
)
def test_extract_title(text: str, expected: str) -> None:
    assert extract_title(text, "fallback") == expected


def test_extract_title_shortens_a_long_first_line_at_a_word() -> None:
    title = extract_title("word " * 60, "fallback")

    assert len(title) <= 80
    assert title.endswith("word…")


HTML_ARTICLE = """<!doctype html>
<html>
<head><title> Download invoices </title><style>p { color: red }</style></head>
<body>
  <nav>Home</nav>
  <h1>Download <em>invoices</em> and receipts</h1>
  <p>Invoices are issued
     on each renewal.<br>Receipts follow payment.</p>
  <h2>Steps</h2>
  <ol>
    <li>Open <strong>Settings → Billing → Invoices</strong>.</li>
    <li>Click Download<ul><li>PDF</li><li>CSV</li></ul></li>
  </ol>
  <script>trackPageView();</script>
  <h2>Fields</h2>
  <table><tr><th>Field</th><th>Meaning</th></tr><tr><td>VAT ID</td><td>Your tax number</td></tr></table>
  <pre>GET /v1/invoices
Authorization: Bearer TOKEN</pre>
  <!-- a comment -->
</body>
</html>"""


def test_html_becomes_markdownish_text() -> None:
    title, text = html_to_markdownish(HTML_ARTICLE)

    assert title == "Download invoices"
    assert text == (
        "Home\n\n"
        "# Download invoices and receipts\n\n"
        "Invoices are issued on each renewal.\nReceipts follow payment.\n\n"
        "## Steps\n\n"
        "1. Open Settings → Billing → Invoices.\n"
        "2. Click Download\n"
        "  - PDF\n"
        "  - CSV\n\n"
        "## Fields\n\n"
        "Field | Meaning\nVAT ID | Your tax number\n\n"
        "```\nGET /v1/invoices\nAuthorization: Bearer TOKEN\n```"
    )
    assert "trackPageView" not in text
    assert "color: red" not in text


def test_html_title_falls_back_to_the_first_h1_then_the_first_line() -> None:
    assert html_to_markdownish("<h1>Reset <b>password</b></h1><p>x</p>")[0] == "Reset password"
    assert html_to_markdownish("<p>Just a paragraph</p>")[0] == "Just a paragraph"
    assert html_to_markdownish("") == ("", "")


def test_html_headings_drive_markdown_sections() -> None:
    title, text = html_to_markdownish(HTML_ARTICLE)

    headings = [chunk.heading for chunk in chunk_markdown(text, title=title)]

    assert "Download invoices and receipts › Steps" in headings
    assert "Download invoices and receipts › Fields" in headings


sizes = st.integers(min_value=16, max_value=600).flatmap(
    lambda max_chars: st.tuples(st.just(max_chars), st.integers(min_value=0, max_value=max_chars - 1))
)


def _check_shape(chunks: list[Chunk], max_chars: int, overlap_chars: int) -> None:
    assert [chunk.seq for chunk in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.text.strip()
        assert len(chunk.text) <= max_chars + overlap_chars


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=3000), size=sizes)
def test_arbitrary_text_never_raises_and_respects_the_size_bound(text: str, size: tuple[int, int]) -> None:
    max_chars, overlap_chars = size
    _check_shape(chunk_markdown(text, title="t", max_chars=max_chars, overlap_chars=overlap_chars), *size)
    plain = chunk_plain_text(text, title="t", max_chars=max_chars, overlap_chars=overlap_chars)
    _check_shape(plain, *size)
    # Even tokens cut by hard splits keep every visible character, in order.
    assert _is_subsequence(list("".join(text.split())), list("".join(_words(plain))))


# Words never longer than the smallest max_chars, so coverage can be checked word by word.
words = st.text(alphabet=st.characters(exclude_categories=("Z", "C")), min_size=1, max_size=15)
separators = st.sampled_from([" ", " ", " ", "  ", "\n", "\n\n", "\t"])


@settings(max_examples=300, deadline=None)
@given(
    tokens=st.lists(st.tuples(words, separators), max_size=400),
    size=sizes,
)
def test_plain_text_chunks_cover_every_word_in_order(tokens: list[tuple[str, str]], size: tuple[int, int]) -> None:
    text = "".join(word + separator for word, separator in tokens)
    max_chars, overlap_chars = size

    chunks = chunk_plain_text(text, title="t", max_chars=max_chars, overlap_chars=overlap_chars)

    _check_shape(chunks, max_chars, overlap_chars)
    assert _is_subsequence(text.split(), _words(chunks))


markdown_words = st.text(alphabet=string.ascii_letters + string.digits + ".!?,", min_size=1, max_size=15)
paragraphs = st.lists(markdown_words, min_size=1, max_size=60).map(" ".join)
sections = st.tuples(st.integers(min_value=1, max_value=6), markdown_words, st.lists(paragraphs, max_size=4))


@settings(max_examples=200, deadline=None)
@given(document=st.lists(sections, max_size=8), size=sizes)
def test_markdown_chunks_cover_every_body_word_in_order(
    document: list[tuple[int, str, list[str]]], size: tuple[int, int]
) -> None:
    text = "\n\n".join(
        f"{'#' * level} {heading}\n\n" + "\n\n".join(section_paragraphs)
        for level, heading, section_paragraphs in document
    )
    body_words = [word for _, _, section_paragraphs in document for p in section_paragraphs for word in p.split()]
    max_chars, overlap_chars = size

    chunks = chunk_markdown(text, title="t", max_chars=max_chars, overlap_chars=overlap_chars)

    _check_shape(chunks, max_chars, overlap_chars)
    assert _is_subsequence(body_words, _words(chunks))
    assert all(chunk.heading for chunk in chunks)
