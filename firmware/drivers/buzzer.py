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
#
# The LED's pattern player (drivers/led.py) with an on/off output and this table: a siren is its
# one-shot overlay looped for the duration (once[2] > 0), a beep or the chirp an overlay played once.

from micropython import const

from drivers.led import Led

# (10 ms units, on) pairs after a length byte, in the order of the names (see drivers/led.py).
_NAMES = const("stored confirmed error siren0 siren1 siren2 siren3")
_PATTERNS = const(
    b"\x02\x08\x01"  # stored: 80ms on
    b"\x06\x08\x01\x08\x00\x08\x01"  # confirmed: 80ms on 80ms off 80ms on
    b"\x02\x3c\x01"  # error: 600ms on
    b"\x02\x64\x01"  # siren0: 1000ms on
    b"\x04\x19\x01\x19\x00"  # siren1: 250ms on 250ms off
    b"\x0c\x0a\x01\x0a\x00\x0a\x01\x0a\x00\x0a\x01\x64\x00"  # siren2: 100 on 100 off x3, 1000 off
    b"\x02\x08\x01"  # siren3: 80ms on
)


class Buzzer(Led):
    # hw: board.buzzer (.on(), .off()); the rest as in Led.
    _names = _NAMES
    _patterns = _PATTERNS
    _idle = None  # off at start; the output is on/off (Led.poll)

    def siren(self, on, pattern=0, duration_s=0):
        if not on:
            self.once = None
            self.poll()
        elif pattern == 3:
            self.flash("siren3")  # the chirp: once
        else:
            # 0x3FFFFFFF: longer than any ticks_diff, i.e. until siren(False)
            self.flash("siren%d" % (pattern if pattern in (1, 2) else 0), duration_s * 1000 or 0x3FFFFFFF)

    def beep(self, name):
        if self.once is None or not self.once[2]:  # not while a siren sounds
            self.flash(name)
