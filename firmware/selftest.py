# Self-test for the provisioning console: drive the LED through its colours, sound the buzzer,
# and ask the RFID reader for its version (and the UID of a card held to it).
#
# A program cannot see an LED or hear a buzzer: "driven" means the outputs were switched without
# error, and the technician watches and listens. The reader check is real: the chip must answer
# with a known version byte over SPI. Blocks for about one second, on purpose (a person watches).

# Imported by the console for one request and dropped after it (console/__init__.py).

import time

from micropython import const

_STEP_MS = const(150)


def run(board, reader=True):
    # Returns two dicts of fields: the outputs and the reader, then the readouts and the verdict.
    # reader=False: a unit whose role has no card reader (an alarm button): it is reported
    # "absent" without probing. On a host board (which can be either) the probe would build the
    # simulated reader and its driver for good: ~4 KB of a running alarm button's 64 KB heap,
    # the console MemoryError issue 11 saw at the next request.
    out = {}
    sleep = getattr(board, "idle_ms", None) or time.sleep_ms  # the host board wakes for input
    try:
        for rgb in ((1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1), (0, 0, 0)):
            board.led.rgb(*rgb)
            sleep(_STEP_MS)
        out["led"] = "driven"
    except (OSError, ValueError) as e:
        out["led"] = "error: %r" % e
    try:
        board.buzzer.on()
        sleep(_STEP_MS)
        board.buzzer.off()
        out["buzzer"] = "driven"
    except (OSError, ValueError) as e:
        out["buzzer"] = "error: %r" % e
    rd = None
    try:
        rd = board.rfid() if reader else None
    except Exception as e:  # the reader's constructor talks SPI: any failure is a finding
        out["reader"] = "error: %r" % e
    if rd is None:
        out.setdefault("reader", "absent")
    else:
        from drivers.mfrc522 import ReaderError
        try:
            out["reader_version"] = "0x%02x" % rd.self_check()
            uid = rd.read_uid()
            out["reader"] = "ok"
            out["card"] = "".join("%02x" % b for b in uid) if uid else None
        except ReaderError as e:
            out["reader"] = "error: %s" % (e.args[0] if e.args else "reader")
    # For `fengqiao device check`: the button's level now (pressed: stuck, or held) and the Wi-Fi
    # signal (None: not on Wi-Fi, or a host board). In a second dict: one dict of all 10 fields
    # is a table of 272 B in one piece (the console writes the two as one reply).
    more = {"button": bool(board.button()), "rssi": board.rssi(), "battery_mv": board.battery_mv(),
            "tamper_open": bool(board.tamper()),
            "pass": out["led"] == "driven" and out["buzzer"] == "driven" and out["reader"] in ("ok", "absent")}
    return out, more
