"""`deskpilot customers load`: accounts and their events from JSONL or CSV; one bad record never stops the rest.

JSONL: one object per line, `{"email", "name"?, "tier"?, "metadata"?, "events"?: [{"kind", "occurred_at"?, "data"?}]}`.
CSV: columns `email,name,tier` and optionally `event_kind,event_occurred_at,event_data` (JSON); a customer may
span several rows, one event each.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from core import db
from core.db import Connection
from core.errors import DeskPilotError
from core.settings import Settings
from tickets import customers
from tickets.schemas import CustomerEventIn, CustomerIn


@dataclass
class LoadReport:
    customers: int = 0
    events: int = 0
    errors: list[str] = field(default_factory=list)


class CustomerRecord(CustomerIn, kw_only=True, forbid_unknown_fields=False):
    events: list[CustomerEventIn] = msgspec.field(default_factory=list)


def read_records(path: Path) -> list[tuple[int, dict[str, Any] | str]]:
    """(line number, record or error message) for every record of the file."""
    text = path.read_text(encoding="utf-8-sig", errors="strict")
    out: list[tuple[int, dict[str, Any] | str]] = []
    if path.suffix.lower() == ".csv":
        for number, row in enumerate(csv.DictReader(text.splitlines()), start=2):
            record: dict[str, Any] = {k: v for k, v in row.items() if k in {"email", "name", "tier"} and v}
            if row.get("event_kind"):
                try:
                    data = json.loads(row["event_data"]) if row.get("event_data") else {}
                except json.JSONDecodeError as exc:
                    out.append((number, f"event_data is not JSON: {exc.msg}"))
                    continue
                event = {"kind": row["event_kind"], "data": data}
                if row.get("event_occurred_at"):
                    event["occurred_at"] = row["event_occurred_at"]
                record["events"] = [event]
            out.append((number, record))
        return out
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            out.append((number, f"not JSON: {exc.msg}"))
            continue
        out.append((number, value if isinstance(value, dict) else "a record must be a JSON object"))
    return out


def shift_events(records: Sequence[CustomerRecord], newest_at: datetime) -> list[CustomerRecord]:
    """The records with every dated event moved by one offset, so the newest lands at `newest_at` and the gaps
    between events stay as written: sample data written on one date keeps looking recent (the specialists read
    only the last weeks of events). Times without a zone are read as UTC."""
    dated = [_aware(e.occurred_at) for r in records for e in r.events if e.occurred_at is not None]
    if not dated:
        return list(records)
    delta = newest_at - max(dated)
    return [
        msgspec.structs.replace(
            record,
            events=[
                msgspec.structs.replace(event, occurred_at=_aware(event.occurred_at) + delta)
                if event.occurred_at is not None
                else event
                for event in record.events
            ],
        )
        for record in records
    ]


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def load_customers_file(
    url: str, settings: Settings, path: Path, *, newest_event_at: datetime | None = None
) -> LoadReport:
    """Load the file's accounts and events; `newest_event_at` shifts the events first (`shift_events`)."""
    async with db.pool_for(url, settings) as pool, pool.acquire() as conn:
        return await load_customers(conn, path, newest_event_at=newest_event_at)


async def load_customers(conn: Connection, path: Path, *, newest_event_at: datetime | None = None) -> LoadReport:
    report = LoadReport()
    try:
        records = read_records(path)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        report.errors.append(f"{path}: cannot read: {exc}")
        return report
    valid: list[tuple[CustomerRecord, str]] = []
    for number, raw in records:
        where = f"{path.name}:{number}"
        if isinstance(raw, str):
            report.errors.append(f"{where}: {raw}")
            continue
        try:
            record = msgspec.convert(raw, CustomerRecord, strict=False)
            valid.append((record, customers.normalized_email(record.email)))
        except msgspec.ValidationError as exc:
            report.errors.append(f"{where}: {exc}")
        except DeskPilotError as exc:
            report.errors.append(f"{where}: {exc.field}: {exc.detail}")
    if newest_event_at is not None:
        shifted = shift_events([record for record, _ in valid], newest_event_at)
        valid = [(record, email) for record, (_, email) in zip(shifted, valid, strict=True)]
    for record, email in valid:
        async with conn.transaction():
            customer, _ = await customers.upsert_customer(
                conn, email=email, name=record.name, tier=record.tier, metadata=record.metadata
            )
            report.customers += 1
            for event in record.events:
                if await _event_exists(conn, customer["id"], event):
                    continue  # re-running the same file adds nothing
                await customers.add_event(conn, customer["id"], event.kind, event.occurred_at, event.data)
                report.events += 1
    return report


async def _event_exists(conn: Any, customer_id: Any, event: CustomerEventIn) -> bool:
    if event.occurred_at is None:
        return False
    occurred: datetime = event.occurred_at
    found = await conn.fetchval(
        "SELECT 1 FROM customer_events WHERE customer_id = $1 AND kind = $2 AND occurred_at = $3 AND data = $4",
        customer_id,
        event.kind,
        occurred,
        event.data,
    )
    return bool(found)
