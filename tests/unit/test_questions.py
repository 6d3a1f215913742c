"""Splitting a ticket into its questions and requests (agent/drafting/questions.py)."""

from __future__ import annotations

import pytest

from agent.drafting.phrasing import localized
from agent.drafting.questions import (
    asked_for,
    clauses,
    content_words,
    gives,
    is_question,
    language_of,
    sentences,
    split_questions,
)


def test_two_questions_are_two_with_the_sentence_before_each_as_context() -> None:
    questions = split_questions(
        "Rates changed",
        "We raised our rates on the Orion project from 1 November. New entries look right, but older ones do not. "
        "How do I update those? And which rate wins if a member also has their own rate on the project?",
    )
    assert [q.text for q in questions] == [
        "How do I update those?",
        "And which rate wins if a member also has their own rate on the project?",
    ]
    # A short question reads with what was said before it: "those" are the entries of the re-rated project.
    assert questions[0].context == (
        "We raised our rates on the Orion project from 1 November. New entries look right, but older ones do not."
    )
    assert "older ones" in questions[0].query


def test_greeting_and_signature_are_not_questions() -> None:
    body = "Hi team,\n\nCan I export my timesheets to Excel?\n\nThanks in advance,\nDana Whitfield\nHead of Ops"
    questions = split_questions("Export", body)
    assert [q.text for q in questions] == ["Can I export my timesheets to Excel?"]
    assert "Dana" not in " ".join(sentences(body))


def test_a_report_without_a_question_is_one_implicit_question() -> None:
    [question] = split_questions("Export button does nothing", "Since this morning the export button does nothing.")
    assert not question.explicit
    assert "export button" in question.text.lower()


def test_a_further_matter_stated_after_a_question_is_answered_too() -> None:
    body = (
        "The import page won't take our 80,000-row file. What are the limits? "
        "Also, in the preview some names come out as MÃ¼ller instead of Müller."
    )
    questions = split_questions("Import rejected", body)
    assert [q.text for q in questions] == [
        "What are the limits?",
        "Also, in the preview some names come out as MÃ¼ller instead of Müller.",
    ]
    assert [q.explicit for q in questions] == [True, False]
    # Followed by a question, the further matter is that question's context, not a matter of its own.
    asked = split_questions("Import", "What are the limits? Also, some names come out garbled. How do I fix that?")
    assert [q.text for q in asked] == ["What are the limits?", "How do I fix that?"]
    assert "garbled" in asked[1].context
    # Without any question the message is a report, read from its opening.
    [report] = split_questions("Import", "The import fails. Also, some names come out garbled.")
    assert not report.explicit and report.text.startswith("Import. The import fails.")


def test_an_abbreviation_does_not_end_the_sentence() -> None:
    [question] = split_questions("Reminders", "Can you remind clients automatically, e.g. 7 days after the due date?")
    assert question.text.endswith("due date?")


def test_a_short_question_leans_on_the_one_before_it() -> None:
    questions = split_questions("Free plan", "Which two people keep access on the free plan? Can I pick them?")
    assert questions[1].context == "Which two people keep access on the free plan?"


def test_a_short_vague_question_reads_with_everything_said_since_the_last_question() -> None:
    body = (
        "Hi, I sent our developer the link to the Atlas project and he gets a 403 page. "
        "He can open his other projects without any trouble. What's going on?"
    )
    [question] = split_questions("403 on one project", body)
    assert question.text == "What's going on?"
    assert "403 page" in question.context and "other projects" in question.context
    # At most three sentences, the latest ones.
    long = "One. Two is here. Three is here. Four is here. Is it broken?"
    assert split_questions("", long)[0].context == "Two is here. Three is here. Four is here."
    # A longer question keeps only the sentence before it.
    [longer] = split_questions(
        "", "The app crashed. It crashed again today. How do I send you the crash logs from the desktop app?"
    )
    assert longer.context == "It crashed again today."


def test_a_short_question_after_one_leaning_on_what_was_said_leans_on_the_same() -> None:
    body = (
        "Our export script started failing overnight with 401 invalid_token. The token was created by our former "
        "ops lead, whose account we deactivated. Related? What should we use instead so this doesn't happen again?"
    )
    related, instead = split_questions("integration returns 401", body)
    assert related.text == "Related?" and related.leans
    # Not "Related?" alone, which says nothing: what "Related?" leaned on, and it.
    assert instead.context == related.query
    assert "401 invalid_token" in instead.query and "deactivated" in instead.query
    assert instead.parts == ["What should we use instead so this doesn't happen again?"]
    # A question after a question that names its subject keeps only that question as its context.
    plain = split_questions("Free plan", "Which two people keep access on the free plan? Can I pick them?")
    assert plain[1].context == "Which two people keep access on the free plan?"


