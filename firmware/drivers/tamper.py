# Tamper switch on the case: a debounced level with OPENED / CLOSED events.
# `read` returns 1 while the case is open. If the case is already open at start-up, the first
# poll reports OPENED (a unit that boots with its lid off has been tampered with too).

import time

from micropython import const

OPENED = const(1)
CLOSED = const(2)


class Tamper:
    def __init__(self, read, now_ms=None, debounce_ms=50):
        self._read = read
        self._now = now_ms or time.ticks_ms
        self.debounce_ms = debounce_ms
        self.is_open = 0  # debounced; starts "closed" so an open case at boot is reported
        self._cand = 0
        self._cand_t = self._now()

    def poll(self):
        now = self._now()
        raw = 1 if self._read() else 0
        if raw != self._cand:
            self._cand = raw
            self._cand_t = now
            if self.debounce_ms > 0:
                return None
        if raw != self.is_open and time.ticks_diff(now, self._cand_t) >= self.debounce_ms:
            self.is_open = raw
            return OPENED if raw else CLOSED
        return None
