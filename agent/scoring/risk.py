"""Risk signals in a ticket that no confidence may override: demands for actions the agent cannot take, prompt
injection, security / data-loss / outage reports, legal threats and repeated contact about the same problem.

These are the patterns; `agent.scoring.risk_model` is the learned detector beside them, for reports and demands
in words no pattern lists (both run in `prioritize`).

Patterns are generic phrasings in English, German, Spanish, French and Portuguese, matched on a folded copy of the
text (NFKC, invisible characters dropped, lower case, accents stripped), so obfuscation the ingest normalizer
missed, or text that never went through it, is still caught.

The whole-text tables (injection, incidents, threats, repeats) run on RE2: a backtracking engine tries every
alternative at every position, which on a ticket-length text and its decoded variants cost milliseconds per
ticket; RE2's automaton reads the text once. RE2's word boundary is ASCII-only, so a phrase glued to a
non-Latin letter still matches; on every text of the dev data and the injection corpora both engines find the
same matches. Sentence-level demand patterns, one of which needs a lookahead RE2 lacks, stay on `re`.
"""

# ruff: noqa: E501  (pattern tables read best with one alternative per line)
from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import re2

RiskKind = Literal[
    "refund_demand",
    "credit_demand",
    "account_change_demand",
    "action_demand",
    "prompt_injection",
    "security_incident",
    "data_loss",
    "outage",
    "legal_threat",
    "repeated_contact",
    "data_exfiltration",
    "account_takeover",
]
# escalate: never sent, no further automatic cycles (a re-run cannot change a demand, a threat or an injection).
# escalate_urgent: never sent, priority urgent. review: may be sent, but only flagged for a human.
RiskAction = Literal["escalate", "escalate_urgent", "review"]

ACTIONS: dict[str, RiskAction] = {
    "refund_demand": "escalate",
    "credit_demand": "escalate",
    "account_change_demand": "escalate",
    "action_demand": "escalate",
    "prompt_injection": "escalate",
    "data_exfiltration": "escalate",
    "security_incident": "escalate_urgent",
    "data_loss": "escalate_urgent",
    "outage": "escalate_urgent",
    "account_takeover": "escalate_urgent",
    "legal_threat": "escalate",
    "repeated_contact": "review",
}
DEMANDS = frozenset({"refund_demand", "credit_demand", "account_change_demand", "action_demand"})
# Kinds a later cycle cannot change: escalate once and leave for a person.
NO_RETRY = DEMANDS | {"prompt_injection", "data_exfiltration"}
URGENT = frozenset({"security_incident", "data_loss", "outage", "account_takeover"})


@dataclass(frozen=True, slots=True)
class Risk:
    kind: RiskKind
    evidence: str
    # Set by the learned detector (`agent.scoring.risk_model`): its probability of a risk and its threshold.
    score: float | None = None
    threshold: float | None = None

    @property
    def action(self) -> RiskAction:
        return ACTIONS[self.kind]

    def describe(self) -> str:
        if self.score is not None:
            return (
                f"{self.kind.replace('_', ' ')} (learned detector {self.score:.2f} \u2265 {self.threshold or 0:.2f}): "
                f"\u201c{self.evidence}\u201d"
            )
        return f"{self.kind.replace('_', ' ')}: \u201c{self.evidence}\u201d"


# --- text folding -------------------------------------------------------------------------------------------

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u00b4": "'"})
# Cyrillic and Greek letters that look Latin ("Ignоrе" with Cyrillic o and e): folded to the Latin letter.
_HOMOGLYPHS = str.maketrans(
    "аеорсхуіјѕԁһӏкмтвнαεορτυνικχ",
    "aeopcxyijsdhlkmtbhaeoptynikx",
)


@functools.lru_cache(maxsize=1024)
def fold(text: str) -> str:
    """The text as patterns see it: NFKC, format/control characters removed, lower case, no accents."""
    text = unicodedata.normalize("NFKC", text)
    # Cf covers zero-width spaces and joiners, bidi overrides and the Unicode tag block; Cc the control chars.
    # Each distinct character is looked at once (a ticket has a few dozen), not each of its thousands.
    hidden = {ch for ch in set(text) if unicodedata.category(ch) in {"Cf", "Cc"} and ch not in "\n\t"}
    text = text.translate(dict.fromkeys(map(ord, hidden))) if hidden else text
    text = text.translate(_APOSTROPHES).lower().translate(_HOMOGLYPHS).replace("ß", "ss")
    text = unicodedata.normalize("NFKD", text)
    marks = {ch for ch in set(text) if unicodedata.combining(ch)}
    text = text.translate(dict.fromkeys(map(ord, marks))) if marks else text
    # Spaces collapse but line breaks stay: a "system:" line is only an injection at the start of a line.
    return "\n".join(" ".join(line.split()) for line in text.splitlines() if line.strip())


def _compact(folded: str) -> str:
    """Letters only: catches 'i g n o r e  p r e v i o u s' and words split by stripped invisible characters."""
    return re.sub(r"[^a-z]", "", folded)


def _sentences(folded: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?;])\s+|\s*\n\s*", folded) if s.strip()]


def _rx(*alternatives: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{a})" for a in alternatives))


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.max_mem = 64 << 20  # the injection table's automaton outgrows RE2's 8 MiB default


def _automaton(*alternatives: str) -> Any:
    """`_rx` compiled by RE2 (same `search`/match API): one pass over the text whatever the number of alternatives."""
    return re2.compile("|".join(f"(?:{a})" for a in alternatives), _RE2_OPTIONS)


# --- demands ------------------------------------------------------------------------------------------------

