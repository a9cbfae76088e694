# Board support: the only place that knows which chip it runs on.
#
#     from boards import load_board
#     board = load_board(sys.argv[1:])     # esp32 / rp2 (Pico W) / anything else -> host board
#
# Only board modules import `machine` and `network`; drivers and the application receive pins
# (callables), buses and objects from the board (see FIRMWARE_CONTRACT.md for the interface).
# Wiring is data: boards/wiring_<name>.py holds a plain dict per board.

import sys


def load_board(argv_or_options=None):
    plat = sys.platform
    if plat == "esp32":
        from boards import esp32 as mod
    elif plat == "rp2":
        from boards import picow as mod
    else:
        from boards import host as mod
    return mod.Board(argv_or_options)


def merge_wiring(defaults, overrides):
    """A copy of the board's wiring dict with a provisioned `pins` dict laid over it.

    Override keys are "<part>.<field>" (e.g. "button.pin": 4) or "<part>" with a dict value."""
    out = {}
    for k in defaults:
        v = defaults[k]
        out[k] = dict(v) if type(v) is dict else v
    for k in overrides or {}:
        v = overrides[k]
        if "." in k:
            part, field = k.split(".", 1)
            if type(out.get(part)) is dict:
                out[part][field] = v
        elif type(v) is dict and type(out.get(k)) is dict:
            out[k].update(v)
        else:
            out[k] = v
    return out
