"""Ticket lifecycle: the legal status transitions, enforced in one place and recorded in the status history."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from core.db import Connection
from core.errors import Conflict, NotFound

Status = Literal["open", "in_progress", "pending_customer", "resolved", "closed"]
STATUSES: tuple[Status, ...] = ("open", "in_progress", "pending_customer", "resolved", "closed")

# open -> in_progress -> resolved -> closed, in_progress <-> pending_customer; a customer reply re-opens a
# resolved or closed ticket; a reviewer may resolve or close what the agent escalated.
ALLOWED: dict[str, frozenset[str]] = {
    "open": frozenset({"in_progress", "closed"}),
    "in_progress": frozenset({"resolved", "pending_customer", "closed"}),
    "pending_customer": frozenset({"in_progress", "resolved", "closed", "open"}),
    "resolved": frozenset({"closed", "open"}),
    "closed": frozenset({"open"}),
}


class IllegalTransition(Conflict):
    """The requested status change is not part of the lifecycle."""


def check_transition(current: str, target: str) -> None:
    if target == current:
        return
    if target not in ALLOWED.get(current, frozenset()):
        raise IllegalTransition(f"a ticket cannot go from {current} to {target}", field="status")


async def transition(
    conn: Connection,
    ticket_id: UUID,
    target: Status,
    reason: str,
    *,
    extra_sets: str = "",
    extra_args: tuple[object, ...] = (),
    current: str | None = None,
) -> str:
    """Move a ticket to `target` (locking its row), record the change, and return the previous status.

    `extra_sets` are further `col = $n` assignments (numbered from $3) applied in the same UPDATE. `current` is
    the status the caller already read under the row lock in this transaction (e.g. `assert_lease`), saving the
    locking read. Must run inside a transaction.
    """
    if current is None:
        current = await conn.fetchval("SELECT status FROM tickets WHERE id = $1 FOR UPDATE", ticket_id)
        if current is None:
            raise NotFound(f"ticket {ticket_id} does not exist")
    check_transition(current, target)
    sets = "status = $2, updated_at = now()"
    sets += ", resolved_at = CASE WHEN $2 = 'resolved' THEN now() ELSE resolved_at END"
    sets += ", closed_at = CASE WHEN $2 = 'closed' THEN now() ELSE NULL END"
    if extra_sets:
        sets += ", " + extra_sets
    previous, why = len(extra_args) + 3, len(extra_args) + 4
    # The update and its history row in one statement; no history row when the status stays the same.
    await conn.execute(
        f"""WITH moved AS (UPDATE tickets SET {sets} WHERE id = $1 RETURNING id)
            INSERT INTO ticket_status_history (ticket_id, from_status, to_status, reason)
            SELECT id, ${previous}::text, $2::text, ${why}::text FROM moved WHERE ${previous}::text <> $2::text""",
        ticket_id,
        target,
        *extra_args,
        current,
        reason,
    )
    return str(current)