_MONEY = r"(?:full |partial |a |my |the |our |your )?(?:refund|reimbursement|money back|credit|store credit|compensation|chargeback reversal|discount|voucher|free months?)"
_ACCOUNT = (
    r"(?:my |our |the |this )(?:account|subscription|plan|membership|licen[cs]e|seats?|profile|billing details|"
    r"email(?: address)?|password|phone number|username|user name|address|payment method|card on file|tier|"
    r"trial(?: period| end(?: date)?)?|renewal(?: date)?)"
)
_DO_MONEY = r"(?:refund|reimburse|credit|compensate|pay)"
_DO_ACCOUNT = (
    r"(?:cancel|close|delete|remove|deactivate|terminate|upgrade|downgrade|change|switch|update|modify|edit|"
    r"reset|unlock|reactivate|transfer|extend|unsubscribe|erase|move|postpone|delay|defer|push back|backdate)"
)
# A sentence that asks how to do something, or whether something is possible, is answered like any other.
_HOW_TO = _rx(
    r"\bhow (?:do|can|could|would|should|will|to|long|much|does)\b",
    r"\b(?:where|when) (?:do|can|could|should|will|would|is|are)\b",
    r"\bwhat (?:is|are|do|does|should|would|happens)\b",
    r"\b(?:can|could|may|should|do) i\b",
    r"\bam i (?:able|allowed|eligible)\b",
    r"\bis (?:it|there) (?:possible|a way|an option)\b",
    r"\b(?:help|assist|guide|show|tell|explain to) me\b",
    r"\bi (?:want|would like|'d like|need|wish) to (?:know|understand|learn|find out|check|see)\b",
    r"\b(?:wondering|curious|question about|steps to|instructions for|policy)\b",
    r"\bwie (?:kann|konnen|lange|viel|funktioniert)\b",
    r"\b(?:como|cuando|donde) (?:puedo|se|hago|funciona)\b",
    r"\bcomment (?:puis|faire|est|fonctionne)\b",
    r"\b(?:como|onde|quando) (?:posso|faco|funciona)\b",
    # "Can you tell me how…" in the other languages asks for an explanation, not an action.
    r"\bwie (?:ich|wir|man)\b|\b(?:konnen|konnten|wurden) sie (?:mir|uns) (?:sagen|erklaren|zeigen)\b",
    r"\b(?:pueden|podrian|puede usted|podria usted) (?:decirme|decirnos|explicarme|explicarnos|indicarme|indicarnos)\b",
    r"\b(?:pouvez|pourriez)[- ]vous (?:me|nous) (?:dire|expliquer|indiquer|montrer)\b",
    r"\b(?:podem|poderiam|podiam)(?: voces)? (?:me |nos )?(?:dizer|explicar|informar|mostrar)\b",
)
# Insistence or entitlement: a demand even when phrased around a question.
_INSIST = _rx(
    r"\bi (?:demand|insist|require)\b",
    r"\bi am entitled to\b",
    r"\byou owe me\b",
    r"\bi expect (?:you|your (?:team|company)) to\b",
    r"\bich (?:verlange|fordere|bestehe)\b",
    r"\b(?:exijo|exigimos|reclamo)\b",
    r"\bj'exige\b",
)
# "Can you …?" asking the team to act, in the five languages (the polite plural or inverted forms: "podem …?",
# "¿pueden …?", "pouvez-vous …?", "können Sie …?"; not the impersonal "se puede …?", which asks what is possible).
_YOU_ABROAD = (
    r"(?:podem|poderiam|podiam)(?: voces)?|(?:pueden|podrian)(?: ustedes)?|(?:puede|podria) usted|"
    r"(?:pouvez|pourriez)[- ]vous|(?:konnen|konnten|wurden) sie"
)
# Someone at support asked to act: "could someone on your end…", "would you mind…", "is there any way you could…".
_SUPPORT_ASKED = (
    r"(?:can|could|would|will) (?:someone|somebody|your (?:team|billing team|support team|billing|support))|"
    r"would you mind|is there any way you could"
)
_YOU_DIRECTIVE = re.compile(
    rf"\b(?:(?:can|could|would|will|won't|must|should|need to|have to) you|{_YOU_ABROAD}|any chance (?:you|someone|"
    r"somebody) (?:can|could)|(?:would|will|are) you (?:be )?able to|is it possible for you to|(?:i|we) need you"
    rf"(?: guys)? to|{_SUPPORT_ASKED})\b"
)
_MONEY_DEMAND = _rx(
    rf"\b{_DO_MONEY} (?:me|us)\b",
    rf"\b(?:please |kindly |just )?(?:issue|give|send|process|grant|approve|transfer|apply|return|pay)(?: me| us)? {_MONEY}\b",
    r"\b(?:give|send|pay|return) (?:me|us) (?:back )?(?:my |our |the )?money(?: back)?\b",
    rf"\b(?:can|could|would|will|must|should|need to|have to) you(?: please)? (?:{_DO_MONEY}|issue|process|grant|approve) (?:me|us|my|our|the|a|this|that|it)\b",
    rf"\b(?:can|could|would|will|must|should|need to|have to) you(?: please)? (?:give|send|return) (?:me|us) (?:back )?{_MONEY}\b",
    rf"\bi (?:want|need|demand|expect|deserve|insist on|would like|'d like|require) (?:a |my |the |our |full |an immediate )?{_MONEY}\b",
    rf"\b(?:i want|i need|i expect) (?:you|your team) to {_DO_MONEY}\b",
    rf"(?:^|\bplease |\bkindly )(?:just )?{_DO_MONEY} (?:my|the|this|our) (?:account|card|order|payment|charge|money|purchase|subscription)\b",
    r"\b(?:erstatten|uberweisen) sie (?:mir|uns)\b",
    r"\b(?:geben|zahlen) sie (?:mir|uns) (?:mein|unser|das) geld zuruck\b",
    r"\bich (?:will|mochte|verlange|fordere) (?:eine |meine |die )?(?:ruckerstattung|erstattung|gutschrift|mein geld zuruck)\b",
    r"\b(?:quiero|exijo|necesito) (?:un |el |mi )?(?:reembolso|mi dinero de vuelta|devolucion de mi dinero)\b",
    r"\b(?:devuelvanme|devuelveme|reembolsenme|reembolseme)\b",
    r"\brembourse[sz][- ]moi\b",
    r"\b(?:je veux|j'exige|je demande) (?:un |mon |le )?remboursement\b",
    r"\brendez[- ]moi mon argent\b",
    r"\b(?:quero|exijo|preciso de) (?:o |um |meu )*reembolso\b",
    r"\bdevolvam (?:o )?meu dinheiro\b",
    # Wanting an amount back: "quero o valor … de volta", "queremos … de vuelta", "wir wollen … zurück".
    r"\b(?:quero|queremos|exijo|exigimos|quiero)\b[^.!?]{0,80}\bde (?:volta|vuelta)\b",
    r"\b(?:ich will|ich mochte|wir wollen|wir mochten|ich verlange|wir verlangen|ich erwarte|wir erwarten)\b"
    r"[^.!?]{0,80}\b(?:zuruck\w*|erstattet|ruckerstattet|gutgeschrieben)\b",
    r"\b(?:espero|esperamos) que (?:me|nos) (?:devuelvan|reembolsen|abonen|devolvam|reembolsem)\b",
    r"\b(?:j'attends|nous attendons) (?:que vous (?:me |nous )?rembours|un remboursement)",
    r"\b(?:je veux|nous voulons|j'exige|nous exigeons)\b[^.!?]{0,80}\b(?:rembourse|restitue)",
    r"\b(?:i|we) (?:want|need|expect|demand) (?:the |our |my |that )?(?:money|amount|difference|payment|charges?|fees?)\b[^.!?]{0,60}\bback\b",
    # Claimed as already agreed, for the reply to confirm: "the account owner has approved a full refund".
    r"\b(?:has|have|had|was|were|already) (?:been )?(?:approved|authori[sz]ed|agreed(?: to)?|promised|granted|"
    r"confirmed) (?:us |me )?(?:a |the |our |my |an )?(?:full |partial )?(?:refund|reimbursement|credit|compensation|"
    r"discount|free months?)\b",
    # Announced rather than asked: "we will be deducting the credit from the next payment".
    r"\b(?:we|i)(?: will| are going to| shall|'ll)(?: be)? (?:apply|applying|deduct|deducting|withhold|withholding|"
    r"offset|offsetting|short-pay|short-paying)\b[^.!?]{0,60}\b(?:credit|refund|amount|fee|penalty|difference|discount)\b",
)
# Asking the team to carry out an operation on the account, however politely ("could someone on your end bump us up
# to the annual plan?", "would you mind switching our workspace to monthly billing?", "can you guys merge our two
# workspaces?"), unless what is asked is to be told how ("can you tell me how to switch…?").
_TEAM_DOES = rf"(?:can|could|would|will) you(?: guys| all)?|{_SUPPORT_ASKED}|(?:i|we)(?:'d| would) like you to|get you to|please|kindly"
# What the team is asked to do to it: `_DO_ACCOUNT`'s verbs and the rest of what a polite request says.
_ACCOUNT_OPERATION = (
    rf"(?:{_DO_ACCOUNT}|switching|moving|changing|merge|merging|bump|make|push|turn off|disable|apply|reissue|"
    r"prolong|convert)"
)
_ACCOUNT_OBJECT = (
    r"(?:plan|billing|workspaces?|owner|ownership|renewal|seats?|two-factor|2fa|trial|currency|account|discount|"
    r"invoices|subscription|licen[cs]es?)"
)
_ACCOUNT_DEMAND = _rx(
    rf"\b(?:{_TEAM_DOES})\b(?! (?:\w+ )?(?:tell|show|explain|let|point|clarify|advise|help|send me|walk)\b)"
    rf"(?: [\w']+){{0,3}}? {_ACCOUNT_OPERATION}\b[^.!?]{{0,50}}\b{_ACCOUNT_OBJECT}\b",
    r"^(?:please |kindly |just |now )?(?:upgrade|downgrade|delete|remove|make|turn off|disable|add|transfer|cancel|reactivate|merge|grant|give|unlock|close|switch|move)\b[^.!?]{0,60}\b(?:accounts?|admin|administrator|seats?|subscriptions?|contract|two-factor|2fa|mfa|ownership|owner|workspace|organi[sz]ation|users?|login|balance|termination fee|enterprise|licen[cs]es?)\b",
    r"\b(?:upgrade|downgrade|move|switch) (?:me|us) to\b",
    rf"^(?:please |kindly |just |now )?{_DO_ACCOUNT} {_ACCOUNT}\b",
    rf"\b(?:can|could|would|will|must|should|need to|have to) you(?: please)? {_DO_ACCOUNT} {_ACCOUNT}\b",
    rf"\b(?:i want|i need|i expect|i'd like|i would like) (?:you|your team) to {_DO_ACCOUNT}\b",
    rf"\b(?:i want|i need|i expect|i demand) {_ACCOUNT} (?:to be )?(?:cancell?ed|closed|deleted|removed|deactivated|terminated|upgraded|downgraded|changed|switched|updated|reactivated|erased)\b",
    rf"\bplease {_DO_ACCOUNT} (?:it|this|that) (?:for me|now|immediately|today)\b",
    rf"\b{_DO_ACCOUNT} {_ACCOUNT} (?:for me|on my behalf|immediately|right now|now|today|asap)\b",
    r"\b(?:loschen|kundigen|schliessen|andern|deaktivieren) sie (?:mein|meine|unser|unsere|das|den|die)\b",
    r"\b(?:cancelen|eliminen|borren|cierren|cambien|cancele|elimine|borre|cierre) (?:mi|mis|nuestra|nuestro|la|el)\b",
    r"\b(?:supprimez|annulez|fermez|modifiez|resiliez) (?:mon|ma|mes|notre|le|la)\b",
    r"\b(?:cancelem|excluam|apaguem|fechem|alterem|cancele|exclua|apague) (?:minha|meu|minhas|meus|a|o)\b",
    # Needing the team to do it: "necesito que ustedes me pasen la propiedad…", "preciso que vocês cancelem…",
    # "j'ai besoin que vous transfériez…".
    r"\b(?:necesito|necesitamos|quiero|queremos) que (?:ustedes|usted|me|nos)\b[^.!?]{0,40}\b(?:pasen|transfieran|"
    r"cambien|cancelen|eliminen|borren|cierren|extiendan|amplien|activen|desactiven|modifiquen)\b",
    r"\b(?:preciso|precisamos|quero|queremos) que (?:voces|voce|me|nos)\b[^.!?]{0,40}\b(?:passem|transfiram|mudem|"
    r"alterem|cancelem|excluam|apaguem|fechem|estendam|prorroguem|ativem|desativem)\b",
    r"\b(?:j'ai besoin|nous avons besoin|je veux|nous voulons|je souhaite|nous souhaitons) que vous\b[^.!?]{0,40}"
    r"\b(?:transferiez|changiez|annuliez|supprimiez|fermiez|prolongiez|modifiiez|passiez|activiez|desactiviez)\b",
    # The polite question asking the team to change the account: "podem alterar a moeda da nossa conta…?",
    # "¿pueden pasar nuestra suscripción…?", "pourriez-vous modifier notre abonnement…?", "können Sie unser Konto
    # … umstellen?".
    rf"\b(?:{_YOU_ABROAD})(?: por favor)? (?:alterar|mudar|trocar|cancelar|excluir|apagar|fechar|transferir|"
    r"desativar|reativar|prorrogar|estender|adiar|passar)\b[^.!?]{0,60}\b(?:conta|assinatura|plano|moeda|licencas?|"
    r"usuarios?|periodo de teste|teste|renovacao|faturamento|faturacao|e-?mail|proprietario)\b",
    rf"\b(?:{_YOU_ABROAD})(?: por favor)? (?:cambiar|modificar|cancelar|eliminar|borrar|cerrar|transferir|"
    r"desactivar|reactivar|extender|ampliar|alargar|prorrogar|aplazar|pasar)\b[^.!?]{0,60}\b(?:cuenta|suscripcion|plan|"
    r"moneda|licencias?|usuarios?|espacio de trabajo|prueba|renovacion|facturacion|correo|propietario)\b",
    rf"\b(?:{_YOU_ABROAD}) (?:changer|modifier|annuler|supprimer|fermer|transferer|desactiver|reactiver|prolonger|"
    r"passer|basculer)\b[^.!?]{0,60}\b(?:compte|abonnement|forfait|devise|licences?|utilisateurs?|"
    r"espace de travail|essai|renouvellement|facturation|e-?mail|proprietaire)\b",
    rf"\b(?:{_YOU_ABROAD})\b[^.!?]{{0,80}}\b(?:konto|kontos|abo|abonnement|tarif|wahrung|lizenzen|benutzer|"
    r"arbeitsbereich|testphase|testzeitraum|verlangerung|abrechnung|e-?mail|inhaber)\b[^.!?]{0,60}\b(?:andern|"
    r"umstellen|kundigen|loschen|schliessen|ubertragen|deaktivieren|reaktivieren|verlangern|verschieben|wechseln)\b",
)
_ACTION_DEMAND = _rx(
    r"\b(?:waive|remove|reverse|cancel|drop) (?:the |this |that |my |all )?(?:fee|fees|charge|charges|late fee|penalty|invoice|bill)\b(?! policy)",
    r"\b(?:extend|lengthen|prolong) (?:my |our |the |this )?(?:free |current )?(?:trial|contract|deadline)\b",
    # More time on a trial is granted by staff: "could you give us another two weeks on the trial?", "could you
    # add two more weeks to the trial?".
    r"\b(?:give|grant|allow|add)(?: me| us)? (?:[\w-]+ ){0,3}(?:days?|weeks?|months?|time|extension)\b[^.!?]{0,30}\btrial\b",
    # … or more time on whatever was just named ("give us another couple of weeks on it?").
    r"\b(?:give|grant|allow)(?: me| us) (?:another|an extra|extra|a further|more|a few more|a couple more)\b[^.!?]{0,15}"
    r"\b(?:days?|weeks?|months?)\b",
    r"\b(?:do it|take care of it|handle it|fix my account) (?:for me|yourself|on my behalf)\b",
    # Settling an account's books on the customer's word: "void the open balance", "mark the invoice as paid".
    r"\b(?:void|write off|clear|zero|cancel) (?:the |this |that |our |my |any )?(?:open |outstanding |remaining |unpaid )?(?:balance|amount due|debt)\b",
    r"\b(?:mark|record|set) (?:it|this|that|the invoice|this invoice|our invoice|them|these invoices) as (?:paid|settled)\b",
)


