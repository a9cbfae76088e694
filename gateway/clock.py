"""Injectable time for the gateway: every component takes a `clock` with `clock.now()`.

    SystemClock().now()      -> float Unix seconds (time.time())
    ManualClock(t).now()     -> t; advance(dt) / set(t) move it (tests, replays)

Monotonic durations (latency histograms, supervision sleeps) use `clock.monotonic()`; the manual
clock makes it follow `now()` so a test that advances time advances both.
"""

import threading
import time


class SystemClock:
    """Wall-clock time of the machine."""

    def now(self):
        return time.time()

    def monotonic(self):
        return time.monotonic()


class ManualClock:
    """A clock that only moves when told to (thread-safe)."""

    def __init__(self, t=1_767_225_600.0):  # 2026-01-01T00:00:00Z
        self._t = float(t)
        self._lock = threading.Lock()

    def now(self):
        with self._lock:
            return self._t

    def monotonic(self):
        return self.now()

    def set(self, t):
        with self._lock:
            self._t = float(t)

    def advance(self, dt_s):
        with self._lock:
            self._t += float(dt_s)
            return self._t
