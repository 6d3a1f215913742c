"""Failed authentications per client address: the admin API's 401s and the console's failed sign-ins.

Within a sliding window, the first failures cost nothing; from half the limit on, each further failure is answered
a little later (doubling, capped), and at the limit the address is refused with 429 and `Retry-After` until its
oldest failure leaves the window. A success clears the address. Counts live in the process: with several API
processes (`serve --processes N`) an address gets up to N times the limit.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from core.errors import TooManyRequests

WINDOW_S = 15 * 60.0
FIRST_DELAY_S = 0.1
MAX_DELAY_S = 2.0
# Addresses remembered at once: the least recently failing are forgotten first, so memory stays bounded.
MAX_ADDRESSES = 10_000


class FailedAuthLimiter:
    """Counts failed authentications per client address; see the module docstring for the policy."""

    def __init__(self, limit: int, *, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, address: str) -> deque[float] | None:
        failures = self._failures.get(address)
        if failures is None:
            return None
        horizon = self._clock() - self.window_s
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        return failures

    def check(self, address: str) -> None:
        """Raise TooManyRequests while the address has used up its failures; call before checking credentials."""
        failures = self._recent(address)
        if failures is not None and len(failures) >= self.limit:
            raise TooManyRequests(
                "too many failed sign-in attempts from this address; wait before trying again",
                retry_after_s=failures[0] + self.window_s - self._clock(),
            )

    def record_failure(self, address: str) -> float:
        """Count a failure; returns how long to hold the answer back (0 for the first half of the limit)."""
        failures = self._recent(address)
        if failures is None:
            failures = self._failures[address] = deque()
        failures.append(self._clock())
        self._failures.move_to_end(address)
        while len(self._failures) > MAX_ADDRESSES:
            self._failures.popitem(last=False)
        beyond_free = len(failures) - self.limit // 2
        if beyond_free <= 0:
            return 0.0
        return min(MAX_DELAY_S, FIRST_DELAY_S * 2.0 ** (beyond_free - 1))

    async def failed(self, address: str) -> None:
        """Count a failure and hold the answer back as the policy says."""
        delay = self.record_failure(address)
        if delay:
            await asyncio.sleep(delay)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)

    def failures(self, address: str) -> int:
        failures = self._recent(address)
        return len(failures) if failures is not None else 0
