# ESP32 (ESP32-WROOM-32 DevKitC) wiring. Pin numbers are GPIO numbers.
# Quirks named once:
# - battery on ADC1 (GPIO34): ADC2 pins cannot be read while Wi-Fi is on (ESP-IDF ADC docs,
#   "ADC2 is used by the Wi-Fi driver").
# - GPIO34..39 are input-only and have no pull-ups: never put the button or tamper there.
# - MFRC522 on VSPI (SPI id 2) at 1 MHz: the chip allows 10 MHz, but the flying leads of a
#   village enclosure do not.
WIRING = {
    "button": {"pin": 27, "pull": "up", "active": 0},
    "tamper": {"pin": 26, "pull": "up", "open_level": 1},
    # Common-cathode RGB LED on three GPIOs; set "rgb": None to use the single LED on "pin".
    "led": {"rgb": [25, 33, 32], "pin": 2, "active": 1},
    "buzzer": {"pin": 14, "active": 1},
    "battery": {"pin": 34, "divider": 2.0, "atten_db": 11},
    "rfid": {"spi": 2, "sck": 18, "mosi": 23, "miso": 19, "cs": 5, "rst": 22, "baud": 1000000},
}
