"""HTTP controllers: thin handlers that validate at the edge and call plain async functions."""

from __future__ import annotations

from typing import Any

from app.controllers.customers import CustomerController
from app.controllers.health import HealthController
from app.controllers.tickets import TicketController

ROUTE_HANDLERS: list[Any] = [HealthController, TicketController, CustomerController]
