"""Remove one customer's specifics from a text before it can reach another customer.

A reviewer-approved reply is stored as a past resolution, and past resolutions come back as evidence (and as
the offline drafter's material) for other customers' tickets; the reader/composer strips the same specifics
from evidence before it composes. `strip_specifics` removes what identifies a person or an account (email
addresses, phone numbers, the customer's name and the names in greetings and sign-offs, order / invoice /
workspace / card ids, street addresses, links that carry an id) and what only held for that one ticket (dates,
times, relative times such as "an hour ago", money amounts). Identifiers become a bracketed placeholder
(`[email]`, `[phone]`, `[name]`, `[id]`, `[address]`, `[amount]`, `[link]`), so a reader sees that something was
there; times are modifiers and are dropped with their preposition ("failed on March 3 at 10:40" -> "failed").

General knowledge-base prose (steps, menu paths, durations such as "within 24 hours" or "more than 30 days
ago", error codes, plain links) is left as it is. Injection text is the caller's to detect (knowledge/ sits
below the agent's risk detector): pass `drop_if`, and every sentence it flags is removed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

PLACEHOLDER = re.compile(r"\[(?:email|phone|name|id|address|amount|link)\]")
"""Matches the placeholders `strip_specifics` leaves; a composer may drop the sentences that carry one."""

_MONTHS = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|(?-i:May)|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?"
    r"|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_WEEKDAYS = r"(?:mon|tues|wednes|thurs|fri|satur|sun)day"
_ORDINAL = r"\d{1,2}(?:st|nd|rd|th)?"

# --- identifiers ---------------------------------------------------------------------------------------------

_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>()\"']+[^\s<>()\"'.,;:!?]")
_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.IGNORECASE)
# Payment-provider style ids: in_1Nx..., cus_..., sub_..., ws_..., acct_...
_PREFIXED_ID = re.compile(r"\b(?:in|inv|cus|sub|ch|pi|py|ws|acct|org|usr|txn|ord)_[A-Za-z0-9]{4,}+\b")
# INV-2024-0042, ORD-88123, WS-4411: capitals, a dash and digits (three or more in all; see `_code_id`).
# Standards and algorithms keep their numbers.
_STANDARDS = r"(?:ISO|RFC|SHA|UTF|HTTP|TLS|SSL|CVE|PCI|SOC|GDPR|IEEE|AES|RSA|HMAC|MD|CRC|ECDSA|EN|DIN|BS|IP|IPV|WCAG)"
_CODE_ID = re.compile(rf"\b(?!{_STANDARDS}-)[A-Z]{{2,6}}+(?:-[A-Z0-9]++)++\b")
# "order #88123", "invoice no. 2024/117", "workspace ID: acme-42", "ticket 55012"
_LABELLED_ID = re.compile(
    r"\b(?P<label>(?:order|invoice|receipt|workspace|account|customer|subscription|transaction|ticket|case"
    r"|reference|ref|booking|contract|po|purchase order)(?:\s+(?:id|number|no\.?|nr\.?))?)"
    r"(?P<sep>\s*(?:#|:|is|=)?\s*)"
    r"(?P<id>#?(?=[A-Za-z0-9/_-]*\d)[A-Za-z0-9][A-Za-z0-9/_-]{2,})",
    re.IGNORECASE,
)
# "workspace ID: acme-corp": an explicit id label makes any token after it an id.
_NAMED_ID = re.compile(
    r"\b(?P<label>(?:workspace|account|customer|order|invoice|subscription|tenant|org(?:anization)?)\s+"
    r"(?:id|number|no\.?|slug|handle))(?P<sep>\s*[:#]?\s*)(?P<id>[A-Za-z0-9][\w./-]{2,}[A-Za-z0-9])",
    re.IGNORECASE,
)
_HASH_ID = re.compile(r"(?<![\w&])#\d{3,}\b")
_CARD_TAIL = re.compile(r"\b((?:ending|ends|ended)\s+(?:in|with)\s+)\d{4}\b", re.IGNORECASE)
# Phone numbers: an optional +country code, then digits grouped by spaces, dots, dashes or parentheses; seven
# digits at least (times, versions and years have fewer, dates are removed before).
_PHONE = re.compile(r"(?<![\w+/.-])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,5}\)[\s.-]?)?\d[\d\s.-]{5,16}\d(?![\w/-])")
_LONG_NUMBER = re.compile(r"(?<![\w.,/-])\d{6,}+(?![\w/]|[.,-]\w)")

_STREET_TYPES = (
    r"(?:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|way|place|pl|terrace|square|sq"
    r"|parkway|pkwy|highway|hwy|crescent|close|row)"
)
_POSTCODE_TAIL = (
    r"(?:,?\s+(?i:apt|apartment|suite|ste|unit|floor|fl)\.?\s*#?\w+)?"  # second line
    r"(?:,\s*[A-Z][A-Za-z'-]+(?:\s[A-Z][A-Za-z'-]+){0,3}(?:,?\s+[A-Z]{2}\b)?(?:,?\s+\d{5}(?:-\d{4})?\b)?)?"
)
_ADDRESS = re.compile(
    # 221B Baker Street, London / 1600 Amphitheatre Pkwy, Mountain View, CA 94043 (the street's words
    # capitalised: "5 minutes to drive" is not an address)
    rf"\b\d{{1,6}}[A-Za-z]?\s+(?:[A-Z][A-Za-z'-]+\.?\s+){{1,4}}(?i:{_STREET_TYPES})\b\.?{_POSTCODE_TAIL}"
    # Hauptstraße 12 / Musterstr. 5a / Calle Mayor 5 / Rue de Rivoli 10 / 10 rue de Rivoli
    r"|\b[A-ZÄÖÜ][\wäöüß-]{0,40}?(?i:stra(?:ss|ß)e|str\.|weg|gasse|platz|allee)\s+\d{1,5}[a-z]?\b"
    r"(?:,?\s+\d{4,5}\s+[A-ZÄÖÜ][\wäöüß-]+)?"
    r"|\b(?i:rue|avenue|boulevard|calle|avenida|rua|plaza|praça)\s+(?:(?:de|del|da|do|la|le|des|du)\s+)?"
    r"[A-Z][\w'-]+(?:\s+[A-Z][\w'-]+){0,2},?\s+\d{1,5}\b"
    r"|\b\d{1,5},?\s+(?i:rue|avenue|boulevard|calle|avenida|rua)\s+(?:(?:de|del|da|do|la|le|des|du)\s+)?"
    r"[A-Z][\w'-]+(?:\s+[A-Z][\w'-]+){0,2}\b"
    r"|\b(?i:p\.?\s?o\.?\s+box)\s+\d+\b",
)
# UK postcodes (SW1A 1AA) and Dutch/German-style "1234 AB" / "10115 Berlin" are left to the address rule above;
# a UK postcode alone is distinctive enough to catch on its own.
_UK_POSTCODE = re.compile(r"\b[A-Z]{1,2}\d[A-Z\d]?\s\d[A-Z]{2}\b")

# --- amounts -------------------------------------------------------------------------------------------------

# Never starts inside a number ("1 234 567": one match, not one scan from each group).
_NUMBER = r"(?<![\d,.])(?<!\d[,.\s])(?:\d{1,3}(?:[,.\s]\d{3})*+(?:[.,]\d{1,2})?|\d++(?:[.,]\d{1,2})?)"
_CURRENCY_CODES = r"(?:USD|EUR|GBP|CHF|CAD|AUD|NZD|JPY|SEK|NOK|DKK|PLN|BRL|MXN|INR)"
_AMOUNT = re.compile(
    rf"(?:[$€£¥₹]|\b{_CURRENCY_CODES}\s?|\b(?:US|CA|AU|NZ)\$\s?)(?:{_NUMBER})(?:\s?(?:k|m|bn)\b)?"
    rf"|\b(?:{_NUMBER})\s?(?:[€£$]|{_CURRENCY_CODES}\b|(?:dollars|euros?|pounds|cents)\b)",
)

# --- times ---------------------------------------------------------------------------------------------------

_ZONE = r"(?:utc|gmt|cet|cest|eet|est|edt|cst|cdt|mst|mdt|pst|pdt|bst|ist|aest|aedt|jst)"
_MERIDIEM = r"[ap](?:\.m\.|m\b)"
_CLOCK = rf"\d{{1,2}}(?::\d{{2}}){{1,2}}(?:\s?{_MERIDIEM})?(?:\s?{_ZONE})?|\d{{1,2}}\s?{_MERIDIEM}(?:\s?{_ZONE})?"
_DATE = (
    r"\d{4}-\d{2}-\d{2}(?:[t ]\d{2}:\d{2}(?::\d{2})?(?:\.\d+)?(?:z|[+-]\d{2}:?\d{2})?)?"  # 2024-03-05T10:40Z
    r"|\d{1,2}[/.]\d{1,2}[/.]\d{2,4}"  # 05/03/2024, 5.3.24
    rf"|(?:{_WEEKDAYS},?\s+)?{_MONTHS}\.?\s+{_ORDINAL}(?:,?\s+\d{{4}})?"  # March 3rd, 2024
    rf"|(?:{_WEEKDAYS},?\s+)?(?:the\s+)?{_ORDINAL}(?:\s+of)?\s+{_MONTHS}\.?(?:,?\s+\d{{4}})?"  # 3 March 2024
    rf"|{_MONTHS}\.?\s+\d{{4}}"  # March 2024
)
_RELATIVE = (
    r"(?:an?|one|two|three|four|five|six|seven|eight|nine|ten|a few|a couple of|several|\d+)\s+"
    r"(?:seconds?|minutes?|mins?|hours?|hrs?|days?|weeks?|months?|years?)\s+ago"
    r"|(?:earlier|later)\s+(?:today|this\s+(?:morning|afternoon|evening|week))"
    r"|yesterday(?:\s+(?:morning|afternoon|evening|night))?|last\s+night|this\s+(?:morning|afternoon|evening)"
    rf"|(?:last|this\s+past)\s+(?:week|month|year|weekend|{_WEEKDAYS})"
    # a weekday is a specific with "on" ("on Monday"); "Monday to Friday" is a rule
    rf"|(?<=on\s){_WEEKDAYS}(?:\s+(?:morning|afternoon|evening|night))?"
)
_PREPOSITION = r"(?:on|at|from|since|by|until|till|before|after|as\s+of|dated|around|about|of|in)"
_TIMESTAMP = r"\d{4}-\d{2}-\d{2}[t ]\d{2}:\d{2}(?::\d{2})?(?:\.\d+)?(?:z|[+-]\d{2}:?\d{2})?"
# A general rule ("more than 30 days ago", "within 24 hours") is not a specific: those qualifiers keep it.
_GENERAL = (
    r"(?<!more than )(?<!less than )(?<!over )(?<!under )(?<!within )(?<!up to )(?<!at least )(?<!every )"
    r"(?<!each )"
)
# A clock time alone ("07:00 to 19:00 UTC" opening hours) is kept; with a date or a relative time it goes too.
_TIME = re.compile(
    rf"(?:,\s*)?(?:\b{_PREPOSITION}\s+)?{_GENERAL}\b(?:{_TIMESTAMP}|{_DATE}|{_RELATIVE})\b"
    rf"(?:,?\s+(?:at|around|about)\s+(?:{_CLOCK})(?![\w:]))?",
    re.IGNORECASE,
)

# --- names ---------------------------------------------------------------------------------------------------

_NAME_WORD = r"(?:[A-Z][a-zA-Z'’-]+|[A-Z]\.)"
_TITLE = r"(?:(?:mr|mrs|ms|miss|dr|prof|herr|frau|sr|sra|mme|m)\.?\s+)"
_GREETING = re.compile(
    r"^(?P<greet>[ \t>]*(?i:hi|hello|hey|dear|hiya|greetings|good\s+(?:morning|afternoon|evening)|hallo|hola"
    r"|bonjour|salut|ola|olá|ciao|guten\s+tag|liebe[rs]?|sehr\s+geehrte[rs]?|estimad[oa]|cher|chère)\b)"
    rf"(?P<name>(?:[ \t]+(?i:{_TITLE})?{_NAME_WORD}){{1,4}}?)"
    r"(?P<end>[ \t]*(?:[,!:.;—–-]|$))",
    re.MULTILINE,
)
_SIGN_OFF = (
    r"(?:best(?:\s+(?:regards|wishes))?|kind(?:est)?\s+regards|warm(?:est)?\s+regards|regards|cheers|thanks"
    r"|thank\s+you|many\s+thanks|sincerely|yours(?:\s+(?:truly|sincerely))?|all\s+the\s+best|talk\s+soon"
    r"|take\s+care|mit\s+freundlichen\s+gr(?:ü|ue)(?:ß|ss)en|viele\s+gr(?:ü|ue)(?:ß|ss)e|saludos|cordialement"
    r"|atenciosamente|un\s+saludo)"
)
# "Best, Maria" on one line, or "Best regards," and the name on the next line.
_SIGN_OFF_NAME = re.compile(
    rf"(?P<keep>^[ \t>]*(?i:{_SIGN_OFF})(?:[ \t]*[,!.]|(?=[ \t]*\n)))"
    rf"(?P<name>[ \t]*\n?[ \t>]*(?:[—–-]+[ \t]*)?{_NAME_WORD}(?:[ \t]+{_NAME_WORD}){{0,3}})[ \t]*$",
    re.MULTILINE,
)
_DASH_SIGNATURE = re.compile(rf"^[ \t]*(?:--|—|–)[ \t]*{_NAME_WORD}(?:[ \t]+{_NAME_WORD}){{0,3}}[ \t]*$", re.MULTILINE)
# A signature that names the team, not a person, is kept ("Best, the Support team").
_TEAM_WORDS = re.compile(r"\b(?:team|support|desk|service|customer care|helpdesk)\b", re.IGNORECASE)

_SENTENCE = re.compile(r"[^.!?\n]*(?:[.!?]+|$)")


def strip_specifics(
    text: str,
    *,
    names: Iterable[str] = (),
    keep: Iterable[str] = (),
    drop_if: Callable[[str], bool] | None = None,
) -> str:
    """`text` without personal data and one-ticket specifics (see the module docstring).

    `names`: the customer's names (as written on the account or the ticket), removed wherever they appear, each
    word of three letters or more on its own too. `keep`: strings left untouched (the deployment's own support
    addresses and links). `drop_if`: a sentence predicate (e.g. the prompt-injection detector); every sentence
    it flags is removed, and a text still flagged as a whole after that is removed entirely.
    """
    if not text:
        return text
    if drop_if is not None:
        text = drop_sentences(text, drop_if)
    protected: list[str] = []

    def protect(value: str) -> str:
        protected.append(value)
        return f"\x00{len(protected) - 1}\x00"

    for literal in sorted({k for k in keep if k}, key=len, reverse=True):
        text = text.replace(literal, protect(literal))
    text = _URL.sub(lambda m: protect(_scrub_link(m.group(0))), text)
    text = _EMAIL.sub("[email]", text)
    text = _remove_names(text, names)
    text = _UUID.sub("[id]", text)
    text = _PREFIXED_ID.sub("[id]", text)
    text = _ADDRESS.sub("[address]", text)
    text = _UK_POSTCODE.sub("[address]", text)
    text = _AMOUNT.sub("[amount]", text)
    text = _TIME.sub("", text)
    text = _LABELLED_ID.sub(lambda m: f"{m.group('label')}{m.group('sep') or ' '}[id]", text)
    text = _NAMED_ID.sub(_named_id, text)
    text = _CODE_ID.sub(_code_id, text)
    text = _HASH_ID.sub("[id]", text)
    text = _CARD_TAIL.sub(lambda m: f"{m.group(1)}[id]", text)
    text = _PHONE.sub(_phone_or_keep, text)
    text = _LONG_NUMBER.sub("[id]", text)
    text = _tidy(text)
    return re.sub(r"\x00(\d+)\x00", lambda m: protected[int(m.group(1))], text)


def drop_sentences(text: str, flagged: Callable[[str], bool]) -> str:
    """`text` without the sentences `flagged` marks; empty when the rest is still flagged as a whole (an
    instruction spread over sentences that are harmless one by one)."""
    lines = []
    for line in text.split("\n"):
        kept = [s for s in _SENTENCE.findall(line) if s.strip() and not flagged(s.strip())]
        lines.append("".join(kept).strip() if len(kept) != len(_SENTENCE.findall(line)) else line)
    cleaned = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    if cleaned and flagged(cleaned):
        cleaned = "\n".join(line for line in cleaned.split("\n") if not flagged(line)).strip()
        if cleaned and flagged(cleaned):
            return ""
    return cleaned


def _scrub_link(url: str) -> str:
    """A link keeps its place unless it names someone or something of one account."""
    if (
        "@" in url
        or _UUID.search(url)
        or _PREFIXED_ID.search(url)
        or re.search(r"\d{5,}", url)
        or re.search(r"[?&](?:token|key|code|sig|signature|email|user|account|session|invoice|order)=", url, re.I)
    ):
        return "[link]"
    return url


def _named_id(match: re.Match[str]) -> str:
    # "workspace ID: acme-corp" or "workspace ID acme-42"; not "your workspace ID and what you noticed"
    if ":" in match.group("sep") or "#" in match.group("sep") or re.search(r"[\d_-]", match.group("id")):
        return f"{match.group('label')}{match.group('sep') or ' '}[id]"
    return match.group(0)


def _code_id(match: re.Match[str]) -> str:
    # INV-2024-0042 is an id; COVID-19 or MFA-2 is not
    return "[id]" if sum(ch.isdigit() for ch in match.group(0)) >= 3 else match.group(0)


def _phone_or_keep(match: re.Match[str]) -> str:
    value = match.group(0)
    digits = sum(ch.isdigit() for ch in value)
    # Seven digits or more and some grouping or a country code: a phone number. A bare long run is an id.
    if digits < 7 or digits > 15:
        return value
    if not re.search(r"[\s().-]", value) and not value.startswith("+"):
        return value
    return "[phone]"


def _remove_names(text: str, names: Iterable[str]) -> str:
    text = _GREETING.sub(lambda m: m.group("greet") + m.group("end"), text)

    def sign_off(m: re.Match[str]) -> str:
        return m.group(0) if _TEAM_WORDS.search(m.group("name")) else m.group("keep")

    text = _SIGN_OFF_NAME.sub(sign_off, text)
    text = _DASH_SIGNATURE.sub(lambda m: m.group(0) if _TEAM_WORDS.search(m.group(0)) else "", text)
    words: set[str] = set()
    for name in names:
        name = " ".join((name or "").split())
        if not name or "@" in name:
            continue
        words.add(name)
        words.update(part for part in re.split(r"[\s,]+", name) if len(part.strip(".")) >= 3)
    # As written, capitalised or in capitals, never in lower case: "Mark" the customer, "mark" the verb.
    variants = {form for word in words for form in (word, word.title(), word.upper()) if form[:1].isupper()}
    for word in sorted(variants, key=len, reverse=True):
        pattern = re.compile(rf"(?<![\w@]){re.escape(word)}(?![\w@])")
        text = pattern.sub("[name]", text)  # a literal replacement: a name with "\" in it is text, not a group
    return re.sub(r"\[name\](?:\s+\[name\])+", "[name]", text)


def _tidy(text: str) -> str:
    """Spaces and punctuation left behind by removed words."""
    text = re.sub(r"(?<=\S)[ \t]{2,}(?=\S)", " ", text)  # indentation stays (Markdown code blocks)
    text = re.sub(r"[ \t]+([,.;:!?)])", r"\1", text)
    text = re.sub(r"\(\s*[,;]?\s*\)", "", text)
    text = re.sub(r",\s*([.;:!?])", r"\1", text)
    text = re.sub(r"([,;])(?:\s*[,;])+", r"\1", text)
    text = re.sub(r"(^|\n)[ \t]*[,;][ \t]*", r"\1", text)
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()
