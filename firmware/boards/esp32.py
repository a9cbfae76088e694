# ESP32 board (ESP32-WROOM-32 DevKitC). Wiring: boards/wiring_esp32.py.
# Quirk: the ADC needs ATTN_11DB to read up to ~3.1 V at the divider's output (ESP32 ADC docs).

import machine

from boards.mcu import McuBoard
from boards.wiring_esp32 import WIRING


class Board(McuBoard):
    name = "esp32"
    wiring_defaults = WIRING

    def _make_adc(self, w):
        adc = machine.ADC(machine.Pin(w["pin"]))
        adc.atten(machine.ADC.ATTN_11DB)
        return adc
