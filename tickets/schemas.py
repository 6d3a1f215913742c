"""Typed request bodies of the admin API (msgspec Structs: validated at the edge, named fields in errors)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

Tier = Literal["free", "trial", "starter", "pro", "business", "enterprise"]
EventKind = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_.-]*$")]


class CustomerIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    email: Annotated[str, msgspec.Meta(min_length=3, max_length=320)]
    name: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    tier: Tier | None = None
    metadata: dict[str, Any] | None = None


class CustomerEventIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    kind: EventKind
    occurred_at: datetime | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)
