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
# Any HTML in a reply: a tag (`<a href>`, `<form>`, `<meta http-equiv=refresh>`, `</div>`), a comment or a doctype.
# Replies are plain text on every channel; markup in one was injected or copied, and a mail client may render it.
# `<support@example.com>` is no tag: a name must be followed by a space, `/` or `>`.
_HTML_TAG = re.compile(r"<\s*/?\s*[a-z][a-z0-9-]*(?:\s[^<>]*)?/?\s*>|<!--|<!\s*[a-z]", re.I)
# A Markdown link or image shows one text and points elsewhere: `[help.example.com](https://evil.example)`;
# also the reference style `[1]: https://…`.
_MARKDOWN_LINK = re.compile(r"!?\[[^\]\n]{0,300}\]\(\s*([^)\s]*)[^)]{0,300}\)|^\s*\[[^\]\n]+\]:\s*(\S+)", re.M)
_URL = re.compile(r"(?:\b(?:https?|ftp)://|\bwww\.|(?<![\w:/])//(?=[a-z0-9-]+\.))[^\s<>\"'()\[\]{}]+", re.I)
# A host written without a scheme: `acme-billing.help/verify`, `evil.example`. A host with a path is a link
# whatever its top-level domain; without one, the last label must be a country code or a common generic domain,
# so that file names (`export.csv`), `e.g.` and words glued at a full stop (`done.Then`) are not links.
_BARE_HOST = re.compile(
    r"(?<![\w@./:-])((?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+([a-z]{2,24}))(/[^\s<>\"'()\[\]{}]*)?(?![\w@-])",
    re.I,
)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_GENERIC_TLDS = _words(
    "com net org info biz edu gov int mil io co ai app dev help support link click site online website web page "
    "live top xyz club shop store tech cloud host space fun icu vip pro name mobi asia tel travel news blog email "
    "services money bank finance cash credit gift bid win review zip mov fyi run digital network systems "
    "solutions center agency today world life global one best example test invalid localhost onion"
)
_FILE_EXTENSIONS = _words(
    "pdf csv tsv txt json xml xls xlsx doc docx ppt pptx odt ods png jpg jpeg gif svg webp html htm md log ics "
    "vcf eml msg js ts py rb sh yml yaml ini cfg conf"
)


_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
_SCHEME = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", re.I)


def _clean_url(url: str) -> str:
    """An address as compared against the allow-list: no scheme (`https://`, `//`), lower case, no trailing `/`."""
    return _SCHEME.sub("", url.strip().rstrip(".,;:!?").lower()).rstrip("/")


def _host(url: str) -> str:
    return _clean_url(url).split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]


def _bare_hosts(text: str) -> list[str]:
    found = []
    for match in _BARE_HOST.finditer(text):
        tld, path = match.group(2).lower(), match.group(3)
        if tld in _FILE_EXTENSIONS and not path:
            continue
        if path or len(tld) == 2 or tld in _GENERIC_TLDS:
            found.append(match.group(0).rstrip(".,;:!?"))
    return found


def find_urls(text: str) -> list[str]:
    """Every link in the text: with a scheme, protocol-relative (`//host`), `www.` and bare hosts
    (`acme-billing.help/verify`)."""
    urls = [m.group(0).rstrip(".,;:!?") for m in _URL.finditer(text)]
    # Hosts written without a scheme, once the links and addresses found so far are blanked out.
    rest = _EMAIL.sub(" ", _URL.sub(" ", text))
    return urls + _bare_hosts(rest)


def find_emails(text: str) -> list[str]:
    return [m.group(0) for m in _EMAIL.finditer(text)]