# Asking what the team will do to make up for a failure is a compensation demand, even worded as a question
# ("What are you offering to make up for it?"), which the how-to rule below would otherwise answer.
_COMPENSATION_ASKED = _rx(
    r"\b(?:you|your (?:team|company))\b[^.!?]{0,40}\bmake (?:it |this |that )?up (?:to (?:us|me)|for (?:it|this|that|the|"
    r"our|my|what|all|lost))\b",
    r"\bmake amends\b",
    r"\b(?:nos|me) (?:van|vais|vai|vao|irao) (?:a )?compensar\b",
    r"\b(?:compensarnos|compensar-nos|nous dedommager|uns entschadigen|wieder gutmachen)\b",
)


def _demand_risks(sentences: list[str]) -> list[Risk]:
    found: dict[str, Risk] = {}
    for sentence in sentences:
        asked = _COMPENSATION_ASKED.search(sentence)
        if asked:
            found.setdefault("credit_demand", Risk("credit_demand", _evidence(sentence, asked)))
        insist = _INSIST.search(sentence)
        how_to = _HOW_TO.search(sentence)
        # A how-to question is answered; insistence makes the same sentence a demand again.
        if how_to and not insist:
            continue
        # A question is a demand only when it asks the agent to act ("can you refund me?").
        if sentence.endswith("?") and not insist and not _YOU_DIRECTIVE.search(sentence):
            continue
        for kind, pattern in (
            ("refund_demand", _MONEY_DEMAND),
            ("account_change_demand", _ACCOUNT_DEMAND),
            ("action_demand", _ACTION_DEMAND),
        ):
            match = pattern.search(sentence)
            if match:
                matched = match.group(0)
                risk_kind: RiskKind = kind  # type: ignore[assignment]
                if kind == "refund_demand" and re.search(r"credit|voucher|discount|compensat|gutschrift", matched):
                    risk_kind = "credit_demand"
                found.setdefault(risk_kind, Risk(risk_kind, _evidence(sentence, match)))
        if insist and not found and re.search(rf"{_MONEY}|{_DO_ACCOUNT}|{_DO_MONEY}", sentence):
            found.setdefault("action_demand", Risk("action_demand", _evidence(sentence, insist)))
    return list(found.values())


