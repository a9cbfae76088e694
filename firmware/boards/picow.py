# Raspberry Pi Pico W board (RP2040 + CYW43439). Wiring: boards/wiring_picow.py.
# Quirk: the RP2040 watchdog's longest timeout is 8388 ms (RP2040 datasheet, 4.7), so longer
# requests are clamped and the application must feed at least that often.

from boards.mcu import McuBoard
from boards.wiring_picow import WIRING


class Board(McuBoard):
    name = "picow"
    wiring_defaults = WIRING
    wdt_max_ms = 8388
