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

OFF = (0, 0, 0)
RED = (1, 0, 0)
GREEN = (0, 1, 0)
BLUE = (0, 0, 1)
AMBER = (1, 1, 0)
MAGENTA = (1, 0, 1)
WHITE = (1, 1, 1)

PATTERNS = {
    "idle": ((1000, OFF),),
    "sending": ((100, AMBER), (100, OFF)),
    "stored": ((500, BLUE), (1500, OFF)),
    "coming": ((1000, GREEN),),
    "failing": ((150, RED), (150, OFF), (150, RED), (1550, OFF)),
    "unprovisioned": ((100, MAGENTA), (1900, OFF)),
    "error": ((1000, RED),),
    "checkin_stored": ((300, AMBER),),
    "checkin_confirmed": ((1000, GREEN),),
    "ack": ((60, WHITE), (60, OFF), (60, WHITE), (60, OFF)),
}


class Led:
    def __init__(self, hw, now_ms=None):
        self.hw = hw  # board.led: .rgb(r, g, b), .is_rgb
        self._p = Player(self._out, now_ms, OFF)
        self.set("idle")

    def _out(self, rgb):
        self.hw.rgb(rgb[0], rgb[1], rgb[2])

    def set(self, state):
        self._p.set(state, PATTERNS[state])

    def flash(self, state):
        self._p.play_once(state, PATTERNS[state])

    @property
    def state(self):
        return self._p.state

    @property
    def value(self):
        return self._p.value

    def poll(self):
        return self._p.poll()