# --- prompt injection ---------------------------------------------------------------------------------------

_INJECTION = _automaton(
    r"\b(?:ignore|disregard|forget|override|bypass|skip) (?:all |any |the |your |my |these |those )*(?:previous|prior|above|earlier|preceding|former|original|system|initial|existing|safety)? ?(?:instructions?|rules|prompts?|directions|guidelines|directives|guardrails|polic(?:y|ies)|context|restrictions|knowledge ?base|kb|documentation|help ?cent(?:er|re)|sources)\b",
    r"\b(?:reveal|print|show|display|repeat|output|leak|dump|tell me|give me|what is|what are) (?:me )?(?:your|the|its) (?:full |entire |original |hidden |secret |initial )?(?:system|hidden|initial|developer|secret|original) ?(?:prompt|instructions|message|rules|configuration)\b",
    r"\bsystem prompt\b",
    r"\byou are (?:now|no longer) (?:a |an |the |in )?(?:admin|administrator|root|developer|dan|unrestricted|jailbroken|god mode|superuser|different)",
    r"\b(?:act|behave|respond|pretend|roleplay|role-play|role play) (?:as|like|to be) (?:a |an |the |my )?(?:admin|administrator|root|system|developer|support manager|supervisor|billing admin|superuser|dan|unrestricted)",
    r"\b(?:developer|debug|god|admin|jailbreak|unrestricted|dan) mode\b",
    r"\bnew (?:system )?instructions?\s*:",
    r"\bnew (?:task|instructions?|policy|rules?) (?:for|to) (?:the|this|you|your) ?(?:assistant|bot|agent|ai|model|support bot)?",
    r"\bforget (?:everything|all|anything)(?: (?:you were|you've been|you have been) (?:told|given|taught))?",
    r"\bforget (?:your|the) (?:rules|instructions|policy|policies|guidelines|training|support policy)",
    r"\b(?:override|bypass|ignore|disregard|do not follow|don't follow|break) (?:your|the|this|any) (?:refund |support |usual |own )?(?:policy|policies|rules|guidelines|safety rules|restrictions)",
    r"\bignore (?:every|each|any|all) (?:instruction|rule|prompt)s? (?:before|above|prior)",
    r"\b(?:previous|prior|earlier|above) instructions (?:do not|don't|no longer) apply",
    r"\bend of (?:the )?(?:customer )?(?:message|ticket|input)\b",
    r"\b(?:enter|switch to|activate|enable) (?:maintenance|admin|developer|debug|god|test) mode\b",
    r"\bdisable (?:your|the|all) (?:safety|content|security) (?:rules|filters|guardrails|checks)",
    r"\bpre-?authori[sz]ed to (?:issue|grant|refund|approve|give)",
    r"\byou are (?:now |hereby )?(?:fully )?(?:authori[sz]ed|allowed|permitted|cleared) to (?:grant|refund|approve|"
    r"credit|waive|(?:issue|give) (?:a |the |them |him |her )?(?:full )?(?:refunds?|credits?|discounts?))\b",
    # Telling the reader what to tell the customer: the customer writes as "I" and "we", an injection of them.
    r"\b(?:tell|inform|assure) the (?:customer|requester|sender) (?:that |their |they )",
    # A forged earlier reply of the assistant saying it did what only staff can do.
    r"(?:^|\n|>)\s*(?:assistant|support bot|ai|bot)\s*:\s*i(?: have|'ve) (?:issued|applied|refunded|granted|approved|"
    r"processed|credited|waived|changed|deleted)\b",
    r"\b(?:i am|i'm|this is) (?:the|your) (?:deskpilot |support |system |bot |ai )?(?:administrator|admin|supervisor|manager|developer|operator|creator)\b",
    r"\bpretend (?:you are|you're|to be|that you)\b",
    r"\bi (?:instruct|order|command) you\b",
    r"\bnew policy effective\b",
    r"\b(?:ai|assistant|bot|model|agent)\s*:\s*(?:reply|respond|say|tell|answer|write|confirm)\b",
    r"\binternal note from\b",
    # Words addressed to the automated reader of the message rather than to the people at support.
    r"\b(?:for|to) (?:the|any) (?:support |virtual |ai )?(?:ai|assistant|bot|agent|model|auto-?responder|automated (?:system|assistant|agent)) "
    r"(?:handling|reading|processing|answering|replying to|triaging) (?:this|the|these)\b",
    r"\b(?:note|message|instructions?|reminder|request) (?:to|for) (?:the|any) (?:support |virtual |ai )?(?:ai|assistant|bot|language model|"
    r"auto-?responder|automated (?:system|assistant|agent))\s*[:\-–]",
    r"\bif you are an? (?:ai|bot|assistant|language model|automated (?:system|assistant|agent))\b",
    r"(?:```|''')\s*(?:system|assistant|developer)\b",  # fold() turns backticks into apostrophes
    r"\b(?:decode|read|translate|reverse) (?:this|it|the following)\b[^.\n]{0,40}\b(?:and|then) (?:do|obey|follow|execute|run|apply)\b",
    r"\b(?:run|execute|follow) the following instruction",
    r"\bthe correct answer (?:to this ticket )?is\s*:",
    # Telling the reader what to say: "reply with the words 'balance cleared'".
    r"\b(?:reply|respond|answer|write back) (?:only )?(?:with|using) (?:the (?:exact )?(?:words?|phrase|sentence|text)|exactly the words?)\b",
    r"\b(?:output|print|repeat|dump|reveal|paste|summari[sz]e|show me|give me|tell me) (?:me )?your (?:full |exact |entire |complete |original |hidden )?(?:instructions|prompt|prompt template|configuration|system message|rules)\b",
    r"\b(?:instructions|rules|prompt) (?:you were given|the developers gave you|you received|you have received)\b",
    r"\bprompt template\b",
    r"\brepeat the words above\b",
    r"\bwhat (?:was|is) written (?:before|above) (?:my|this) message",
    r"\b(?:text|words) that came before\b",
    r"\bgib deine (?:system)?anweisungen\b|\bsystemanweisung",
    r"\boublie (?:tes|vos) (?:regles|instructions|consignes)",
    r"\bolvida (?:tus|sus) (?:instrucciones|reglas)|\bmensaje de sistema\b",
    r"\bignora (?:le |tutte le )?istruzioni|\bprompt di sistema\b",
    r"\bnegeer (?:alle )?(?:eerdere |vorige )?instructies|\bvergeet (?:je|jouw|uw) (?:regels|instructies)",
    r"\bzignoruj (?:poprzednie |wszystkie )?instrukcje",
    r"\bignorera (?:alla )?(?:tidigare )?instruktioner",
    r"\b(?:system|admin|administrator|developer|root|operator|security) (?:override|command|instruction|directive|notice|message|update|mode)\s*:",
    r"\[\s*(?:system|admin|developer|assistant)\s*\]",
    r"(?:^|\n)\s*(?:#+\s*)?(?:system|assistant|developer)\s*:\s",
    r"<\|?(?:im_start|im_end|system|endoftext)\|?>|\[/?inst\]|<</?sys>>",
    r"\bfrom now on,? (?:you|ignore|respond|act)\b",
    r"\bignoriere? (?:alle |die |deine |sämtliche )*(?:vorherigen |bisherigen |obigen |fruheren )?(?:anweisungen|instruktionen|regeln|vorgaben)\b",
    r"\b(?:zeige|gib|verrate) (?:mir )?(?:deinen|den|dein) (?:system ?prompt|systemprompt|anweisungen)\b",
    r"\bignora (?:todas |las |tus )*(?:instrucciones|reglas|indicaciones)(?: anteriores| previas)?\b",
    r"\b(?:muestra|revela|dime) (?:tu|el) (?:prompt|mensaje) (?:del sistema|de sistema)\b",
    r"\bignore[sz]? (?:toutes |les |tes |vos )*(?:instructions|regles|consignes)(?: precedentes| anterieures)?\b",
    r"\b(?:montre|revele|affiche)[- ]?(?:moi )?(?:ton|votre|le) (?:prompt|message) systeme\b",
    r"\bignore (?:todas |as |suas )*(?:instrucoes|regras)(?: anteriores| previas)?\b",
    r"\b(?:mostre|revele) (?:seu|o) prompt (?:do|de) sistema\b",
)
_LEET = str.maketrans("013457@$", "oieastas")
_BASE64 = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}")
_INJECTION_COMPACT = _automaton(
    r"(?:ignore|disregard|forget)(?:all|the|your|any)*(?:previous|prior|above|earlier)(?:instructions?|rules|prompts?)",
    r"(?:reveal|print|show|repeat|output)(?:me)?(?:your|the)(?:system|hidden|initial)prompt",
    r"ignor(?:e|iere)(?:alle)?(?:vorherigen)anweisungen",
)


