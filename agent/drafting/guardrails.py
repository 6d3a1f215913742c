"""The post-draft guard: a reply may not promise money or account changes, leak instructions, or point anywhere
its sources did not. Used by the offline drafter and the LLM drafter alike (invariant 4 of RELIABILITY.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from agent.scoring.risk import fold

# Promises in the first person or the passive voice: "we have refunded", "your refund has been issued",
# "I've cancelled your subscription", "you will receive a credit".
_WE = r"(?:we|i|our team|the team|support)"
_WILL = r"(?:will|'ll|shall|are going to|am going to|have|'ve|has|had|just|already|now|hereby|can|are)"
# "we will", "i have", and the contracted "we'll", "i've".
_WE_WILL = rf"(?:{_WE} {_WILL}|(?:we|i)'(?:ve|ll|d))"
_MONEY_NOUN = r"(?:refund|reimbursement|credit|store credit|compensation|money back|voucher|discount|chargeback)"
_ACCOUNT_NOUN = (
    r"(?:account|subscription|plan|membership|licen[cs]e|profile|email address|password|billing details|order)"
)
_MONEY_VERB = (
    r"(?:refund(?:ed)?|reimburs(?:e|ed)|credit(?:ed)?|compensat(?:e|ed)|issu(?:e|ed)|process(?:ed)?|approv(?:e|ed)|"
    r"grant(?:ed)?|send|sent|waiv(?:e|ed)|revers(?:e|ed)|return(?:ed)?|transfer(?:red)?|appl(?:y|ied)|initiat(?:e|ed))"
)
_ACCOUNT_VERB = (
    r"(?:cancell?(?:ed)?|clos(?:e|ed)|delet(?:e|ed)|remov(?:e|ed)|deactivat(?:e|ed)|terminat(?:e|ed)|upgrad(?:e|ed)|"
    r"downgrad(?:e|ed)|chang(?:e|ed)|switch(?:ed)?|updat(?:e|ed)|reactivat(?:e|ed)|extend(?:ed)?|unlock(?:ed)?|reset)"
)
_PROMISES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "promises money",
        re.compile(
            rf"\b{_WE_WILL}(?: \w+)? {_MONEY_VERB}\b[^.!?\n]{{0,40}}\b(?:{_MONEY_NOUN}|your money|the (?:full )?amount)"
        ),
    ),
    (
        "promises money",
        re.compile(rf"\b{_WE_WILL}(?: \w+)? (?:refund|reimburse|credit|compensate)d? (?:you|your|the)\b"),
    ),
    (
        "promises money",
        re.compile(
            rf"\b(?:your|a|the|this|full) {_MONEY_NOUN} (?:has been|have been|was|is being|will be|is|'s been|'ll be) "
            rf"(?:\w+ )?(?:issued|processed|approved|granted|sent|applied|credited|initiated|on its way|transferred)\b"
        ),
    ),
    (
        "promises money",
        re.compile(
            rf"\byou(?:'ll| will) (?:now |soon |shortly )?(?:receive|get|see) "
            rf"(?:a |your |the |an? )?(?:full )?{_MONEY_NOUN}\b"
        ),
    ),
    (
        "promises money",
        re.compile(
            rf"\b{_WE_WILL}(?: \w+)? (?:waived?|removed?|reversed?|cancell?(?:ed)?) "
            r"(?:the|your|this|that|all)(?: \w+)? "
            r"(?:fee|fees|charge|charges|penalty|invoice)"
        ),
    ),
    (
        "promises an account change",
        re.compile(rf"\b{_WE_WILL}(?: \w+)? {_ACCOUNT_VERB} (?:your|the) {_ACCOUNT_NOUN}\b"),
    ),
    (
        "promises an account change",
        re.compile(
            rf"\byour {_ACCOUNT_NOUN} (?:has been|have been|was|is being|will be|is now|'s been|'ll be) "
            rf"(?:\w+ )?(?:cancell?ed|closed|deleted|removed|deactivated|terminated|upgraded|downgraded|changed|"
            rf"switched|updated|reactivated|extended|unlocked|reset)\b"
        ),
    ),
    (
        "promises money",
        re.compile(
            r"\b(?:wir (?:haben|werden) (?:\w+ ){0,3}(?:erstattet|erstatten|gutgeschrieben|zuruckuberwiesen)|"
            r"(?:hemos|vamos a) (?:\w+ )?(?:reembolsado|reembolsar)|(?:nous avons|nous allons) (?:\w+ )?rembours\w*|"
            r"(?:vamos|iremos) reembolsar|(?:ja )?reembolsamos)\b"
        ),
    ),
)
_LEAKS = re.compile(
    r"\b(?:system prompt|my instructions (?:are|say)|i was instructed to|as an ai language model|hidden instructions)\b"
)
_ACTIVE_CONTENT = re.compile(r"<\s*(?:script|iframe|object|embed|img|svg)\b|javascript:|data:text/html|on\w+\s*=", re.I)
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"'()\[\]{}]+", re.I)
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")


def _clean_url(url: str) -> str:
    return url.rstrip(".,;:!?").lower().removeprefix("https://").removeprefix("http://").rstrip("/")


def find_urls(text: str) -> list[str]:
    return [m.group(0).rstrip(".,;:!?") for m in _URL.finditer(text)]


def find_emails(text: str) -> list[str]:
    return [m.group(0) for m in _EMAIL.finditer(text)]


def promise_violations(text: str) -> list[str]:
    """Sentences that promise a refund, credit or account change, as "kind: “…”" strings."""
    folded = fold(text)
    found: list[str] = []
    for label, pattern in _PROMISES:
        for match in pattern.finditer(folded):
            found.append(f"{label}: \u201c{match.group(0)}\u201d")
    return found


def check_reply(text: str, *, allowed_urls: Iterable[str] = (), allowed_emails: Iterable[str] = ()) -> list[str]:
    """Everything wrong with a reply before it may be sent; an empty list means it passes.

    `allowed_urls` / `allowed_emails` are the addresses the reply's sources (and the service) contain: anything
    else in the reply was made up or injected.
    """
    violations = promise_violations(text)
    if _LEAKS.search(fold(text)):
        violations.append("talks about its own instructions")
    if _ACTIVE_CONTENT.search(text):
        violations.append("contains active content (script, event handler or javascript: link)")
    allowed = {_clean_url(u) for u in allowed_urls}
    for url in find_urls(text):
        if _clean_url(url) not in allowed:
            violations.append(f"links to an address its sources do not contain: {url}")
    allowed_mail = {e.lower() for e in allowed_emails}
    for email in find_emails(text):
        if email.lower() not in allowed_mail:
            violations.append(f"mentions an email address its sources do not contain: {email}")
    if not text.strip():
        violations.append("is empty")
    return violations
