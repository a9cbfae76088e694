# Button debounce and gestures, tamper and battery drivers, on the MicroPython VM with a fake
# clock. Run by firmware/tests/test_hw_drivers.py.
from hw_check import Clock, Level, check, done, eq

from drivers import battery, button, tamper
from drivers.button import HOLD, TAPS, Button

DOWN, UP, LONG = 1, 2, 4  # drivers.button's private codes of the other gestures (its header)

NAMES = {DOWN: "down", UP: "up", HOLD: "hold", LONG: "long", TAPS: "taps"}


def play(script, poll_ms=5, tail_ms=1000, **kw):
    """Drive a Button through [(level, ms), ...]; returns [(t_ms, name), ...]."""
    clk = Clock()
    pin = Level(0)
    b = Button(pin, clk, **kw)
    t0 = clk.t
    out = []
    for level, ms in script + [(0, tail_ms)]:
        pin.v = level
        end = clk.t + ms
        while clk.t < end:
            ev = b.poll()
            while ev is not None:
                out.append((clk.t - t0, NAMES[ev] + ("%d" % b.taps if ev == TAPS else "")))
                ev = b.poll()
            clk.advance(poll_ms)
    return out


def names(evs):
    return [n for _, n in evs]


# Contact bounce on press and release: exactly one down and one up (plus a tap of 200 ms).
bounce = [(1, 2), (0, 3), (1, 1), (0, 2), (1, 200), (0, 2), (1, 3), (0, 1)]
eq("bounce_one_press", names(play(bounce)), ["down", "up", "taps1"])

# A brush shorter than the debounce time: nothing at all.
eq("brush_ignored", names(play([(1, 20), (0, 50), (1, 15)])), [])

# A child's tap (150 ms): a single tap, never a hold.
ev = play([(1, 150)])
eq("tap_no_hold", names(ev), ["down", "up", "taps1"])

# Press and hold: HOLD once, at about hold_ms after the (debounced) press began.
ev = play([(1, 1500)])
eq("hold_events", names(ev), ["down", "hold", "up"])
t_hold = [t for t, n in ev if n == "hold"][0]
check("hold_timing", 1000 <= t_hold <= 1010, "hold at %d ms" % t_hold)
t_down = [t for t, n in ev if n == "down"][0]
check("debounce_latency", 30 <= t_down <= 40, "down reported at %d ms" % t_down)

# Hold to long: HOLD then LONG, each once.
eq("long_press", names(play([(1, 5300)])), ["down", "hold", "long", "up"])

# A press between a tap and a hold (600 ms): no gesture.
eq("medium_press_nothing", [n for n in names(play([(1, 600)])) if n not in ("down", "up")], [])

# Triple tap: one TAPS event with count 3, after the gap.
triple = [(1, 100), (0, 150), (1, 100), (0, 150), (1, 100)]
ev = play(triple)
eq("triple_tap", [n for n in names(ev) if n.startswith("taps")], ["taps3"])
t_taps = [t for t, n in ev if n.startswith("taps")][0]
check("taps_after_gap", t_taps >= 600 + 400, "taps at %d" % t_taps)

# Taps further apart than the gap: two single taps.
eq("separate_taps", [n for n in names(play([(1, 100), (0, 700), (1, 100)])) if n.startswith("taps")], ["taps1", "taps1"])

# A tap then a hold: the hold ends the series, no tap event.
eq("tap_then_hold", [n for n in names(play([(1, 100), (0, 150), (1, 1200)])) if n not in ("down", "up")], ["hold"])

# Slow, irregular polling (a busy loop, 200 ms between polls) still sees the hold once.
eq("slow_poll_hold", [n for n in names(play([(1, 1500)], poll_ms=200)) if n == "hold"], ["hold"])

# Configurable hold time (provisioned hold_ms).
ev = play([(1, 2500)], hold_ms=2000)
t_hold = [t for t, n in ev if n == "hold"][0]
check("hold_ms_setting", 2000 <= t_hold <= 2010, "hold at %d ms" % t_hold)

# A button held down at start-up is the debounced level, not a new press.
b = Button(Level(1), Clock())
eq("held_at_start_no_down", b.poll(), None)

# hold_ms changed at run time (the alarm role applies a new setting): the next press uses it.
clk = Clock()
pin = Level(0)
b = Button(pin, clk)
b.hold_ms = 1500
pin.v = 1
got = []
for _ in range(400):
    e = b.poll()
    if e == HOLD:
        got.append(clk.t - 1000)
    clk.advance(5)
check("hold_ms_changed_at_run_time", len(got) == 1 and 1500 <= got[0] <= 1510, repr(got))

# -- tamper ----------------------------------------------------------------------------------
clk = Clock()
lid = Level(0)
t = tamper.Tamper(lid, clk)  # 50 ms debounce
evs = []
for level, ms in ((0, 100), (1, 10), (0, 10), (1, 200), (0, 200)):
    lid.v = level
    for _ in range(ms // 10):
        e = t.poll()
        if e:
            evs.append(e)
        clk.advance(10)
eq("tamper_debounced_events", evs, [tamper.OPENED, 2])  # 2: closed

clk = Clock()
t = tamper.Tamper(Level(1), clk)
evs = []
for _ in range(10):
    e = t.poll()
    if e:
        evs.append(e)
    clk.advance(10)
eq("tamper_open_at_boot", evs, [tamper.OPENED])

# -- battery ---------------------------------------------------------------------------------
# (ADC counts -> mV is the board's: test_hw_boards.py.)
seq = [3600, 3500, 3390, 3380, 3370, 9999, 3380, 3460, 3490, 3510, 3520, 3530, 3300, 3300, 3300]
src = iter(seq)
bat = battery.Battery(lambda: next(src), low_mv=3400)  # 100 mV hysteresis, median of 5
evs = [bat.poll() for _ in seq]
eq("battery_low_once_with_hysteresis", [e for e in evs if e], [battery.LOW, 2, battery.LOW])  # 2: OK again
check("battery_median_rejects_spike", evs[5] is None and bat.mv == 3300, "mv %r" % bat.mv)
done()
