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
"""

from time import ticks_add, ticks_diff, ticks_ms

from micropython import const

_MIN_PLAUSIBLE_S = const(1704067200)  # 2024-01-01T00:00:00Z
_REANCHOR_MS = const(3600 * 1000)


class Clock:
    def __init__(self, ticks=ticks_ms):
        self._ticks = ticks
        self._s = 0  # wall seconds at ticks self._t; 0 = unknown
        self._t = 0

    def adopt(self, gateway_time_s):
        """Take the gateway's time (Unix seconds). Returns False if it is implausible."""
        if not isinstance(gateway_time_s, int) or gateway_time_s < _MIN_PLAUSIBLE_S:
            return False
        self._s = gateway_time_s
        self._t = self._ticks()
        return True

    def now(self):
        """Unix seconds, or 0 while unknown."""
        if not self._s:
            return 0
        now = self._ticks()
        elapsed = ticks_diff(now, self._t)
        if elapsed >= _REANCHOR_MS:  # keep the anchor within reach of ticks_diff
            self._s += elapsed // 1000
            self._t = ticks_add(self._t, (elapsed // 1000) * 1000)
        return self._s + ticks_diff(now, self._t) // 1000

    def at_ticks(self, t):
        """Wall seconds of an earlier instant given by ticks_ms(), or 0 if unknown/out of range."""
        if not self.now() or ticks_diff(self._ticks(), t) < 0:  # now() also re-anchors
            return 0
        s = self._s + ticks_diff(t, self._t) // 1000
        return s if s >= _MIN_PLAUSIBLE_S else 0
