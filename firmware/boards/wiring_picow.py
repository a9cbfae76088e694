# Raspberry Pi Pico W wiring. Pin numbers are GPn numbers.
# Quirks named once:
# - the on-board LED hangs off the CYW43 Wi-Fi chip (Pin("LED")), not an RP2040 GPIO;
# - VSYS/3 on GP29 (ADC3) shares a pin with the CYW43 SPI clock, so reading it disturbs Wi-Fi
#   (Pico W datasheet, section 2.4 / micropython#10421): the battery goes through our own
#   1:3 divider to GP28 (ADC2) instead;
# - the RP2040 watchdog cannot exceed 8388 ms (RP2040 datasheet 4.7): longer timeouts are clamped.
WIRING = {
    "button": {"pin": 15, "pull": "up", "active": 0},
    "tamper": {"pin": 14, "pull": "up", "open_level": 1},
    "led": {"rgb": None, "pin": "LED", "active": 1},
    "buzzer": {"pin": 13, "active": 1},
    "battery": {"pin": 28, "divider": 3.0},
    "rfid": {"spi": 0, "sck": 18, "mosi": 19, "miso": 16, "cs": 17, "rst": 20, "baud": 1000000},
}
