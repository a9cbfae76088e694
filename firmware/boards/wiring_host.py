# Host board (MicroPython Unix port) "wiring": no pins, but the same shape of data, so tools and
# HIL tests read one kind of file per board. The simulated parts are described in HOSTBOARD.md.
WIRING = {
    "button": {"sim": True},
    "tamper": {"sim": True},
    "led": {"rgb": True},
    "buzzer": {"sim": True},
    "battery": {"mv": 4000},
    "rfid": {"sim": "mfrc522", "version": 0x92},
}
