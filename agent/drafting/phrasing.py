"""Reply wording: the offline drafter's template and its phrases in the languages the history may be written in."""

from __future__ import annotations

# Recorded as the draft step's `template`: the shape every offline reply takes.
OFFLINE_TEMPLATE = (
    "{hello} {customer_name},\\n\\n{thanks_subject}\\n\\n{best past resolution, guard-filtered}\\n\\n"
    "{more}\\n- {KB passage title}: {excerpt}\\n\\n{refs}: {R-xxxxxxxx, KB-xxxxxxxx}\\n\\n{signoff}\\n{team}"
)

KNOWLEDGE_TEMPLATE = (
    "{hello} {customer_name},\\n\\n{thanks_subject}\\n\\n"
    "[per question: {you_asked or you_wrote} + {your_tier}? + answering sentences of the chosen passage"
    " + ({source}: title, KB-xxxxxxxx)]"
    "\\n\\n{passed_on: questions no passage answers}\\n\\n{signoff}\\n{team}"
)

_PHRASES: dict[str, dict[str, str]] = {
    "en": {
        "you_asked": "You asked {question}:",
        "you_wrote": "You wrote {question}:",
        "your_tier": "Your account is on {tier}.",
        "and": "and",
        "your_trial": "Your account is on a trial.",
        "source": "Source",
        "passed_on": "I have passed your other question to a colleague, who will get back to you: {questions}.",
        "hello": "Hello",
        "customer": "there",
        "thanks": "Thank you for contacting us.",
        "thanks_subject": "Thank you for contacting us about \u201c{subject}\u201d.",
        "more": "You may also find these help articles useful:",
        "passages": "These help articles cover your question:",
        "handover": "We have passed your request to a member of our team, who will get back to you.",
        "refs": "References",
        "signoff": "Kind regards,",
        "article": "Help article",
    },
    "de": {
        "you_asked": "Sie fragten {question}:",
        "you_wrote": "Sie schrieben {question}:",
        "your_tier": "Ihr Konto nutzt {tier}.",
        "and": "und",
        "your_trial": "Ihr Konto ist in der Testphase.",
        "source": "Quelle",
        "passed_on": (
            "Ihre weitere Frage haben wir an einen Kollegen weitergegeben, der sich bei Ihnen meldet: {questions}."
        ),
        "hello": "Hallo",
        "customer": "",
        "thanks": "Vielen Dank für Ihre Nachricht.",
        "thanks_subject": "Vielen Dank für Ihre Nachricht zu \u201e{subject}\u201c.",
        "more": "Diese Hilfeartikel könnten ebenfalls nützlich sein:",
        "passages": "Diese Hilfeartikel beantworten Ihre Frage:",
        "handover": "Wir haben Ihre Anfrage an unser Team weitergeleitet und melden uns bei Ihnen.",
        "refs": "Referenzen",
        "signoff": "Mit freundlichen Grüßen",
        "article": "Hilfeartikel",
    },
    "es": {
        "you_asked": "Usted preguntó {question}:",
        "you_wrote": "Usted escribió {question}:",
        "your_tier": "Su cuenta está en {tier}.",
        "and": "y",
        "your_trial": "Su cuenta está en período de prueba.",
        "source": "Fuente",
        "passed_on": "Hemos pasado su otra pregunta a un compañero, que se pondrá en contacto con usted: {questions}.",
        "hello": "Hola",
        "customer": "",
        "thanks": "Gracias por contactarnos.",
        "thanks_subject": "Gracias por contactarnos sobre \u201c{subject}\u201d.",
        "more": "También pueden serle útiles estos artículos de ayuda:",
        "passages": "Estos artículos de ayuda responden a su consulta:",
        "handover": "Hemos pasado su solicitud a nuestro equipo, que se pondrá en contacto con usted.",
        "refs": "Referencias",
        "signoff": "Saludos cordiales,",
        "article": "Artículo de ayuda",
    },
    "fr": {
        "you_asked": "Vous avez demandé {question} :",
        "you_wrote": "Vous avez écrit {question} :",
        "your_tier": "Votre compte est sur {tier}.",
        "and": "et",
        "your_trial": "Votre compte est en période d'essai.",
        "source": "Source",
        "passed_on": "Nous avons transmis votre autre question à un collègue, qui reviendra vers vous : {questions}.",
        "hello": "Bonjour",
        "customer": "",
        "thanks": "Merci de nous avoir contactés.",
        "thanks_subject": "Merci de nous avoir contactés au sujet de \u00ab {subject} \u00bb.",
        "more": "Ces articles d'aide pourraient également vous être utiles :",
        "passages": "Ces articles d'aide répondent à votre question :",
        "handover": "Nous avons transmis votre demande à notre équipe, qui reviendra vers vous.",
        "refs": "Références",
        "signoff": "Cordialement,",
        "article": "Article d'aide",
    },
    "pt": {
        "you_asked": "Você perguntou {question}:",
        "you_wrote": "Você escreveu {question}:",
        "your_tier": "Sua conta está no {tier}.",
        "and": "e",
        "your_trial": "Sua conta está em período de teste.",
        "source": "Fonte",
        "passed_on": "Encaminhamos sua outra pergunta a um colega, que entrará em contato: {questions}.",
        "hello": "Olá",
        "customer": "",
        "thanks": "Obrigado por entrar em contato.",
        "thanks_subject": "Obrigado por entrar em contato sobre \u201c{subject}\u201d.",
        "more": "Estes artigos de ajuda também podem ser úteis:",
        "passages": "Estes artigos de ajuda respondem à sua pergunta:",
        "handover": "Encaminhamos sua solicitação à nossa equipe, que entrará em contato.",
        "refs": "Referências",
        "signoff": "Atenciosamente,",
        "article": "Artigo de ajuda",
    },
    "it": {
        "you_asked": "Ci ha chiesto {question}:",
        "you_wrote": "Ci ha scritto {question}:",
        "your_tier": "Il suo account è sul piano {tier}.",
        "and": "e",
        "your_trial": "Il suo account è in periodo di prova.",
        "source": "Fonte",
        "passed_on": "Abbiamo inoltrato l'altra sua domanda a un collega, che la ricontatterà: {questions}.",
        "hello": "Buongiorno",
        "customer": "",
        "thanks": "Grazie per averci contattato.",
        "thanks_subject": "Grazie per averci contattato riguardo a \u00ab{subject}\u00bb.",
        "more": "Potrebbero esserle utili anche questi articoli di aiuto:",
        "passages": "Questi articoli di aiuto rispondono alla sua domanda:",
        "handover": "Abbiamo inoltrato la sua richiesta al nostro team, che la ricontatterà.",
        "refs": "Riferimenti",
        "signoff": "Cordiali saluti,",
        "article": "Articolo di aiuto",
    },
    "nl": {
        "you_asked": "U vroeg {question}:",
        "you_wrote": "U schreef {question}:",
        "your_tier": "Uw account gebruikt {tier}.",
        "and": "en",
        "your_trial": "Uw account is in de proefperiode.",
        "source": "Bron",
        "passed_on": "Uw andere vraag hebben we doorgegeven aan een collega, die contact met u opneemt: {questions}.",
        "hello": "Hallo",
        "customer": "",
        "thanks": "Bedankt voor uw bericht.",
        "thanks_subject": "Bedankt voor uw bericht over \u201c{subject}\u201d.",
        "more": "Deze helpartikelen kunnen ook nuttig zijn:",
        "passages": "Deze helpartikelen beantwoorden uw vraag:",
        "handover": "We hebben uw verzoek doorgegeven aan ons team, dat contact met u opneemt.",
        "refs": "Referenties",
        "signoff": "Met vriendelijke groet,",
        "article": "Helpartikel",
    },
}


def localized(language: str | None) -> dict[str, str]:
    return _PHRASES.get((language or "en")[:2].lower(), _PHRASES["en"])