# --- incidents, threats, repeats ----------------------------------------------------------------------------

_EXFILTRATION = _automaton(
    r"\b(?:other|another|all) (?:customers?|users?|clients?|companies|people)'?s? (?:emails?|e-mails?|data|details|names?|tickets?|messages?|phone numbers?|addresses|accounts?|contact)",
    r"\b(?:list|show|give|send|tell|export|output|dump)\b[^.\n]{0,40}\b(?:other|all|every) (?:customers|users|clients|companies)\b",
    r"\b(?:contents|dump|export|copy) of (?:your |the )?(?:customer|user|client) database\b",
    r"\b(?:api keys?|webhook secrets?|access tokens?|passwords?) (?:configured|stored|on file|for (?:this|the|workspace|account))",
    r"\b(?:phone number|billing address|email address|address|card number) (?:and [a-z ]{3,30} )?on file for\b",
    r"\b(?:forward|send|email|paste|show|include)\b[^.\n]{0,60}\b(?:conversation history|internal notes|escalation notes|reviewer comments|internal comments)\b",
    r"\bwho else (?:from|at|in) (?:my|our) (?:company|team|organi[sz]ation)\b",
    r"\bwhich other companies\b",
    r"\bevery document (?:and|or) past resolution\b|\bdocuments? (?:and past resolutions )?you (?:retrieved|were shown)",
    r"\blast \d+ tickets (?:submitted|sent|opened) by (?:other|all)",
    r"\bappend\b[^.\n]{0,40}\bto the url\b",
)
_SECURITY = _automaton(
    r"\b(?:security|data) (?:breach|incident|leak|compromise)\b",
    r"\b(?:been|was|were|got|get|is|are) (?:hacked|compromised|breached)\b",
    r"\b(?:hacked|compromised) (?:account|accounts|server|servers|system|systems|credentials|card|database)\b",
    r"\bunauthori[sz]ed (?:access|login|logins|sign-?ins?|transactions?|charges?|payments?|users?|activity)\b",
    r"\bsuspicious (?:login|logins|sign-?ins?|activity|transactions?|access)\b",
    r"\b(?:someone|somebody|a stranger) (?:else )?(?:has |is |was )?(?:logged|logging|accessed|accessing|using|used) (?:into |in to )?my\b",
    r"\b(?:ransomware|malware|phishing|credential stuffing|account takeover)\b",
    r"\b(?:exposed|leaked|stolen) (?:customer |user |personal |our |my )?(?:data|credentials|passwords|api keys?|tokens?|records)\b",
    r"\b(?:security vulnerability|vulnerability (?:in|found|exploited)|exploit(?:ed)? (?:in|a|the))\b",
    r"\b(?:sicherheitsverletzung|sicherheitsvorfall|datenleck|datenpanne|gehackt|kompromittiert|unbefugte[rn]? zugriff)\b",
    r"\b(?:brecha de (?:seguridad|datos)|hackeado|hackeada|acceso no autorizado|filtracion de datos)\b",
    r"\b(?:faille de securite|violation de (?:donnees|securite)|pirate|acces non autorise|fuite de donnees)\b",
    r"\b(?:violacao de (?:dados|seguranca)|hackeado|hackeada|acesso nao autorizado|vazamento de dados)\b",
)
_DATA_LOSS = _automaton(
    r"\bdata loss\b",
    r"\b(?:lost|losing|lose) (?:all |some |most )?(?:of )?(?:my |our |the |their )?(?:data|files|documents|records|work|database|backups?|emails|photos)\b",
    r"\b(?:data|files|documents|records|database|backups?|emails|projects?) (?:(?:was|were|has been|have been|got|is|are|seems?|appears?) )?(?:(?:to have been|to be) )?(?:deleted|wiped|erased|lost|gone|corrupted|disappeared|vanished|missing)\b",
    r"\b(?:datenverlust|daten (?:sind |wurden )?(?:verloren|geloscht|weg|verschwunden|beschadigt))\b",
    r"\b(?:perdida de (?:datos|informacion)|(?:perdi|perdimos) (?:todos )?(?:mis|los|nuestros) (?:datos|archivos))\b",
    r"\b(?:perte de donnees|(?:donnees|fichiers) (?:perdu|supprime|efface|corrompu)e?s?)\b",
    r"\b(?:perda de dados|(?:dados|arquivos) (?:perdidos|apagados|corrompidos))\b",
)
_OUTAGE = _automaton(
    r"\b(?:outage|downtime|service disruption|service interruption|major incident)\b",
    r"\b(?:site|service|system|platform|server|servers|app|application|api|dashboard|website|portal|network|production|database) (?:is|are|went|has gone|have gone|seems|appears) (?:completely |totally |entirely )?(?:down|offline|unreachable|unavailable|not responding)\b",
    r"\b(?:nobody|no one|none of (?:our|the) users) (?:can|is able to) (?:access|log ?in|sign ?in|use)\b",
    r"\b(?:all|every one of) (?:of )?(?:our |the )?(?:users|customers|employees|staff) (?:are |is )?(?:unable|locked out|cannot|can't|affected)\b",
    r"\b(?:50[234]|bad gateway|service unavailable|gateway timeout) (?:errors?|responses?) (?:on|for|everywhere|across)\b",
    r"\b(?:ausfall|totalausfall|systemausfall|dienstausfall|serverausfall|storung)\b",
    r"\b(?:ist|sind) (?:komplett |vollstandig )?(?:ausgefallen|nicht erreichbar|offline)\b",
    r"\b(?:caida del (?:servicio|servidor|sistema)|interrupcion (?:del|en el|de) (?:servicio|sistema)|servicio (?:caido|no disponible)|(?:esta|estan) caidos?)\b",
    r"\b(?:panne|interruption de service|(?:service|serveur|systeme|site) (?:est )?(?:en panne|indisponible|hors service|inaccessible))\b",
    r"\b(?:interrupcao (?:do|no|de) (?:servico|sistema)|fora do ar|(?:servico|servidor|sistema) (?:caiu|indisponivel|esta fora))\b",
)
# A customer telling of downtime on their own side ("our webhook receiver was down last night (our side, server
# migration)", "our own server was offline") asks what happened to what the product sent meanwhile: not an outage
# of the product. A bare outage word is not a report then; "nothing changed on our end" says the opposite and
# keeps it one, as does any outage the text describes in other words (the product down, nobody able to log in).
_DOWN_WORD = r"(?:down|offline|outage|downtime|unreachable|unavailable|maintenance|migration)"
_OWN_THING = r"(?:server|servers|receiver|endpoint|site|website|network|system|systems|infrastructure|firewall|backend)"
_OWN_SIDE = _automaton(
    # The downtime said in the same breath as whose it was: "down … on our end", "(our side, server migration)".
    rf"\b{_DOWN_WORD}\b[^.\n]{{0,30}}\b(?:on|at) (?:our|my) (?:side|end)\b",
    rf"\b(?:on|at) (?:our|my) (?:side|end)\b[^.\n]{{0,20}}\b{_DOWN_WORD}\b",
    r"\((?:on |at )?(?:our|my) (?:side|end)\b",
    rf"\b(?:our|my) own (?:[a-z-]+ ){{0,2}}{_OWN_THING}\b[^.\n]{{0,40}}\b{_DOWN_WORD}\b",
    rf"\b{_DOWN_WORD}\b[^.\n]{{0,30}}\b(?:our|my) own (?:[a-z-]+ ){{0,2}}{_OWN_THING}\b",
    r"\bunser(?:e[mnrs]?)? eigene[nmrs]? (?:server|system|netzwerk|endpunkt)\b",
    r"\bnuestro propio (?:servidor|sistema)\b|\bnotre propre (?:serveur|systeme|reseau)\b",
    r"\bnosso proprio (?:servidor|sistema)\b",
)
_NOT_OWN_SIDE = _automaton(
    r"\b(?:nothing|not|no change|no changes|fine|ok|okay|normal|working|checked|tested|verified|all good|everything)\b[^.\n]{0,30}\b(?:on |at )?(?:our|my) (?:side|end)\b",
    r"\b(?:our|my) (?:side|end) (?:is|was|are|looks|seems) (?:fine|ok|okay|normal|working|good|unchanged)\b",
    r"\bnot (?:an? )?(?:issue|problem) (?:on|at) (?:our|my) (?:side|end)\b",
)
_BARE_OUTAGE = re.compile(
    r"\b(?:outage|downtime|service disruption|service interruption|major incident|ausfall|storung|panne)\b"
)


