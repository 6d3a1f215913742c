"""Workers: claim queued tickets from Postgres, run the ticket processor under a heartbeated lease, wake on
NOTIFY (polling as the fallback), drain the delivery outbox, run periodic maintenance, and stop gracefully.

Safety does not rest on the worker behaving: every completing write is fenced by the claim's token, so a worker
that was paused or cut off past its lease cannot complete anything afterwards. The parts:

- `claims`: the claim loop, one ticket's heartbeats and settling, crashes recorded, claims given back;
- `listener`: the LISTEN connection, reconnected after any loss;
- `outbox_loop`: sends due deliveries when woken and on every poll tick;
- `periodic`: jobs such as maintenance, on a jittered schedule;
- `worker`: the `Worker` that runs them together and stops them within the grace period;
- `wiring`: the production worker of `deskpilot serve` and of the `deskpilot worker` process;
- `context`: what the parts share (identity, pool, events, the database backoff, stop-aware waiting).
"""

from app.worker.claims import Processor, ProcessorFactory, describe_error
from app.worker.context import TRANSIENT_DB_ERRORS, DatabaseBackoff, make_worker_id
from app.worker.outbox_loop import OutboxDrain
from app.worker.periodic import PeriodicJob
from app.worker.wiring import (
    build_worker,
    run_on_event_loop,
    run_worker_process,
    start_background_work,
    stop_background_work,
)
from app.worker.worker import DEFAULT_GRACE_S, Worker

__all__ = [
    "DEFAULT_GRACE_S",
    "TRANSIENT_DB_ERRORS",
    "DatabaseBackoff",
    "OutboxDrain",
    "PeriodicJob",
    "Processor",
    "ProcessorFactory",
    "Worker",
    "build_worker",
    "describe_error",
    "make_worker_id",
    "run_on_event_loop",
    "run_worker_process",
    "start_background_work",
    "stop_background_work",
]
