"""A ticket split into what it asks: its questions and requests, each with the sentence of context before it.

Customers often ask two or three things in one message ("how do I update those? and which rate wins?"); the reply
answers each from its own evidence, and a question nothing answers is handed to a person instead of guessed.
Pure functions: no model, no database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

MAX_QUESTIONS = 4
# A question shorter than this says too little to be answered on its own ("Why?", "Any news?"): it joins the
# sentence before it.
MIN_QUESTION_CHARS = 12
SHORT_QUESTION_CHARS = 40
# A question with at most this many words that name something ("What do I actually need to do so this goes
# through?": none) leans on what was said before it as a short one does. Measured on the two demo deployment sets:
# 2 more right drafts on the second, none lost on the first.
VAGUE_CONTENT_WORDS = 3
# A short question reads with at most this many sentences said before it.
MAX_CONTEXT_SENTENCES = 3

# Sentence ends: terminal punctuation followed by space, or a line break (bullets and short lines are sentences).
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*[ \t]+|\s*\n+\s*")
# Abbreviations whose full stop does not end a sentence; the space after them is made non-breaking.
_ABBREVIATION = re.compile(
    r"\b(?:e\.g|i\.e|etc|vs|approx|z\.\s?B|bzw|ca|usw|p\.\s?ex|p\.\s?e|Nr|No|Dr|Mr|Mrs|Ms)\.[ \t]", re.IGNORECASE
)
BULLET = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)])\s+")
# A greeting or sign-off line, whole (stripped): what a reply or a ticket opens and closes with.
GREETING = re.compile(
    r"^(?:dear|hi|hello|hey|greetings|good (?:morning|afternoon|evening)|sehr geehrte[rs]?|liebe[rs]?|hallo|"
    r"guten (?:tag|morgen)|estimad[oa]s?|hola|buen(?:os|as) d[ií]as|querid[oa]|bonjour|cher|ch[èe]re|madame|"
    r"monsieur|prezad[oa]s?|ol[áa]|bom dia|boa tarde|caro|cara|ciao|buongiorno|buonasera|salve|gentile|"
    r"goedemorgen|goedemiddag|beste)\b[^\n]{0,60}$",
    re.IGNORECASE,
)
SIGNOFF = re.compile(
    r"^(?:(?:best|kind|warm|many)\s+)?(?:regards|wishes|best|cheers|thanks(?: (?:a lot|in advance|so much))?|"
    r"thank you(?: in advance)?|sincerely|mit freundlichen gr(?:ü|ue|u)(?:ß|ss|s)en|viele gr(?:ü|ue|u)(?:ß|ss|s)e|"
    r"beste gr(?:ü|ue|u)(?:ß|ss|s)e|danke(?: schön| im voraus)?|saludos(?: cordiales)?|atentamente|un saludo|"
    r"gracias(?: de antemano)?|cordialement|bien cordialement|merci(?: d'avance| beaucoup)?|atenciosamente|"
    r"cumprimentos|obrigad[oa]|cordiali saluti|distinti saluti|saluti|grazie(?: mille| in anticipo)?|"
    r"met vriendelijke groet(?:en)?|(?:vriendelijke )?groet(?:en|jes)?|(?:alvast )?bedankt)\b[^\n]{0,40}$",
    re.IGNORECASE,
)
# Words that open a question or a request, in the languages the phrasing module speaks.
_INTERROGATIVE = re.compile(
    r"^(?:how|what|where|when|why|which|who|whom|whose|can|could|may|might|is|are|was|were|do|does|did|will|would|"
    r"should|shall|have|has|am|wie|was|wo|wohin|wann|warum|wieso|weshalb|welche[rsnm]?|wer|kann|k[öo]nnen|"
    r"k[öo]nnt|ist|sind|gibt|muss|m[üu]ssen|soll|sollen|darf|d[üu]rfen|habe|haben|hat|werden|wird|c[óo]mo|qu[ée]|"
    r"d[óo]nde|cu[áa]ndo|por qu[ée]|cu[áa]l(?:es)?|qui[ée]n(?:es)?|puedo|puede|podemos|pueden|hay|es posible|"
    r"comment|quoi|o[ùu]|quand|pourquoi|quel(?:le)?s?|qui|est-ce|peut-on|puis-je|pouvez-vous|peux-tu|y a-t-il|"
    r"como|o que|onde|quando|por que|qual|quais|quem|posso|pode|podem|podemos|[ée] poss[íi]vel|come|cosa|"
    r"dove|perch[ée]|quale|quali|chi|possiamo|potete|c'[èe]|[èe] possibile|hoe|wat|waar|wanneer|waarom|welke|"
    r"wie|kunnen|kun|kunt|moet|moeten|mag|is er)\b",
    re.IGNORECASE,
)
# A request: asking for something anywhere in the sentence ("could you please…", "let me know…"), or saying what
# one needs or wants when the sentence opens with it ("We need to change the billing email."). Said later in a
# sentence, a need is usually the situation ("… no email has arrived, and I need to approve timesheets before
# noon"), not something asked.
_REQUEST = re.compile(
    r"\b(?:please|pls|kindly|help me|help us|let me know|tell me|tell us|explain|is there a way|any way to|bitte|"
    r"por favor|s'il vous pla[îi]t|merci de|por gentileza)\b"
    r"|^(?:(?:so|also|now|but|and|hi|hello|hey)\b[,!]?\s+)?(?:i need to|we need to|i want to|we want to|"
    r"i'd like to|we'd like to|i would like to|we would like to|ich m[öo]chte|wir m[öo]chten|ich will|wir wollen|"
    r"quisiera|quisi[ée]ramos|necesito|necesitamos|me gustar[íi]a|je voudrais|nous voudrions|j'aimerais|"
    r"nous aimerions|je souhaite|nous souhaitons|gostaria|gostar[íi]amos|preciso|precisamos)\b",
    re.IGNORECASE,
)
# A statement adding a further matter to a ticket that asks something ("Also, in the preview some names come out
# garbled.", "Second, the shared calendar's meetings don't show up."): a problem the reply answers too, unless the
# next sentence asks about it (then it is that question's context).
_FURTHER = re.compile(
    r"^(?:also|additionally|separately|besides|plus|on top of that|one more thing|another (?:thing|issue|problem)|"
    r"second(?:ly)?|third(?:ly)?|au(?:ß|ss)erdem|zudem|zweitens|adem[áa]s|tambi[ée]n|otra cosa|aussi|de plus|"
    r"par ailleurs|deuxi[èe]mement|al[ée]m disso|tamb[ée]m|outra coisa)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Question:
    """One thing the customer asks. `context` is what was said before it (the sentence before; for a short, vague
    question up to three), which often carries what it is about."""

    text: str
    context: str = ""
    explicit: bool = True
    # A short or vague question ("What should I do?") whose context is what was said before it: it asks about that.
    leans: bool = False

    @property
    def query(self) -> str:
        """What to search and read with: the question with its context."""
        return f"{self.context} {self.text}".strip() if self.context else self.text

    @cached_property
    def parts(self) -> list[str]:
        """What the question asks, clause by clause (`clauses`): one part for a simple question. A vague question
        leaning on several sentences ("The import refuses the whole file. The accents come out garbled. What should
        I do?") asks about each of them."""
        if self.leans:
            said = [s for s in sentences(self.context) if len(s.split()) >= MIN_CLAUSE_WORDS]
            if len(said) > 1:
                return said
        return clauses(self.text)


def sentences(text: str) -> list[str]:
    """The text's sentences and short lines, bullets unwrapped, greeting and sign-off lines left out."""
    out: list[str] = []
    text = _ABBREVIATION.sub(lambda m: m[0].replace(" ", "\u00a0"), text)
    lines = [line.strip() for line in text.replace("\r\n", "\n").split("\n")]
    # A sign-off line ends the message: what follows is a name, a title, a signature.
    for i, line in enumerate(lines):
        if SIGNOFF.match(line):
            lines = lines[:i]
            break
    for line in lines:
        if not line or GREETING.match(line):
            continue
        line = BULLET.sub("", line)
        out.extend(part.replace("\u00a0", " ").strip() for part in _SENTENCE_END.split(line) if part and part.strip())
    return out


def is_question(sentence: str) -> bool:
    stripped = sentence.strip().lstrip("¿¡-–—•*>( ")
    if stripped.endswith("?") or "?" in stripped[-3:]:
        return True
    return bool(_INTERROGATIVE.match(stripped) and len(stripped.split()) >= 3) or bool(_REQUEST.search(stripped))


# Where one sentence asks a second thing: a comma, semicolon or "and" (five languages), then an interrogative or
# request, possibly after one adverb ("…, and roughly how long…", "…, is there a key…"). "Or" joins alternatives of
# one question ("is it in Starter or do we need Pro?"), not two questions.
_CLAUSE_BREAK = re.compile(r"\s*[,;]\s*(?:(?:and|und|y|e|et)\s+)?|\s+(?:and|und|y|e|et)\s+")
MIN_CLAUSE_WORDS = 3


def _opens_question(text: str) -> bool:
    """The text starts as a question or request does, or does after one leading adverb."""
    second = text.split(" ", 1)[-1]
    return bool(_INTERROGATIVE.match(text) or _REQUEST.match(text) or _INTERROGATIVE.match(second))


def clauses(question: str) -> list[str]:
    """The things one question sentence asks: "How do we ask for a refund, and roughly how long does it take?"
    asks two. A clause starts where a break (`_CLAUSE_BREAK`) is followed by an interrogative or request, each
    side at least three words; an opening clause that asks nothing ("If I find something, where…") stays with
    the one after it. Otherwise the sentence is one clause. Pure: no model."""
    text = question.strip()
    spans: list[tuple[int, int]] = []  # (where a clause starts, where the break before it starts)
    start = 0
    for m in _CLAUSE_BREAK.finditer(text):
        rest = text[m.end() :]
        if (
            _opens_question(rest)
            and len(text[start : m.start()].split()) >= MIN_CLAUSE_WORDS
            and len(rest.split()) >= MIN_CLAUSE_WORDS
        ):
            spans.append((start, m.start()))
            start = m.end()
    if not spans:
        return [text]
    spans.append((start, len(text)))
    parts = [text[a:b].strip() for a, b in spans]
    if not _opens_question(parts[0]):
        parts[:2] = [f"{parts[0]}, {parts[1]}"]
    return parts


# What kind of answer a question asks for, and what a sentence of the help centre gives: a place in the product
# ("where…?" -> "Settings → Billing"), a duration ("how long…?" -> "within 5 business days"), a quantity ("how
# many…?" -> "up to 50,000 rows") or steps ("how do I…?" -> "Open… Click…"). Classic answer-type matching: the
# embedding alone reads "how long does a refund take" as close to every sentence about refunds.
_ASKS: dict[str, re.Pattern[str]] = {
    "place": re.compile(r"\b(?:where|wo|wohin|d[óo]nde|o[ùu]|onde|which (?:menu|page|screen|tab|setting))\b", re.I),
    "duration": re.compile(
        r"\b(?:how (?:long|quickly|soon|fast)|how many (?:days|hours|weeks|minutes)|when (?:will|does|do|is|are|can)|"
        r"on what (?:day|date)|wie (?:lange|schnell)|wann|cu[áa]nto tiempo|cu[áa]ndo|combien de temps|quand|"
        r"quanto tempo|quando)\b",
        re.I,
    ),
    "quantity": re.compile(
        r"\b(?:how (?:many|much)|wie viele?|cu[áa]nt[oa]s?|combien|quant[oa]s?|limits?|maximum|minimum)\b", re.I
    ),
    "steps": re.compile(
        r"\b(?:how (?:do|can|should|would) (?:i|we|you|they|he|she)|how to|is there a way|wie (?:kann|k[öo]nnen)|"
        r"c[óo]mo (?:puedo|podemos|se)|comment (?:puis-je|peut-on|faire)|como (?:posso|podemos|fa[çc]o))\b",
        re.I,
    ),
}
_GIVES: dict[str, re.Pattern[str]] = {
    "place": re.compile(
        r"→|›|\b(?:Settings|Einstellungen|Configuraci[óo]n|Param[èe]tres|Configura[çc][õo]es)\b|\w > \w"
    ),
    "duration": re.compile(
        r"\b(?:\d+(?:[–-]\d+)?\s*(?:business |working |calendar )?(?:seconds?|minutes?|hours?|days?|weeks?|months?|"
        r"years?)|within|immediately|at once|right away)\b",
        re.I,
    ),
    "quantity": re.compile(r"\d"),
    "steps": re.compile(
        r"^(?:\d+[.)]\s*)?(?:open|click|choose|select|go to|enter|tick|type|press|sign in|add|turn on|turn off|set|"
        r"copy|paste|drag|upload|download|find|pick|switch)\b",
        re.I,
    ),
}


def asked_for(question: str) -> frozenset[str]:
    """The kinds of answer the question asks for (`_ASKS`); empty when it asks for none of them."""
    return frozenset(kind for kind, pattern in _ASKS.items() if pattern.search(question))


def gives(sentence: str) -> frozenset[str]:
    """The kinds of answer a help-centre sentence gives (`_GIVES`)."""
    return frozenset(kind for kind, pattern in _GIVES.items() if pattern.search(sentence))


def split_questions(subject: str, body: str) -> list[Question]:
    """The ticket's questions and requests in order, each with the sentence before it as context.

    A message that asks nothing explicitly (a report: "the export button does nothing") is one implicit
    question: its subject and opening sentences.
    """
    found: list[Question] = []
    previous = ""
    said: list[str] = []  # what was said since the last question
    body_sentences = sentences(body)
    for n, sentence in enumerate(body_sentences):
        if _FURTHER.match(sentence) and not is_question(sentence):
            following = body_sentences[n + 1] if n + 1 < len(body_sentences) else ""
            if not (following and is_question(following)):
                found.append(Question(sentence, explicit=False))  # a new matter: nothing before it is its context
                said, previous = [], sentence
                continue
        if is_question(sentence):
            if len(sentence) < MIN_QUESTION_CHARS and found:
                last = found[-1]
                found[-1] = Question(f"{last.text} {sentence}", last.context, last.explicit, last.leans)
            elif not any(_same(sentence, q.text) for q in found):
                # A short question leans on what comes before it ("Can I pick them?" on the sentence before,
                # even another question; "What's going on?" on everything said since the last question).
                leans = len(sentence) < SHORT_QUESTION_CHARS or len(content_words(sentence)) <= VAGUE_CONTENT_WORDS
                if leans and said:
                    found.append(Question(sentence, context=" ".join(said[-MAX_CONTEXT_SENTENCES:]), leans=True))
                else:
                    context = previous if previous and (leans or not is_question(previous)) else ""
                    if leans and found and found[-1].leans and context == found[-1].text:
                        # A short question right after another one leaning on what was said ("Related? What
                        # should we use instead?") leans on the same: the question before it says nothing alone.
                        context = found[-1].query
                    found.append(Question(sentence, context=context))
            said = []
        else:
            said.append(sentence)
        previous = sentence
    if not any(q.explicit for q in found):
        found = []  # a further matter counts beside a question; a report alone is read from its opening
    if not found and subject.strip() and is_question(subject.strip()):
        found.append(Question(subject.strip()))
    if not found:
        opening = " ".join(sentences(body)[:2])
        text = f"{subject.strip()}. {opening}".strip(". ") if subject.strip() else opening
        return [Question(text or subject.strip(), explicit=False)] if (text or subject.strip()) else []
    asked = [n for n, q in enumerate(found) if q.explicit]
    if len(asked) == 1 and not found[asked[0]].context and subject.strip():
        # A lone question reads with the subject as its context ("Billing currency after moving": "can we...?").
        found[asked[0]] = Question(found[asked[0]].text, context=subject.strip(), explicit=True)
    return found[:MAX_QUESTIONS]


# Words of four letters or more that name nothing a help centre is about: question words, modal and everyday
# verbs, pronouns, fillers (English; in the other languages every longer word counts, so a question there leans
# only when short).
_EMPTY_WORDS_TEXT = (
    "what when where which while would could should there their theirs they them this that these those "
    "have does with from into through your yours about just also then than some something anything everything "
    "nothing actually really still need needs want wants know tell help please here make sure able thanks "
    "other others done going doing goes happen happens happened work works working right properly exactly "
    "again instead anyway maybe perhaps possible ways thing things"
)
_EMPTY_WORDS = frozenset(_EMPTY_WORDS_TEXT.split())


def content_words(sentence: str) -> list[str]:
    """The sentence's words that may name what it is about: letters only, four or more, not `_EMPTY_WORDS`."""
    return [w for w in re.findall(r"[^\W\d_]{4,}", sentence.lower()) if w not in _EMPTY_WORDS]


def _same(a: str, b: str) -> bool:
    fa, fb = _words(a), _words(b)
    return bool(fa) and len(fa & fb) / len(fa | fb) >= 0.8


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


_LANGUAGE_WORDS: dict[str, frozenset[str]] = {
    lang: frozenset(words.split())
    for lang, words in {
        # "a" is Portuguese too: without it, "a" in a short English ticket made it Portuguese.
        "en": "the and is are you we our my how what can do does with for this that have not a i to of on at be was "
        "will there any your me or if",
        "de": "der die das und ist sind wir unser ich wie was kann können nicht mit für ein eine haben den dem auf "
        "sich sie zu",
        "es": "el la los las y es son nosotros nuestro nuestra nuestros cómo qué puedo podemos no con para una tengo "
        "hay del mi mis su por muy que se lo al pero desde este esta",
        "fr": "le la les et est sont nous notre je comment quoi peut pouvons pas avec pour une avons vous des du "
        "mes mon ma au aux ce cette",
        "pt": "o a os as e é são nós nosso nossa nossos como que posso podemos não com para uma temos do da dos das "
        "meu minha um você por em na ao mas também",
        # Italian and Dutch by words the other languages here do not use ("de", "en", "il", "con" are theirs too).
        "it": "che di per sono gli della delle degli nostro nostra nostri abbiamo possiamo anche questo questa mio "
        "ci nel sul alla ho hanno è",
        "nl": "het een zijn wij ons onze ik hoe wat kunnen niet met voor van dat hebben heb mijn maar ook dit deze "
        "naar bij wordt worden geen nog",
    }.items()
}


def language_of(text: str) -> str:
    """The ticket's language among those the reply phrases exist in, by its most common function words."""
    words = re.findall(r"[\wéèêàâçíóúãõüöäß]+", text.lower())
    counts = {lang: sum(w in vocab for w in words) for lang, vocab in _LANGUAGE_WORDS.items()}
    best = max(counts, key=lambda lang: counts[lang])
    return best if counts[best] > counts["en"] else "en"
