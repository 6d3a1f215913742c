"""A process starting while the database is down waits for it (`app.cli.startup.when_reachable`): what `worker`
and `serve` read at start (migrations, the stored embedding identity) is retried, not a crash; other errors are
not retried."""

from __future__ import annotations

import click
import pytest

from app.cli import startup


def test_a_database_that_is_not_there_yet_is_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(startup.time, "sleep", slept.append)
    calls = iter([FileNotFoundError("no socket"), ConnectionRefusedError("refused"), 7])

    def read() -> int:
        outcome = next(calls)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert startup.when_reachable(read) == 7
    assert len(slept) == 2 and all(delay > 0 for delay in slept)


def test_other_errors_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(startup.time, "sleep", lambda _: pytest.fail("retried"))

    def broken() -> None:
        raise click.ClickException("migration failed: bad SQL")

    with pytest.raises(click.ClickException, match="migration failed"):
        startup.when_reachable(broken)
