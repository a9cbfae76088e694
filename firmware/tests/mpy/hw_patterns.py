# LED patterns per state (RGB and single LED) and buzzer patterns, on the MicroPython VM with a
# fake clock. Run by firmware/tests/test_hw_drivers.py.
from hw_check import Clock, check, done, eq

from drivers.buzzer import Buzzer
from drivers.led import Led


class FakeLed:
    def __init__(self, is_rgb):
        self.is_rgb = is_rgb
        self.writes = []
        self.v = None

    def rgb(self, r, g, b):
        v = (r, g, b) if self.is_rgb else ((1, 1, 1) if (r or g or b) else (0, 0, 0))
        self.v = v
        self.writes.append(v)


def trace(state, is_rgb=True, ms=4000, step=10):
    """Sampled output of one state: list of (t, rgb) at each change."""
    clk = Clock()
    hw = FakeLed(is_rgb)
    led = Led(hw, clk)
    led.set(state)
    out = []
    last = None
    for t in range(0, ms, step):
        led.poll()
        if hw.v != last:
            out.append((t, hw.v))
            last = hw.v
        clk.advance(step)
    return out


def rhythm(tr):
    """Durations between changes (the shape a person sees)."""
    return [tr[i + 1][0] - tr[i][0] for i in range(len(tr) - 1)]


on = lambda v: 1 if any(v) else 0

# Each state's rhythm on a single LED (what a person without colour sees).
s = trace("sending", False, 1000)
eq("single_sending_fast_blink", rhythm(s)[:4], [100, 100, 100, 100])
s = trace("stored", False, 4000)
eq("single_stored_slow_blink", rhythm(s)[:3], [500, 1500, 500])
s = trace("coming", False, 4000)
eq("single_coming_steady", [on(v) for _, v in s], [1])
s = trace("failing", False, 4000)
eq("single_failing_double_flash", rhythm(s)[:5], [150, 150, 150, 1550, 150])
eq("single_idle_off", [on(v) for _, v in trace("idle", False, 2000)], [0])

# The four states a person must tell apart differ in rhythm alone (single LED).
shapes = {}
for st in ("sending", "stored", "coming", "failing"):
    tr = trace(st, False, 4000)
    shapes[st] = (tuple(rhythm(tr)[:4]), on(tr[0][1]))
check("single_states_distinct", len(set(shapes.values())) == 4, repr(shapes))

# RGB: same rhythm, with colours.
eq("rgb_sending_amber", trace("sending")[0][1], (1, 1, 0))
eq("rgb_stored_blue", trace("stored")[0][1], (0, 0, 1))
eq("rgb_coming_green", trace("coming")[0][1], (0, 1, 0))
eq("rgb_failing_red", trace("failing")[0][1], (1, 0, 0))
eq("rgb_same_rhythm_as_single", rhythm(trace("failing")), rhythm(trace("failing", False)))

# Writes only on change (the pin / host history sees transitions, not every poll).
clk = Clock()
hw = FakeLed(True)
led = Led(hw, clk)
led.set("coming")
for _ in range(100):
    led.poll()
    clk.advance(10)
eq("led_writes_only_on_change", hw.writes, [(0, 0, 0), (0, 1, 0)])

# Setting the same state again keeps the rhythm (no restart, no extra blink).
clk = Clock()
hw = FakeLed(True)
led = Led(hw, clk)
led.set("sending")
clk.advance(150)
led.poll()
led.set("sending")
eq("same_state_keeps_phase", hw.v, (0, 0, 0))

# A one-shot overlay plays, then the base state comes back.
clk = Clock()
hw = FakeLed(True)
led = Led(hw, clk)
led.set("stored")
clk.advance(600)
led.poll()
led.flash("checkin_confirmed")
eq("flash_overlay_on", (led.state, hw.v), ("checkin_confirmed", (0, 1, 0)))
clk.advance(1010)
led.poll()
eq("flash_overlay_returns", led.state, "stored")



def table_ok(player):
    """Every name has a pattern of (duration > 0, value) pairs and the table has nothing else."""
    steps = [player._steps(n) for n in player._names.split()]
    return (all(len(st) >= 2 and len(st) % 2 == 0 and all(st[i] > 0 for i in range(0, len(st), 2)) for st in steps)
            and sum(len(st) + 1 for st in steps) == len(player._patterns))


check("every_pattern_has_steps", table_ok(Led(FakeLed(True), Clock())))
led = Led(FakeLed(True), Clock())
led.set("coming")
eq("led_value_bits", led.value, 2)  # green


# -- buzzer ----------------------------------------------------------------------------------
class FakeBuzzer:
    def __init__(self):
        self.v = 0
        self.changes = 0

    def on(self):
        self.v = 1
        self.changes += 1

    def off(self):
        self.v = 0
        self.changes += 1


def btrace(start, ms, step=10):
    clk = Clock()
    hw = FakeBuzzer()
    bz = Buzzer(hw, clk)
    start(bz)
    out, last = [], None
    for t in range(0, ms, step):
        bz.poll()
        if hw.v != last:
            out.append((t, hw.v))
            last = hw.v
        clk.advance(step)
    return out, bz


tr, bz = btrace(lambda b: b.siren(True, 1, 2), 3000)
eq("siren1_rhythm", rhythm(tr)[:4], [250, 250, 250, 250])
check("siren1_duration", tr[-1] == (1750, 0) and len(tr) == 8 and bz.once is None, repr(tr[-2:]))
tr, bz = btrace(lambda b: b.siren(True, 0, 0), 5000)
eq("siren0_steady_until_off", tr, [(0, 1)])
tr, _ = btrace(lambda b: b.siren(True, 2, 0), 3000)
eq("siren2_patrol_rhythm", rhythm(tr)[:6], [100, 100, 100, 100, 100, 1000])
tr, _ = btrace(lambda b: b.siren(True, 3, 0), 1000)
eq("siren3_chirp_once", [v for _, v in tr if v], [1])
tr, _ = btrace(lambda b: b.siren(True, 99, 1), 1500)
check("siren_unknown_pattern_steady", tr[-1] == (1000, 0), repr(tr))
tr, _ = btrace(lambda b: b.beep("confirmed"), 1000)
eq("beep_confirmed_two", [v for _, v in tr if v], [1, 1])
tr, _ = btrace(lambda b: (b.siren(True, 1, 0), b.beep("error")), 1000)
eq("beep_does_not_mask_siren", rhythm(tr)[:2], [250, 250])

clk = Clock()
hw = FakeBuzzer()
bz = Buzzer(hw, clk)
bz.siren(True, 0, 0)
bz.poll()
bz.siren(False)
bz.poll()
eq("siren_off", (hw.v, bz.once), (0, None))
check("every_buzzer_pattern_has_steps", table_ok(bz))
done()