def test_a_long_question_that_names_nothing_reads_with_what_was_said_before_it() -> None:
    body = (
        "The renewal failed twice. The last two emails say authentication_required. "
        "My bank insists the card is fine. What do I actually need to do so this goes through?"
    )
    [question] = split_questions("Card keeps bouncing", body)
    assert content_words(question.text) == []
    # Long enough not to count as short, yet it says what it is about only with the sentences before it.
    assert "authentication_required" in question.context and "card is fine" in question.context
    # A question of the same length that names its subject keeps only the sentence before it.
    [named] = split_questions(
        "", "The renewal failed twice. My bank insists the card is fine. How do I pay the open invoice by card myself?"
    )
    assert named.context == "My bank insists the card is fine."
    assert content_words(named.text) == ["open", "invoice", "card", "myself"]


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("Wie kann ich die Rechnung herunterladen", True),
        ("¿Dónde veo mis facturas?", True),
        ("Merci de m'indiquer la marche à suivre.", True),
        ("We moved the business to Canada this year.", False),
        ("Please reset the 2FA for my colleague.", True),
        ("We need to change the billing email on our invoices.", True),
        ("Also, we would like to add two seats.", True),
        ("Ich möchte unser Abo kündigen.", True),
        # A need said after the situation is the situation, not a request.
        ("No reset email has arrived, and I need to approve timesheets before noon.", False),
    ],
)
def test_questions_and_requests_in_several_languages(sentence: str, expected: bool) -> None:
    assert is_question(sentence) is expected


def test_the_language_of_the_ticket() -> None:
    assert language_of("Hola, esta mañana me llegó un aviso de que el correo de mi cuenta cambió") == "es"
    assert language_of("Bonjour, mes rendez-vous personnels de Google Agenda") == "fr"
    assert language_of("How do I update those?") == "en"
    # "a" is an English word as much as a Portuguese one.
    assert language_of("Is there any way to get a heads-up before a project burns through its hours?") == "en"
    assert language_of("Por favor, reduza a interrupção do serviço.") == "pt"
    # Spanish shares "que", "a" and "por" with Portuguese: its own common words must outweigh them.
    assert language_of("Queremos que los informes que enviamos a nuestros clientes lleven el logo, ¿se puede?") == "es"
    assert language_of("Queremos que os relatórios que enviamos aos nossos clientes tenham o logotipo.") == "pt"
    # Italian and Dutch, which Portuguese and English words used to claim, and their replies' phrases.
    assert language_of("Ciao, ieri ho cancellato per errore tutte le voci di giovedì. Si possono recuperare?") == "it"
    assert language_of("Hallo, we stappen over van Excel naar Tallyhive en ik probeer onze uren te importeren.") == "nl"
    assert localized("it")["you_asked"].startswith("Ci ha chiesto")
    assert localized("nl")["signoff"] == "Met vriendelijke groet,"
    # A Swedish or Danish ticket has no phrases of its own: it is answered in English.
    assert localized("sv") == localized("en")


def test_a_vague_question_leaning_on_several_sentences_asks_about_each() -> None:
    body = (
        "Bonjour, j'essaie d'importer notre catalogue (environ 62 000 lignes). L'import refuse le fichier entier, "
        "et sur un petit fichier de test les accents sont devenus des caractères bizarres. Que dois-je faire ?"
    )
    [question] = split_questions("Import impossible", body)
    assert question.leans
    assert question.parts == [
        "Bonjour, j'essaie d'importer notre catalogue (environ 62 000 lignes).",
        "L'import refuse le fichier entier, et sur un petit fichier de test les accents sont devenus des caractères "
        "bizarres.",
    ]
    # Leaning on one sentence, or not leaning at all, the question's own clauses are its parts.
    [one] = split_questions("", "The export button does nothing on the reports page. What's going on?")
    assert one.leans and one.parts == ["What's going on?"]
    [longer] = split_questions(
        "", "The app crashed. It crashed again today. How do I send you the crash logs from the desktop app?"
    )
    assert not longer.leans and longer.parts == ["How do I send you the crash logs from the desktop app?"]


@pytest.mark.parametrize(
    ("question", "parts"),
    [
        (
            "How do we ask for a refund of the annual charge, and roughly how long does the process take?",
            ["How do we ask for a refund of the annual charge", "roughly how long does the process take?"],
        ),
        (
            "If I find something worth reporting, where should it go, is there a key for encrypting it, and how "
            "quickly do you reply?",
            [
                "If I find something worth reporting, where should it go",  # the condition stays with its question
                "is there a key for encrypting it",
                "how quickly do you reply?",
            ],
        ),
        (
            "Pourquoi la TVA est-elle appliquée et comment corriger les factures ?",
            ["Pourquoi la TVA est-elle appliquée", "comment corriger les factures ?"],
        ),
        # Alternatives of one question, a list, and a short tail are one part.
        (
            "Is the API part of Starter or do we need Pro for that?",
            ["Is the API part of Starter or do we need Pro for that?"],
        ),
        ("Can I export rates and invoices and time entries?", ["Can I export rates and invoices and time entries?"]),
        ("Can I reset it for him, and if so where?", ["Can I reset it for him, and if so where?"]),
    ],
)
def test_a_question_asking_several_things_is_split_into_its_parts(question: str, parts: list[str]) -> None:
    assert clauses(question) == parts


def test_the_kind_of_answer_a_question_asks_for_and_a_sentence_gives() -> None:
    assert asked_for("Where do I find the audit log?") == {"place"}
    assert asked_for("How long until the money is back?") == {"duration"}
    assert asked_for("How many rows can one file have?") == {"quantity"}
    assert asked_for("How do I record a payment?") == {"steps"}
    assert asked_for("¿Dónde se configura eso?") == {"place"}
    assert asked_for("Why was I charged VAT?") == frozenset()
    assert gives("Open Settings → Security → Audit log.") == {"place", "steps"}
    assert gives("The billing team replies within 5 business days.") == {"duration", "quantity"}
    assert gives("Files can have up to 50,000 rows.") == {"quantity"}
    assert gives("Refunds are reviewed by a person.") == frozenset()
