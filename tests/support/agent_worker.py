"""A real agent worker process that SIGKILLs (or SIGSTOPs) itself at a chosen point of the resolution graph
(`kill -9` and SIGSTOP tests).

    python -m tests.support.agent_worker --url URL [--concurrency N] [--die-at POINT | --pause-at POINT]
                                         [--ticket ID] [--no-outbox]

runs `app.worker.run_worker_process` (the production loop: pool, LISTEN, lease and heartbeats, outbox drain,
signal handling) around the real `agent.runner.TicketProcessor`: the real embedding model, routing models,
offline drafter and fenced decision transaction. With `--die-at` the process sends itself SIGKILL (no cleanup,
no `finally`, no lease release) the first time a ticket reaches one of `POINTS`:

- `after:<node>`, a node of the pipeline: once the node has returned and its audit step is written, before the
  graph runs the next node;
- `deliver:before-commit`: inside the decision transaction, after its last statement, before COMMIT;
- `deliver:after-commit`: right after the decision transaction committed: the reply is queued in the outbox and
  not sent yet.

The hooks wrap the node functions when this process builds its own graph, and the decision transaction's helpers
in `agent.outcome`; nothing in the product knows about them. The embedder is loaded, and the risk detector fitted
(or loaded from its cache), before the worker starts, so "listening on" in the log means the process takes a ticket
and runs it through the graph at once. `--no-outbox` leaves sending to other
processes. Settings (lease, poll interval, SMTP) come from the environment, as for `deskpilot worker`.

`--pause-at after:<node>` sends SIGSTOP instead (once): the whole process, heartbeats included, stops there, and
runs on from that point, with the graph's next node, when it gets SIGCONT. `--ticket ID` arms an `after:<node>`
point for that ticket only; the process runs every other ticket normally.

The test-process side (`AgentWorkerProcess`) starts this module, or the real `deskpilot worker` command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from agent import nodes, outcome
from agent.graph import PIPELINE, build_graph
from agent.runner import TicketProcessor
from agent.scoring.risk_model import risk_model
from app.worker import Processor, ProcessorFactory, run_on_event_loop, run_worker_process
from core.metrics import Metrics
from core.settings import PROJECT_ROOT, Settings
from delivery.outbox import drain_outbox
from knowledge.embedder import get_embedder
from tests.support.workers import log_to_stderr

NODE_POINTS = tuple(f"after:{name}" for name in PIPELINE)
POINTS = (*NODE_POINTS, "deliver:before-commit", "deliver:after-commit")
KILL_MARK = "agent_worker: SIGKILL at"
"""What the process writes to stderr just before it kills itself: `<mark> <point> (ticket <id>)`."""
PAUSE_MARK = "agent_worker: SIGSTOP at"
"""What the process writes to stderr just before it stops itself: `<mark> <point> (ticket <id>)`."""


def die(point: str, ticket_id: object = None) -> NoReturn:
    sys.stderr.write(f"{KILL_MARK} {point} (ticket {ticket_id})\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    raise SystemExit("SIGKILL was not delivered")  # unreachable: SIGKILL cannot be caught


def pause(point: str, ticket_id: object = None) -> None:
    """Stop the whole process (SIGSTOP cannot be caught either); returns once someone sends SIGCONT."""
    sys.stderr.write(f"{PAUSE_MARK} {point} (ticket {ticket_id})\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGSTOP)


def halting_after(point: str, node: nodes.Node, *, stop: bool = False, ticket: str | None = None) -> nodes.Node:
    """`node`, then death (or, with `stop`, one pause) once it returned, for `ticket` only when given."""
    paused = False

    @functools.wraps(node)
    async def run(state: Any, *, runtime: Any) -> dict[str, Any]:
        nonlocal paused
        update = await node(state, runtime=runtime)
        claim = runtime.context.claim
        ticket_id = claim.ticket_id if claim is not None else None
        if ticket is not None and str(ticket_id) != ticket:
            return update
        if not stop:
            die(point, ticket_id)
        if not paused:
            paused = True
            pause(point, ticket_id)
        return update

    return run


def graph_halting_after(point: str, node_name: str, *, stop: bool = False, ticket: str | None = None) -> Any:
    """The production graph, compiled with `node_name` wrapped (the builder reads `agent.nodes` when called)."""
    original = getattr(nodes, node_name)
    setattr(nodes, node_name, halting_after(point, original, stop=stop, ticket=ticket))
    try:
        return build_graph().compile()
    finally:
        setattr(nodes, node_name, original)


def arm_decision_hooks(point: str) -> None:
    """Kill inside, or right after, the decision transaction of `agent.outcome.commit_reply`."""
    if point == "deliver:before-commit":

        async def notify_then_die(conn: Any) -> None:
            # `notify_work` is the last statement of the reply's transaction: everything is written, not committed.
            die(point)

        setattr(outcome, "notify_work", notify_then_die)  # noqa: B010 - a module attribute the product imported
    elif point == "deliver:after-commit":
        commit_reply = outcome.commit_reply

        async def commit_then_die(pool: Any, settings: Any, claim: Any, *args: Any, **kwargs: Any) -> Any:
            await commit_reply(pool, settings, claim, *args, **kwargs)
            die(point, claim.ticket_id)

        setattr(outcome, "commit_reply", commit_then_die)  # noqa: B010 - looked up by `agent.nodes` at call time


def dying_processor(point: str | None, *, stop: bool = False, ticket: str | None = None) -> ProcessorFactory:
    """`agent.runner.make_ticket_processor`, with the process's death (or, with `stop`, its pause) armed at
    `point` (None: never), for `ticket` only when given."""
    if point is not None and point not in POINTS:
        raise ValueError(f"unknown point {point!r}; choose one of {', '.join(POINTS)}")
    if (stop or ticket is not None) and point not in NODE_POINTS:
        raise ValueError(f"a pause or a single ticket needs a point after a node ({', '.join(NODE_POINTS)})")

    def make(pool: Any, settings: Settings, metrics: Metrics) -> Processor:
        processor = TicketProcessor(pool, settings, metrics)
        if point is not None and point.startswith("after:"):
            processor.graph = graph_halting_after(point, point.removeprefix("after:"), stop=stop, ticket=ticket)
        elif point is not None:
            arm_decision_hooks(point)
        return processor

    return make


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    halt = parser.add_mutually_exclusive_group()
    halt.add_argument("--die-at", choices=POINTS, default=None)
    halt.add_argument("--pause-at", choices=NODE_POINTS, default=None)
    parser.add_argument("--ticket", default=None, help="arm the point for this ticket id only")
    parser.add_argument("--no-outbox", action="store_true", help="do not send deliveries from this process")
    args = parser.parse_args(argv)
    log_to_stderr()
    settings = Settings.from_env(env_file=None)
    # Warm: the processor's first `embeddings()` finds the model loaded, and its first ticket the risk detector
    # fitted (or loaded from the cache): from its first claim, the ticket runs through the graph at once.
    risk_model(get_embedder(settings.embedding_model))
    run_on_event_loop(
        run_worker_process(
            settings,
            args.url,
            concurrency=args.concurrency,
            make_processor=dying_processor(
                args.die_at or args.pause_at, stop=args.pause_at is not None, ticket=args.ticket
            ),
            drain=None if args.no_outbox else drain_outbox,
        )
    )


# --- for tests in the test process ----------------------------------------------------------------------------


class AgentWorkerProcess:
    """A worker process started by a test: this module (`start`) or the real `deskpilot worker` (`start_cli`)."""

    def __init__(self, process: asyncio.subprocess.Process, log_path: Path, name: str) -> None:
        self.process = process
        self.log_path = log_path
        self.name = name

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @classmethod
    async def start(
        cls,
        url: str,
        env: dict[str, str],
        log_path: Path,
        *,
        die_at: str | None = None,
        pause_at: str | None = None,
        ticket: object = None,
        outbox: bool = True,
        concurrency: int = 1,
    ) -> AgentWorkerProcess:
        args = ["-m", "tests.support.agent_worker", "--url", url, "--concurrency", str(concurrency)]
        if die_at is not None:
            args += ["--die-at", die_at]
        if pause_at is not None:
            args += ["--pause-at", pause_at]
        if ticket is not None:
            args += ["--ticket", str(ticket)]
        if not outbox:
            args.append("--no-outbox")
        return await cls._spawn(args, env, log_path, die_at or pause_at or "agent worker")

    @classmethod
    async def start_cli(cls, env: dict[str, str], log_path: Path, *, concurrency: int = 2) -> AgentWorkerProcess:
        """`deskpilot worker`: the command as operators run it (database URL and settings from `env`)."""
        args = ["-m", "app.cli", "worker", "--concurrency", str(concurrency)]
        return await cls._spawn(args, env, log_path, "deskpilot worker")

    @classmethod
    async def _spawn(cls, args: list[str], env: dict[str, str], log_path: Path, name: str) -> AgentWorkerProcess:
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env}
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                *args,
                cwd=PROJECT_ROOT,
                env=full_env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        return cls(process, log_path, name)

    @contextlib.contextmanager
    def log_on_failure(self) -> Iterator[None]:
        """Add the tail of this process's log to an assertion failing in the block."""
        try:
            yield
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- {self.name} log (tail) ---\n{self.log()[-4000:]}") from exc

    async def wait_listening(self, within_s: float) -> None:
        """Until the worker's LISTEN connection is up (it claims tickets from then on)."""
        await self.wait_log("listening on", within_s)

    async def wait_log(self, text: str, within_s: float) -> None:
        """Until `text` shows up in this process's log (or it exits first)."""
        deadline = asyncio.get_running_loop().time() + within_s
        while text not in self.log():
            if self.process.returncode is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{text!r} not in {self.name}'s log within {within_s}s:\n{self.log()[-3000:]}")
            await asyncio.sleep(0.1)

    def stopped(self) -> bool:
        """Whether the process is stopped by a signal (state `T` in /proc/PID/stat)."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat.rpartition(")")[2].split()[0] == "T"

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def wait_exit(self, within_s: float) -> int:
        try:
            return await asyncio.wait_for(self.process.wait(), within_s)
        except TimeoutError:
            raise AssertionError(f"{self.name} still running after {within_s}s:\n{self.log()[-3000:]}") from None

    async def stop(self, within_s: float = 35.0) -> None:
        """SIGTERM (the worker releases its claims), SIGKILL if it does not exit in time. A paused process gets
        SIGCONT too, to see the SIGTERM."""
        if self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        self.process.send_signal(signal.SIGCONT)
        try:
            await asyncio.wait_for(self.process.wait(), within_s)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


if __name__ == "__main__":
    main()