def _own_downtime(folded: str, match: Any) -> bool:
    """The outage match is a bare word in a text placing the downtime on the customer's side."""
    return (
        _BARE_OUTAGE.fullmatch(match.group(0)) is not None
        and _OWN_SIDE.search(folded) is not None
        and _NOT_OWN_SIDE.search(folded) is None
    )


_LEGAL = _automaton(
    # A lawyer brought in is a threat; "our legal team needs the DPA" or "our lawyer reviewed the terms" is not.
    r"\b(?:my|our) (?:lawyer|attorney|solicitor)s? (?:will|is going to|are going to|shall|'ll|has been|have been|is now|are now|will be)\b",
    r"\b(?:hear|hearing) from (?:my|our) (?:lawyer|attorney|solicitor|legal counsel|legal team|counsel)s?\b",
    r"\b(?:contact(?:ing)?|call(?:ing)?|involv(?:e|ing)|consult(?:ing)?|hir(?:e|ing)|get|getting|speak(?:ing)? (?:to|with)|talk(?:ing)? to|(?:forward|pass|hand|send|turn)(?:ing)? (?:this|it|the matter|the case|everything) (?:on |over )?to) (?:a|my|our) (?:lawyer|attorney|solicitor|legal counsel|legal team|legal department)s?\b",
    r"\b(?:sue|suing|sued) (?:you|your|the company|them)\b",
    r"\b(?:lawsuit|class action|small claims|legal action|legal proceedings|legal steps|take (?:you|this|the matter) to court)\b",
    r"\b(?:file|filing|open|opening|initiate|start|raise) (?:a |an )?(?:chargeback|charge back|dispute with (?:my|the) (?:bank|card issuer|credit card company))\b",
    r"\b(?:dispute|contest|reverse) (?:the|this|that|these) (?:charges?|payments?|transactions?) with my (?:bank|card issuer|credit card)\b",
    r"\breport (?:you|your company|this|your business) to (?:the )?(?:bbb|better business bureau|ftc|cfpb|authorities|regulators?|consumer protection|police|attorney general|ombudsman)\b",
    r"\b(?:anwalt|anwaltin|rechtsanwalt|rechtliche schritte|verklagen|klage einreichen|gerichtlich)\b",
    r"\b(?:abogado|abogados|acciones legales|accion legal|demanda judicial|presentar una demanda|demandarlos|demandarles|denunciarlos)\b",
    r"\b(?:avocat|avocats|poursuites judiciaires|action en justice|poursuivre en justice|porter plainte)\b",
    r"\b(?:advogado|advogados|acao judicial|medidas legais|processar voces|processa-los)\b",
    # The formal words of a claim: a notice of breach, a demand before proceedings.
    r"\b(?:breach of contract|in breach of (?:section|clause|article|the agreement|our agreement|the contract|our "
    r"contract)|formal notice|notice of breach|letter before (?:action|claim)|cease and desist)\b",
    r"\b(?:vertragsbruch|vertragsverletzung|abmahnung|incumplimiento (?:de|del) contrato|requerimiento formal|"
    r"mise en demeure|rupture de contrat|quebra de contrato|notificacao extrajudicial)\b",
)
_REPEAT = _automaton(
    r"\b(?:for the|this is the|this is my) (?:second|third|fourth|fifth|\d+(?:st|nd|rd|th)) (?:time|attempt|request|email|message|ticket)\b",
    r"\b(?:already|previously) (?:contacted|reported|wrote|written|emailed|called|asked|opened a ticket|raised|submitted|sent)\b",
    r"\b(?:contacting|writing|emailing|asking|reaching out|reporting) (?:to )?(?:you )?again\b",
    r"\b(?:no one|nobody|no-one) (?:has )?(?:responded|replied|answered|gotten back|got back|helped)\b",
    r"\bstill (?:haven't|have not|hasn't|has not|not) (?:been (?:fixed|resolved|solved|answered)|heard back)\b",
    r"\bstill (?:haven't|have not|hasn't|has not) (?:received|gotten|got|had) (?:a |an |any )?(?:reply|response|answer|update)\b",
    r"\b(?:same|this) (?:problem|issue|error) (?:again|keeps coming back|is back)\b",
    r"\b(?:my|our) (?:previous|last|earlier|original) (?:ticket|request|email|message|complaint)\b",
    r"\b(?:schon wieder|bereits (?:gemeldet|geschrieben|kontaktiert)|zum (?:zweiten|dritten|wiederholten) mal)\b",
    r"\b(?:otra vez el mismo|ya (?:he|habia) (?:reportado|escrito|contactado)|por (?:segunda|tercera) vez)\b",
    r"\b(?:deja (?:signale|contacte|ecrit)|pour la (?:deuxieme|troisieme) fois)\b",
    r"\b(?:ja (?:reportei|entrei em contato|escrevi)|pela (?:segunda|terceira) vez)\b",
)


