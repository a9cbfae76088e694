# Buzzer patterns: the `siren` downlink's patterns (SPEC section 3) and short beeps for feedback.
#
#   siren pattern 0 steady            on
#   siren pattern 1 neighbour alarm   250 ms on / 250 ms off (urgent)
#   siren pattern 2 patrol alert      3 x (100 on / 100 off), then 900 ms off
#   siren pattern 3 chirp             one 80 ms chirp (no repeat)
#   beep "stored"                     one 80 ms beep         (check-in stored on the unit)
#   beep "confirmed"                  two 80 ms beeps        (check-in confirmed by the township)
#   beep "error"                      one 600 ms beep        (card not read / unit not provisioned)
# A siren runs for duration_s seconds (0 = until siren(False)); a beep plays on top of nothing
# (beeps are ignored while a siren sounds, so feedback never masks a neighbour's alarm).

from drivers.player import Player

SIRENS = {
    0: ((1000, 1),),
    1: ((250, 1), (250, 0)),
    2: ((100, 1), (100, 0), (100, 1), (100, 0), (100, 1), (1000, 0)),
    3: ((80, 1),),
}

BEEPS = {
    "stored": ((80, 1),),
    "confirmed": ((80, 1), (80, 0), (80, 1)),
    "error": ((600, 1),),
}

_FOREVER_MS = 0x3FFFFFFF


class Buzzer:
    def __init__(self, hw, now_ms=None):
        self.hw = hw  # board.buzzer: .on(), .off()
        self._p = Player(self._out, now_ms, 0)
        self.siren_on = False

    def _out(self, v):
        if v:
            self.hw.on()
        else:
            self.hw.off()

    def siren(self, on, pattern=0, duration_s=0):
        if not on:
            self.siren_on = False
            self._p.stop_once()
            return
        steps = SIRENS.get(pattern, SIRENS[0])
        if pattern == 3:
            self._p.play_once("siren3", steps)
            return
        self.siren_on = True
        ms = duration_s * 1000 if duration_s else _FOREVER_MS
        self._p.play_once("siren%d" % pattern, steps, ms)

    def beep(self, name):
        if self.siren_on and self._p.once is not None:
            return
        self._p.play_once(name, BEEPS[name])

    @property
    def value(self):
        return self._p.value

    def poll(self):
        v = self._p.poll()
        if self.siren_on and self._p.once is None:
            self.siren_on = False  # duration ran out
        return v
