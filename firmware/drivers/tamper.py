# Tamper switch on the case: a debounced level (50 ms) with OPENED / CLOSED (2) events.
# `read` returns 1 while the case is open. If the case is already open at start-up, the first
# poll reports OPENED (a unit that boots with its lid off has been tampered with too).

import time

from micropython import const

OPENED = const(1)
_CLOSED = const(2)
_DEBOUNCE_MS = const(50)


class Tamper:
    # read: the level callable; _now: clock; value: debounced level (starts "closed", so an open
    # case at boot is reported); key: the raw level seen last, since t.
    def __init__(self, read, now_ms=None):
        self.read = read
        self._now = now_ms or time.ticks_ms
        self.value = self.key = 0
        self.t = self._now()

    def poll(self):
        now = self._now()
        raw = 1 if self.read() else 0
        if raw != self.key:
            self.key = raw
            self.t = now
            return None
        if raw != self.value and time.ticks_diff(now, self.t) >= _DEBOUNCE_MS:
            self.value = raw
            return OPENED if raw else _CLOSED
        return None