def _evidence(text: str, match: re.Match[str], width: int = 40) -> str:
    start, end = max(0, match.start() - width), min(len(text), match.end() + width)
    snippet = text[start:end].strip()
    return ("…" if start else "") + snippet + ("…" if end < len(text) else "")


def detect_risks(text: str, *, repeated_contact: bool = False) -> list[Risk]:
    """Every risk in a ticket's text (subject and body together), strongest first.

    `repeated_contact` adds that signal when the caller found it from the customer's history.
    """
    risks = list(_text_risks(text))
    if repeated_contact and not any(r.kind == "repeated_contact" for r in risks):
        risks.append(Risk("repeated_contact", "the customer reported the same problem before"))
    return risks


_TAG = re.compile(r"<[^>]{0,500}>")
_COMMENT = re.compile(r"<!--(.*?)-->", re.DOTALL)
# Unicode tag characters (U+E0020–U+E007E) spell ASCII no one sees ("ASCII smuggling"); the tags that open and
# close such a run (U+E0001, U+E007F) end the sentence before it.
_TAG_CHARACTERS = {code: code - 0xE0000 for code in range(0xE0020, 0xE007F)} | {0xE0001: "\n", 0xE007F: "\n"}


def _as_sent(raw: str) -> str:
    """The message as sent, with everything a person does not see made readable: HTML comments' words, the text
    of hidden elements (tags removed), and text spelt in Unicode tag characters."""
    text = _COMMENT.sub(lambda m: f" {m[1]} ", raw)
    return _TAG.sub(" ", text).translate(_TAG_CHARACTERS)


