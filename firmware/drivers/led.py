# LED patterns per state, for a single LED and for an RGB LED.
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
# One-shot overlays (play_once; then back to the state above):
#   checkin_stored     300 ms on                            amber        card read, stored on the unit
#   checkin_confirmed  1000 ms on                           green        the township has it
#   ack                2 x 60 ms flash                      white        button press registered

from drivers.player import Player

# Colours as a bit mask (r = 4, g = 2, b = 1); patterns are (10 ms units, colour) pairs, see
# drivers/player.py.
OFF = 0
RED = 4
GREEN = 2
BLUE = 1
AMBER = 6
MAGENTA = 5
WHITE = 7

PATTERNS = {
    "idle": b"\x64\x00",  # 1000ms:OFF
    "sending": b"\x0a\x06\x0a\x00",  # 100ms:AMBER 100ms:OFF
    "stored": b"\x32\x01\x96\x00",  # 500ms:BLUE 1500ms:OFF
    "coming": b"\x64\x02",  # 1000ms:GREEN
    "failing": b"\x0f\x04\x0f\x00\x0f\x04\x9b\x00",  # 150ms:RED 150ms:OFF 150ms:RED 1550ms:OFF
    "unprovisioned": b"\x0a\x05\xbe\x00",  # 100ms:MAGENTA 1900ms:OFF
    "error": b"\x64\x04",  # 1000ms:RED
    "checkin_stored": b"\x1e\x06",  # 300ms:AMBER
    "checkin_confirmed": b"\x64\x02",  # 1000ms:GREEN
    "ack": b"\x06\x07\x06\x00\x06\x07\x06\x00",  # 60ms:WHITE 60ms:OFF 60ms:WHITE 60ms:OFF
}


class Led:
    def __init__(self, hw, now_ms=None):
        self.hw = hw  # board.led: .rgb(r, g, b), .is_rgb
        self._p = Player(self._out, now_ms, OFF)
        self.set("idle")

    def _out(self, c):
        self.hw.rgb(c >> 2 & 1, c >> 1 & 1, c & 1)

    def set(self, state):
        self._p.set(state, PATTERNS[state])

    def flash(self, state):
        self._p.play_once(state, PATTERNS[state])

    @property
    def state(self):
        return self._p.state

    @property
    def value(self):
        """The colour shown now as (r, g, b), 0/1 each."""
        c = self._p.value
        return (c >> 2 & 1, c >> 1 & 1, c & 1)

    def poll(self):
        return self._p.poll()