def link_violations(text: str, *, allowed_urls: Iterable[str] = (), allowed_emails: Iterable[str] = ()) -> list[str]:
    """Links and addresses the reply's sources do not contain, HTML and Markdown links.

    A link passes when the allow-list holds it exactly; a bare host with no path also when an allowed link or
    address is on that host."""
    allowed = {_clean_url(u) for u in allowed_urls}
    allowed_mail = {e.lower() for e in allowed_emails}
    allowed_hosts = {_host(u) for u in allowed} | {e.rsplit("@", 1)[1] for e in allowed_mail}
    violations: list[str] = []

    def permitted(url: str) -> bool:
        cleaned = _clean_url(url)
        return cleaned in allowed or ("/" not in cleaned and cleaned in allowed_hosts)

    for url in dict.fromkeys(find_urls(text)):
        if not permitted(url):
            violations.append(f"links to an address its sources do not contain: {url}")
    for match in _MARKDOWN_LINK.finditer(text):
        target = match.group(1) if match.group(1) is not None else match.group(2)
        if not target or not permitted(target):
            violations.append(f"contains a Markdown link to {target or 'nowhere'}: {match.group(0)[:80]}")
    tag = _HTML_TAG.search(text)
    if tag:
        violations.append(f"contains HTML ({tag.group(0)[:60]})")
    for email in dict.fromkeys(find_emails(text)):
        if email.lower() not in allowed_mail:
            violations.append(f"mentions an email address its sources do not contain: {email}")
    return violations


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
    violations += link_violations(text, allowed_urls=allowed_urls, allowed_emails=allowed_emails)
    if not text.strip():
        violations.append("is empty")
    return violations


# --- languages the promise guard reads ------------------------------------------------------------------------

# Function words that name a language. The promise patterns above are written for the first five; a reply in any
# other language could promise a refund in words they do not know, so it is sent only after a person has read it.
_COVERED_WORDS: dict[str, frozenset[str]] = {
    "English": _words("the and you your we our to of is are for with this that have has please thank will can"),
    "German": _words("der die das und sie ihr ihre ihnen wir unser nicht ist sind mit fur bitte danke eine ein zu auf"),
    "Spanish": _words("el la los las y que de su sus usted para con por gracias una es nuestro hola puede"),
    "French": _words("le la les et vous votre vos nous de des pour avec est une merci bonjour ce que pas"),
    "Portuguese": _words("o a os as e que de seu sua voce para com por obrigado uma nao ola pode"),
}
_OTHER_WORDS: dict[str, frozenset[str]] = {
    "Italian": _words(
        "il gli della delle degli sono questo questa perche grazie abbiamo nostro vostro tuo essere anche molto "
        "ciao gentile cordiali saluti puoi"
    ),
    "Dutch": _words("het een niet wij jullie uw zijn met voor van ik bedankt groeten graag wordt kunt"),
    "Polish": _words("jest nie sie ze dla jak czy dziekujemy pozdrawiamy twoje pana pani prosze"),
    "Swedish": _words("och att det inte vi har med till halsningar ar din ditt"),
    "Danish or Norwegian": _words("og ikke det er vi har med til hilsen din dit kan"),
    "Turkish": _words("ve bir bu icin ile degil tesekkurler sizin hesabiniz"),
    "Indonesian": _words("dan yang untuk dengan tidak kami anda terima kasih"),
}
_WORDS = re.compile(r"[a-z]+")
_MIN_WORDS = 8


def uncovered_language(text: str) -> str | None:
    """The language a reply is written in when the promise guard cannot read it (another script, or another
    language's function words outnumbering those of every covered one); None for a covered or too short reply."""
    letters = [ch for ch in text if ch.isalpha()]
    if len(letters) < 20:
        return None
    # Latin letters, accented ones included, end at U+024F; Latin Extended Additional is U+1E00–U+1EFF.
    other_script = sum(1 for ch in letters if ord(ch) > 0x24F and not 0x1E00 <= ord(ch) <= 0x1EFF)
    if other_script > len(letters) * 0.3:
        return "a language in a non-Latin script"
    words = _WORDS.findall(fold(text))
    if len(words) < _MIN_WORDS:
        return None
    covered = max(sum(w in vocabulary for w in words) for vocabulary in _COVERED_WORDS.values())
    other, name = max((sum(w in vocabulary for w in words), name) for name, vocabulary in _OTHER_WORDS.items())
    if other > covered:
        return name
    return None


def review_reasons(text: str) -> list[str]:
    """Why a reply that passed `check_reply` may still go out only after a person read it."""
    language = uncovered_language(text)
    if language is None:
        return []
    return [f"the reply is in {language}, which the promise guard does not read"]
