# Push button: debounce and gestures, over any callable that returns 1 while pressed.
#
# What it must survive: contact bounce (a few ms of 0/1 chatter on every edge), a brush or a
# child's tap (short), a person pressing and holding (long), and a slow or irregular poll rate
# (a busy main loop): gestures are measured on the debounced edges' timestamps, not on polls.
#
# Gestures, reported once each by poll():
#   HOLD  the button has been held down `hold_ms` (about one second): raise an alarm;
#   LONG  (4) still held at 5 s: a second, deliberate gesture;
#   TAPS  a series of short presses (each shorter than 400 ms, gaps shorter than 400 ms) has
#         ended; `taps` holds how many (a triple tap cancels an alarm in the alarm role);
#   DOWN / UP (1 / 2)  debounced edges (30 ms), for feedback (a click of the buzzer) if wanted.
# A press that ends between 400 ms and hold_ms is no gesture at all (neither tap nor hold).
#
# Polling, not interrupts: the debounce runs in poll(), called every few to few tens of ms.
# RAM: only HOLD and TAPS (what the alarm role imports) are public names; the other codes, the
# timings and the private state use names the VM already has (see Button).

import time

from micropython import const

_DOWN = const(1)
_UP = const(2)
HOLD = const(3)
_LONG = const(4)
TAPS = const(5)
_DEBOUNCE_MS = const(30)
_LONG_MS = const(5000)
_TAP_MAX_MS = const(400)
_GAP_MS = const(400)


class Button:
    # read: the level callable; _now: clock; hold_ms (settable); taps (valid when poll() returned
    # TAPS); value: debounced level; n: taps counted in the current series; k: 1 after HOLD, 2
    # after LONG in this press; key: the raw level seen last, since t; start, stop: times of the
    # debounced press and release edges; buf: gestures not yet returned.
    def __init__(self, read, now_ms=None, hold_ms=1000):
        self.read = read
        self._now = now_ms or time.ticks_ms
        self.hold_ms = hold_ms
        self.start = self.stop = self.t = self._now()
        self.value = self.key = 1 if read() else 0
        self.k = self.n = self.taps = 0
        self.buf = []

    def poll(self):
        """One pending gesture or None. Call every few to few tens of ms."""
        now = self._now()
        raw = 1 if self.read() else 0
        if raw != self.key:
            self.key = raw
            self.t = now
        elif raw != self.value and time.ticks_diff(now, self.t) >= _DEBOUNCE_MS:
            # Stable long enough: the edge happened when the level first changed.
            self.value = raw
            if raw:
                self.start = self.t
                self.k = 0
                self.buf.append(_DOWN)
            else:
                self.stop = self.t
                self.buf.append(_UP)
                if not self.k and time.ticks_diff(self.stop, self.start) < _TAP_MAX_MS:
                    self.n += 1
                else:
                    self.n = 0  # a long or held press ends any tap series
        if self.value:
            held = time.ticks_diff(now, self.start)
            if self.k == 0 and held >= self.hold_ms:
                self.k = 1
                self.n = 0
                self.buf.append(HOLD)
            if self.k == 1 and held >= _LONG_MS:
                self.k = 2
                self.buf.append(_LONG)
        elif self.n and time.ticks_diff(now, self.stop) >= _GAP_MS:
            self.taps = self.n
            self.n = 0
            self.buf.append(TAPS)
        if self.buf:
            return self.buf.pop(0)
        return None
