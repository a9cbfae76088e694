# Push button: debounce and gestures, over any callable that returns 1 while pressed.
#
# What it must survive: contact bounce (a few ms of 0/1 chatter on every edge), a brush or a
# child's tap (short), a person pressing and holding (long), and a slow or irregular poll rate
# (a busy main loop): gestures are measured on the debounced edges' timestamps, not on polls.
#
# Gestures (constants below), reported once each by poll():
#   HOLD  the button has been held down `hold_ms` (about one second): raise an alarm;
#   LONG  still held at `long_ms` (default 5 s): a second, deliberate gesture;
#   TAPS  a series of short presses (each shorter than `tap_max_ms`, gaps shorter than `gap_ms`)
#         has ended; `taps` holds how many (a triple tap cancels an alarm in the alarm role);
#   DOWN / UP  debounced edges, for feedback (a click of the buzzer) if wanted.
# A press that ends between tap_max_ms and hold_ms is no gesture at all (neither tap nor hold).
#
# Polling, not interrupts: an IRQ handler may call wake() (it only sets a flag) so the main
# loop polls sooner; the debounce itself runs in poll().

import time

from micropython import const

DOWN = const(1)
UP = const(2)
HOLD = const(3)
LONG = const(4)
TAPS = const(5)


class Button:
    def __init__(self, read, now_ms=None, debounce_ms=30, hold_ms=1000, long_ms=5000,
                 tap_max_ms=400, gap_ms=400):
        self._read = read
        self._now = now_ms or time.ticks_ms
        self.debounce_ms = debounce_ms
        self.hold_ms = hold_ms
        self.long_ms = long_ms
        self.tap_max_ms = tap_max_ms
        self.gap_ms = gap_ms
        t = self._now()
        self.pressed = 1 if read() else 0  # debounced level
        self._cand = self.pressed
        self._cand_t = t
        self._down_t = t
        self._up_t = t
        self._held = 0  # 1 after HOLD, 2 after LONG in this press
        self.taps = 0  # taps counted in the current series (valid when poll() returns TAPS)
        self._series = 0
        self._q = []
        self.flag = False

    def wake(self, *_):
        self.flag = True  # safe from an IRQ handler: no allocation, no work

    def poll(self):
        """One pending gesture or None. Call every few to few tens of ms."""
        self.flag = False
        now = self._now()
        raw = 1 if self._read() else 0
        if raw != self._cand:
            self._cand = raw
            self._cand_t = now
        elif raw != self.pressed and time.ticks_diff(now, self._cand_t) >= self.debounce_ms:
            # Stable long enough: the edge happened when the level first changed.
            self.pressed = raw
            if raw:
                self._down_t = self._cand_t
                self._held = 0
                self._q.append(DOWN)
            else:
                self._up_t = self._cand_t
                self._q.append(UP)
                if not self._held and time.ticks_diff(self._up_t, self._down_t) < self.tap_max_ms:
                    self._series += 1
                else:
                    self._series = 0  # a long or held press ends any tap series
        if self.pressed:
            held = time.ticks_diff(now, self._down_t)
            if self._held == 0 and held >= self.hold_ms:
                self._held = 1
                self._series = 0
                self._q.append(HOLD)
            if self._held == 1 and held >= self.long_ms:
                self._held = 2
                self._q.append(LONG)
        elif self._series and time.ticks_diff(now, self._up_t) >= self.gap_ms:
            self.taps = self._series
            self._series = 0
            self._q.append(TAPS)
        if self._q:
            return self._q.pop(0)
        return None
