"""HTTP controllers: thin handlers that validate at the edge and call plain async functions."""

from __future__ import annotations

from typing import Any

from app.controllers.customer_messages import CustomerMessagesController
from app.controllers.customers import CustomerController
from app.controllers.gaps import ContentGapsController, gaps_pages
from app.controllers.golive import GoLiveController
from app.controllers.health import HealthController
from app.controllers.inbound import InboundController
from app.controllers.ingest import IngestController
from app.controllers.knowledge import KnowledgeController
from app.controllers.review import ReviewController
from app.controllers.support_health import SupportHealthController
from app.controllers.tickets import TicketController
from app.controllers.web import web_router
from app.controllers.widget import WidgetController

ROUTE_HANDLERS: list[Any] = [
    HealthController,
    IngestController,
    InboundController,
    TicketController,
    CustomerController,
    web_router,
    ReviewController,
    GoLiveController,
    ContentGapsController,
    gaps_pages,
    SupportHealthController,
    CustomerMessagesController,
    KnowledgeController,
    WidgetController,
]
