"""Splitting a ticket into its questions and requests (agent/drafting/questions.py)."""

from __future__ import annotations

import pytest

from agent.drafting.questions import is_question, language_of, sentences, split_questions


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
    assert questions[0].context == "New entries look right, but older ones do not."
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


def test_an_abbreviation_does_not_end_the_sentence() -> None:
    [question] = split_questions("Reminders", "Can you remind clients automatically, e.g. 7 days after the due date?")
    assert question.text.endswith("due date?")


def test_a_short_question_leans_on_the_one_before_it() -> None:
    questions = split_questions("Free plan", "Which two people keep access on the free plan? Can I pick them?")
    assert questions[1].context == "Which two people keep access on the free plan?"


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("Wie kann ich die Rechnung herunterladen", True),
        ("¿Dónde veo mis facturas?", True),
        ("Merci de m'indiquer la marche à suivre.", True),
        ("We moved the business to Canada this year.", False),
        ("Please reset the 2FA for my colleague.", True),
    ],
)
def test_questions_and_requests_in_several_languages(sentence: str, expected: bool) -> None:
    assert is_question(sentence) is expected


def test_the_language_of_the_ticket() -> None:
    assert language_of("Hola, esta mañana me llegó un aviso de que el correo de mi cuenta cambió") == "es"
    assert language_of("Bonjour, mes rendez-vous personnels de Google Agenda") == "fr"
    assert language_of("How do I update those?") == "en"
