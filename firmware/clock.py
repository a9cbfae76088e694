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

_MIN_PLAUSIBLE_S = 1704067200  # 2024-01-01T00:00:00Z
_REANCHOR_MS = 3600 * 1000


class Clock:
    def __init__(self, ticks=ticks_ms):
        self._ticks = ticks
        self._base_s = 0  # wall seconds at _base_ticks; 0 = unknown
        self._base_ticks = 0
        self._frac_ms = 0
        self.adoptions = 0

    @property
    def known(self):
        return self._base_s != 0

    def adopt(self, gateway_time_s):
        """Take the gateway's time (Unix seconds). Returns False if it is implausible."""
        if not isinstance(gateway_time_s, int) or gateway_time_s < _MIN_PLAUSIBLE_S:
            return False
        self._base_s = gateway_time_s
        self._base_ticks = self._ticks()
        self._frac_ms = 0
        self.adoptions += 1
        return True

    def _reanchor(self, now):
        elapsed = ticks_diff(now, self._base_ticks)
        if elapsed >= _REANCHOR_MS:
            self._base_s += elapsed // 1000
            self._base_ticks = ticks_add(self._base_ticks, (elapsed // 1000) * 1000)

    def now(self):
        """Unix seconds, or 0 while unknown."""
        if not self._base_s:
            return 0
        now = self._ticks()
        self._reanchor(now)
        return self._base_s + ticks_diff(now, self._base_ticks) // 1000

    def at_ticks(self, t):
        """Wall seconds of an earlier instant given by ticks_ms(), or 0 if unknown/out of range."""
        if not self._base_s:
            return 0
        now = self._ticks()
        self._reanchor(now)
        ago_ms = ticks_diff(now, t)
        if ago_ms < 0:
            return 0
        s = self._base_s + (ticks_diff(now, self._base_ticks) - ago_ms) // 1000
        return s if s >= _MIN_PLAUSIBLE_S else 0
