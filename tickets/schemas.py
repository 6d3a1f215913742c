"""Typed request bodies of the admin API (msgspec Structs: validated at the edge, named fields in errors)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from core.settings import TIER_NAME_MAX, TIER_NAME_PATTERN

# The operator's own plan names ("Basic", "Team", "Scale"); how routing reads them is a setting (TierPolicy).
Tier = Annotated[str, msgspec.Meta(min_length=1, max_length=TIER_NAME_MAX, pattern=TIER_NAME_PATTERN)]
EventKind = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_.-]*$")]


class CustomerIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    email: Annotated[str, msgspec.Meta(min_length=3, max_length=320)]
    name: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    tier: Tier | None = None
    metadata: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # The pattern's `$` also matches before a final newline (Python's re, which msgspec uses).
        if self.tier is not None and "\n" in self.tier:
            raise ValueError("tier: a plan name is one line of printable characters")


class CustomerEventIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    kind: EventKind
    occurred_at: datetime | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)
