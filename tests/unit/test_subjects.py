"""One reply-subject rule (`tickets.subjects`): the prefixes mail clients add, and the subject customers see."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tickets.subjects import REPLY_PREFIX_PATTERN, is_reply_subject, reply_subject, strip_reply_prefixes


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Invoice missing", "Re: Invoice missing"),
        ("Re: Invoice missing", "Re: Invoice missing"),
        ("RE: re: Re[2]: Invoice missing", "Re: Invoice missing"),
        ("Fwd: Invoice missing", "Re: Invoice missing"),
        ("FW: Invoice missing", "Re: Invoice missing"),
        ("AW: WG: Invoice missing", "Re: Invoice missing"),
        ("SV: VS: Antw: Rif: Invoice missing", "Re: Invoice missing"),
        ("RE : TR : Invoice missing", "Re: Invoice missing"),
        ("Réf. : Invoice missing", "Re: Invoice missing"),
        ("RÉF.: réf: Invoice missing", "Re: Invoice missing"),
        ("  Re:Invoice missing  ", "Re: Invoice missing"),
        ("  ", "Re: your support request"),
        ("", "Re: your support request"),
        ("Re: ", "Re: your support request"),
        ("Regarding invoices", "Re: Regarding invoices"),
        ("Trial: how long?", "Re: Trial: how long?"),
        ("Invoice: Re: missing", "Re: Invoice: Re: missing"),
    ],
)
def test_reply_subject_has_exactly_one_re(subject: str, expected: str) -> None:
    assert reply_subject(subject) == expected


@pytest.mark.parametrize(
    ("subject", "is_reply"),
    [
        ("Re: x", True),
        ("re[12]: x", True),
        ("Fwd: x", True),
        ("AW: x", True),
        ("Réf. : x", True),
        ("Refund please", False),
        ("Ref: order 12", False),
        ("Regarding: my plan", False),
        ("Trouble: login", False),
        ("", False),
    ],
)
def test_is_reply_subject(subject: str, is_reply: bool) -> None:
    assert is_reply_subject(subject) is is_reply


def test_prefixes_are_stripped_case_kept() -> None:
    assert strip_reply_prefixes("RE: Fwd: API Returns 500") == "API Returns 500"


def test_a_line_break_inside_is_left_for_the_email_sender_to_refuse() -> None:
    assert reply_subject("Re: Hi\r\nBcc: victim@example.com") == "Re: Hi\r\nBcc: victim@example.com"


@given(st.text(max_size=80))
def test_reply_subject_is_idempotent(subject: str) -> None:
    once = reply_subject(subject)
    assert reply_subject(once) == once
    assert once.startswith("Re: ")
    assert not is_reply_subject(once.removeprefix("Re: "))


@given(st.text(max_size=80))
def test_a_reply_to_our_reply_comes_back_to_the_same_base_subject(subject: str) -> None:
    # What ingest matches an emailed reply on: the customer's client adds its own prefix to what we sent.
    ours = reply_subject(subject)
    assert (
        strip_reply_prefixes(f"AW: {ours}")
        == strip_reply_prefixes(ours)
        == (strip_reply_prefixes(subject) or "your support request")
    )


def test_the_pattern_is_plain_enough_for_postgres() -> None:
    # The ingest lookup hands the pattern to PostgreSQL's regexp_replace: no Python-only syntax in it.
    assert not re.search(r"\(\?P|\(\?<|\(\?[aiLmsux]", REPLY_PREFIX_PATTERN)
