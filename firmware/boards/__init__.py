# Board support: the only place that knows which chip it runs on.
#
#     from boards import load_board
#     board = load_board(sys.argv[1:])     # esp32 / rp2 (Pico W) / anything else -> host board
#
# Only board modules import `machine` and `network`; drivers and the application receive pins
# (callables), buses and objects from the board. Wiring is data: boards/wiring_<name>.py holds a
# plain dict per board (boards/mcu.py lays the provisioned `pins` over it); the host board has
# no pins (boards/host.py, HOSTBOARD.md).

import sys


def load_board(argv=None):
    # argv: the command line after the script (the host board's options, HOSTBOARD.md), or a
    # dict of them; ignored by the ESP32 and Pico W boards.
    p = sys.platform
    if p == "esp32":
        from boards import esp32 as m
    elif p == "rp2":
        from boards import picow as m
    else:
        from boards import host as m
    return m.Board(argv)
