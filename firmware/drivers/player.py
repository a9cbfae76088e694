# Plays a timed pattern on an output, looping or once, with a one-shot overlay that returns to
# the looping pattern afterwards. Shared by the LED and buzzer drivers. poll() writes the output
# only when the value changes, so the pin (and the host board's history) sees transitions, not a
# write every poll.
#
# A pattern is bytes of (duration in 10 ms units, value) pairs: b"\x0a\x06\x0a\x00" is 100 ms of
# value 6 then 100 ms of 0. Bytes rather than tuples of tuples: a pattern table then costs a few
# hundred bytes of heap instead of ~2 KB (measured on the Unix port).

import time


class Player:
    def __init__(self, write, now_ms=None, idle=0):
        self._write = write
        self._now = now_ms or time.ticks_ms
        self._idle = idle
        self.base = None  # (name, steps) looping
        self.once = None  # (name, steps, end_ms or None) played on top of base
        self._t0 = self._now()
        self._once_t0 = 0
        self.value = None
        self.poll()

    def set(self, name, steps):
        if self.base is not None and self.base[0] == name:
            return  # same state again: keep the rhythm instead of restarting it
        self.base = (name, steps)
        self._t0 = self._now()
        self.poll()

    def play_once(self, name, steps, repeat_ms=0):
        """Overlay `steps` once (or looped for repeat_ms if repeat_ms > 0), then back to base."""
        self._once_t0 = self._now()
        self.once = (name, steps, repeat_ms)
        self.poll()

    def stop_once(self):
        self.once = None
        self.poll()

    @property
    def state(self):
        if self.once is not None:
            return self.once[0]
        return self.base[0] if self.base else None

    @staticmethod
    def _at(steps, elapsed, loop):
        n = len(steps)
        total = 0
        for i in range(0, n, 2):
            total += steps[i] * 10
        if total <= 0:
            return steps[1] if n > 1 else None
        if elapsed >= total:
            if not loop:
                return None
            elapsed %= total
        for i in range(0, n, 2):
            d = steps[i] * 10
            if elapsed < d:
                return steps[i + 1]
            elapsed -= d
        return steps[n - 1]

    def poll(self):
        now = self._now()
        v = None
        if self.once is not None:
            name, steps, repeat_ms = self.once
            elapsed = time.ticks_diff(now, self._once_t0)
            if repeat_ms > 0:
                v = self._at(steps, elapsed, True) if elapsed < repeat_ms else None
            else:
                v = self._at(steps, elapsed, False)
            if v is None:
                self.once = None
        if v is None and self.base is not None:
            v = self._at(self.base[1], time.ticks_diff(now, self._t0), True)
        if v is None:
            v = self._idle
        if v != self.value:
            self.value = v
            self._write(v)
        return v
