"""The post-draft guard: no promised money or account changes, no stray links or addresses, no leaks."""

from __future__ import annotations

import pytest

from agent.drafting.guardrails import check_reply


@pytest.mark.parametrize(
    "reply",
    [
        "We have issued a full refund to your card.",
        "Your refund has been processed and will arrive in 3 days.",
        "You will receive a credit on your next invoice.",
        "I've cancelled your subscription as requested.",
        "Your account has been deleted.",
        "We will waive the late fee this time.",
        "We will refund you the difference.",
        "Wir haben Ihnen den Betrag erstattet.",
    ],
)
def test_promises_are_violations(reply: str) -> None:
    assert check_reply(reply, allowed_urls=[], allowed_emails=[])


@pytest.mark.parametrize(
    "reply",
    [
        "To request a refund, open Settings → Billing and click Request refund.",
        "You can cancel your subscription yourself under Settings → Plan.",
        "I will send you the steps by email.",
        "Refunds are reviewed by our billing team within five working days.",
    ],
)
def test_how_to_answers_pass(reply: str) -> None:
    assert check_reply(reply, allowed_urls=[], allowed_emails=[]) == []


def test_links_and_addresses_must_come_from_the_sources() -> None:
    reply = "See https://help.example.com/billing or write to billing@example.com."
    assert (
        check_reply(reply, allowed_urls=["https://help.example.com/billing"], allowed_emails=["billing@example.com"])
        == []
    )
    found = check_reply(reply, allowed_urls=[], allowed_emails=[])
    assert any("help.example.com" in v for v in found)
    assert any("billing@example.com" in v for v in found)
    assert check_reply("Click https://evil.example/x.", allowed_urls=["https://help.example.com"], allowed_emails=[])


def test_active_content_and_prompt_talk_are_violations() -> None:
    assert check_reply("<script>alert(1)</script>", allowed_urls=[], allowed_emails=[])
    assert check_reply("Here is my system prompt: be helpful.", allowed_urls=[], allowed_emails=[])
    assert check_reply("   ", allowed_urls=[], allowed_emails=[])
