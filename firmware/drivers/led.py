# LED patterns per state, for a single LED and for an RGB LED; and the pattern player they run
# on, which drivers/buzzer.py shares (class Buzzer(Led)).
#
# The rhythm alone tells the states apart (a single LED has nothing else); an RGB LED adds
# colour. The same table drives both: a single-LED board turns any non-zero colour into "on".
#
#   state        rhythm (one cycle)                         RGB colour   meaning for the person
#   idle         off                                        -            nothing happening
#   sending      fast blink 100 ms on / 100 ms off          amber        alarm is being sent
#   stored       slow blink 500 ms on / 1500 ms off         blue         received by the township
#   coming       steady on                                  green        a responder acknowledged
#   failing      double flash 150/150/150 then 1550 off     red          not getting through, still trying
#   unprovisioned short flash 100 ms every 2 s              magenta      needs a technician
#   error        steady on                                  red          hardware fault (reader, flash)
# One-shot overlays (flash; then back to the state above):
#   checkin_stored     300 ms on                            amber        card read, stored on the unit
#   checkin_confirmed  1000 ms on                           green        the township has it
#   ack                2 x 60 ms flash                      white        button press registered
#
# The player: a looping pattern (set) with a one-shot overlay (flash / play_once) that returns
# to the looping pattern afterwards. poll() writes the output only when the value changes, so
# the pin (and the host board's history) sees transitions, not a write every poll.
#
# RAM: a pattern is bytes of (duration in 10 ms units, value) pairs: b"\x0a\x06\x0a\x00" is
# 100 ms of value 6 then 100 ms of 0. A table is one string of names and one bytes object of
# patterns, each a length byte then its pairs, in the same order: two constants instead of a
# dict of bytes objects (measured on the Unix port, 64-bit: 1.8 KB -> 0.5 KB for the LED's).

import time

from micropython import const

# Colours as a bit mask: red 4, green 2, blue 1 (amber 6, magenta 5, white 7).
_NAMES = const("idle sending stored coming failing unprovisioned error checkin_stored checkin_confirmed ack")
_PATTERNS = const(
    b"\x02\x64\x00"  # idle: 1000ms off
    b"\x04\x0a\x06\x0a\x00"  # sending: 100ms amber 100ms off
    b"\x04\x32\x01\x96\x00"  # stored: 500ms blue 1500ms off
    b"\x02\x64\x02"  # coming: 1000ms green
    b"\x08\x0f\x04\x0f\x00\x0f\x04\x9b\x00"  # failing: 150ms red 150ms off 150ms red 1550ms off
    b"\x04\x0a\x05\xbe\x00"  # unprovisioned: 100ms magenta 1900ms off
    b"\x02\x64\x04"  # error: 1000ms red
    b"\x02\x1e\x06"  # checkin_stored: 300ms amber
    b"\x02\x64\x02"  # checkin_confirmed: 1000ms green
    b"\x08\x06\x07\x06\x00\x06\x07\x06\x00"  # ack: 60ms white 60ms off 60ms white 60ms off
)


class Led:
    # hw: board.led (.rgb(r, g, b)); state: the name shown (the overlay's while one plays);
    # value: the output now (colour bits); base: (name, steps, t0, 0x3FFFFFFF) looping from t0;
    # once: (name, steps, t0, n) on top, played once (n 0) or looped for n ms.
    _names = _NAMES
    _patterns = _PATTERNS
    _idle = "idle"  # the pattern at start; None (the buzzer): off, and an on/off output

    def __init__(self, hw, now_ms=None):
        self.hw = hw
        self._now = now_ms or time.ticks_ms
        self.base = self.once = self.state = self.value = None
        if self._idle:
            self.set(self._idle)
        else:
            self.poll()

    def _steps(self, name):
        # The pattern called `name` in this class's table (KeyError if there is none).
        p = 0
        for n in self._names.split():
            k = self._patterns[p]
            if n == name:
                return self._patterns[p + 1:p + 1 + k]
            p += 1 + k
        raise KeyError(name)

    def set(self, state):
        """Loop the pattern of `state` (setting the same state again keeps its rhythm)."""
        if self.base is not None and self.base[0] == state:
            return
        self.base = (state, self._steps(state), self._now(), 0x3FFFFFFF)  # longer than any ticks_diff
        self.poll()

    def flash(self, name, n=0):
        """Play `name` once on top of the state (or looped for n ms if n > 0), then back."""
        self.once = (name, self._steps(name), self._now(), n)
        self.poll()

    def poll(self):
        now = self._now()
        v = None
        for k in range(2):  # the overlay first, then the base pattern
            p = self.base if k else self.once
            if p is None or v is not None:
                continue
            s = p[1]
            t = time.ticks_diff(now, p[2])
            total = 0
            for i in range(0, len(s), 2):
                total += s[i] * 10
            if t < (p[3] or total):
                t %= total
                for i in range(0, len(s), 2):
                    v = s[i + 1]
                    t -= s[i] * 10
                    if t < 0:
                        break
            elif not k:
                self.once = None  # the overlay is over
        p = self.once or self.base
        self.state = p[0] if p else None
        if v is None:
            v = 0
        if v != self.value:
            self.value = v
            if self._idle:
                self.hw.rgb(v >> 2 & 1, v >> 1 & 1, v & 1)
            elif v:
                self.hw.on()
            else:
                self.hw.off()
        return v
