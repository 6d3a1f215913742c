"""The subject of a reply and the prefixes mail clients put before it: one rule for ingest and delivery.

Ingest strips the prefixes to match an emailed reply to its ticket by subject; delivery adds one `Re:` to the
subject the customer sees. With one rule, a customer's reply to our reply finds its ticket again.
"""

from __future__ import annotations

import re

# What mail clients put before a reply's or a forward's subject, any number of times, in any letter case, with an
# optional counter ("RE[2]:") and spaces before the colon as French clients write them ("RE :"): Re, Fw/Fwd
# (English), AW/WG (German), SV/VS (Scandinavian, Finnish), Antw (Dutch), Rif (Italian), TR and Réf. (French).
# Written for both Python's `re` and PostgreSQL's regular expressions (the ingest lookup runs it in SQL too):
# letters outside ASCII are spelled in both cases, since a C-locale database folds only ASCII.
REPLY_PREFIX_PATTERN = r"^(?:\s*(?:re|fwd?|aw|wg|sv|vs|antw|rif|tr|r[éÉ]f\.?)\s*(?:\[\d+\])?\s*:\s*)+"
_REPLY_PREFIX = re.compile(REPLY_PREFIX_PATTERN, re.IGNORECASE)

# The subject of a reply to a ticket that had none.
NO_SUBJECT = "your support request"


def is_reply_subject(subject: str) -> bool:
    """The subject starts with a reply or forward prefix."""
    return _REPLY_PREFIX.match(subject) is not None


def strip_reply_prefixes(subject: str) -> str:
    """The subject without its reply and forward prefixes and surrounding whitespace, letter case kept. Nothing
    inside it is touched: a line break stays, for the email sender to refuse (`delivery.mail.checked_header`)."""
    return _REPLY_PREFIX.sub("", subject).strip()


def reply_subject(subject: str) -> str:
    """The subject the customer sees on our reply: `Re: <subject>`, never `Re: Re: ...` however many prefixes the
    thread has gathered, and `Re: your support request` when the ticket had no subject. Applying it again
    changes nothing."""
    return f"Re: {strip_reply_prefixes(subject) or NO_SUBJECT}"
