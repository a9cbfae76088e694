"""Wall-clock time without an RTC: adopted from the gateway's acks, carried by ticks_ms().

Failures it survives:
- no RTC, or an RTC that lost power: the device starts with the time unknown and stamps frames
  with 0 ("unknown", SPEC section 1) until the first ack gives it the gateway's time;
- ticks_ms() wrap-around (its period is 2^30 ms on most ports, and ticks_diff() is only valid
  within half of it): the anchor is moved forward at least every hour, so it never drifts out of
  range however long the device runs without an ack;
- a nonsense gateway time (before 2024, e.g. a gateway whose own clock is unset): ignored.

Events that happened while the time was unknown keep their ticks; at_ticks() turns them into
wall time once the clock is known, if it is still the same boot (see app/uplink.py).

Attribute names are short and shared with other modules (each distinct name is a qstr, ~11 bytes
of heap for good): _now the ticks function, base the wall seconds at ticks _at (0 = unknown).
"""

import time

# const() is the compiler's: no `from micropython import const` (it would cost a global).

_MIN_PLAUSIBLE_S = const(1704067200)  # 2024-01-01T00:00:00Z
_REANCHOR_MS = const(3600 * 1000)


class Clock:
    def __init__(self, ticks=time.ticks_ms):
        self._now = ticks
        self.base = 0
        self._at = 0

    def adopt(self, t):
        """Take the gateway's time `t` (Unix seconds). Returns False if it is implausible."""
        if not isinstance(t, int) or t < _MIN_PLAUSIBLE_S:
            return False
        self.base = t
        self._at = self._now()
        return True

    def now(self):
        """Unix seconds, or 0 while unknown."""
        if not self.base:
            return 0
        now = self._now()
        elapsed = time.ticks_diff(now, self._at)
        if elapsed >= _REANCHOR_MS:  # keep the anchor within reach of ticks_diff
            self.base += elapsed // 1000
            self._at = time.ticks_add(self._at, (elapsed // 1000) * 1000)
        return self.base + time.ticks_diff(now, self._at) // 1000

    def at_ticks(self, t):
        """Wall seconds of an earlier instant given by ticks_ms(), or 0 if unknown/out of range."""
        if not self.now() or time.ticks_diff(self._now(), t) < 0:  # now() also re-anchors
            return 0
        s = self.base + time.ticks_diff(t, self._at) // 1000
        return s if s >= _MIN_PLAUSIBLE_S else 0
