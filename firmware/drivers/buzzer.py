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

# (10 ms units, on) pairs, see drivers/player.py.
SIRENS = {
    0: b"\x64\x01",  # 1000ms:1
    1: b"\x19\x01\x19\x00",  # 250ms:1 250ms:0
    2: b"\x0a\x01\x0a\x00\x0a\x01\x0a\x00\x0a\x01\x64\x00",  # 100ms:1 100ms:0 100ms:1 100ms:0 100ms:1 1000ms:0
    3: b"\x08\x01",  # 80ms:1
}

BEEPS = {
    "stored": b"\x08\x01",  # 80ms:1
    "confirmed": b"\x08\x01\x08\x00\x08\x01",  # 80ms:1 80ms:0 80ms:1
    "error": b"\x3c\x01",  # 600ms:1
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