def hidden_instructions(raw: str, visible: str) -> Risk | None:
    """Instructions that were in the message as sent (hidden HTML, an HTML comment, text in invisible characters,
    trimmed quotes) but not in what a person sees: a prompt injection whatever its wording, when it injects or
    demands something the visible text does not."""
    if not raw or raw == visible:
        return None
    seen = {r.kind for r in _text_risks(visible)}
    for risk in _text_risks(_as_sent(raw)):
        if risk.kind not in seen and (risk.kind == "prompt_injection" or risk.kind in DEMANDS):
            return Risk("prompt_injection", f"hidden in the message as sent: {risk.evidence}")
    return None


def _decoded_variants(text: str, folded: str) -> list[str]:
    """The text as an attacker may have disguised it: leetspeak, reversed, ROT13, base64 pieces."""
    import base64
    import binascii
    import codecs

    variants = [folded.translate(_LEET), folded[::-1], codecs.decode(folded, "rot13")]
    for blob in _BASE64.findall(text)[:5]:
        try:
            decoded = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=False).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        if decoded.isprintable():
            variants.append(fold(decoded))
    return variants


# Drafters screen the same knowledge-base passages and past resolutions for ticket after ticket.
@functools.lru_cache(maxsize=4096)
def injection_in(text: str) -> Risk | None:
    """Only the prompt-injection check (drafters screen their sources with it)."""
    folded = fold(text)
    injection = _INJECTION.search(folded)
    if injection:
        return Risk("prompt_injection", _evidence(folded, injection))
    compact = _INJECTION_COMPACT.search(_compact(folded))
    if compact:
        return Risk("prompt_injection", compact.group(0))
    for variant in _decoded_variants(text, folded):
        match = _INJECTION.search(variant) or _INJECTION_COMPACT.search(_compact(variant))
        if match:
            return Risk("prompt_injection", f"disguised: {_evidence(variant, match)}")
    return None


# Routing, priority and scoring all look at the same ticket text: detect once per text.
@functools.lru_cache(maxsize=512)
def _text_risks(text: str) -> tuple[Risk, ...]:
    folded = fold(text)
    sentences = _sentences(folded)
    risks: list[Risk] = []
    injection = injection_in(text)
    if injection:
        risks.append(injection)
    risks.extend(_demand_risks(sentences))
    exfiltration = _EXFILTRATION.search(folded)
    if exfiltration:
        risks.append(Risk("data_exfiltration", _evidence(folded, exfiltration)))
    for kind, pattern in (
        ("security_incident", _SECURITY),
        ("data_loss", _DATA_LOSS),
        ("outage", _OUTAGE),
        ("legal_threat", _LEGAL),
    ):
        match = pattern.search(folded)
        if match and kind == "outage" and _own_downtime(folded, match):
            # A further outage phrase elsewhere in the text (not a bare word) is still a report.
            match = next((m for m in pattern.finditer(folded) if not _BARE_OUTAGE.fullmatch(m.group(0))), None)
        if match:
            risks.append(Risk(kind, _evidence(folded, match)))  # type: ignore[arg-type]
    repeat = _REPEAT.search(folded)
    if repeat:
        risks.append(Risk("repeated_contact", _evidence(folded, repeat)))
    return tuple(risks)


def strongest_action(risks: Iterable[Risk]) -> RiskAction | None:
    """escalate_urgent > escalate > review; None without risks."""
    order = {"escalate_urgent": 3, "escalate": 2, "review": 1}
    best: RiskAction | None = None
    for risk in risks:
        if best is None or order[risk.action] > order[best]:
            best = risk.action
    return best


def has_repeat_markers(text: str) -> bool:
    return _REPEAT.search(fold(text)) is not None
