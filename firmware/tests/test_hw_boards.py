"""The ESP32 and Pico W board modules (firmware/boards/esp32.py, picow.py, mcu.py) on the
MicroPython VM at 64 KB, with stand-ins for the `machine` and `network` modules (the silicon is the
stubbed neighbour here; the MFRC522 behind the fake SPI bus is the simulated chip). Checks wiring
data -> pins and active levels, the battery divider, SPI set-up, reset causes, the RP2040 watchdog
clamp, Wi-Fi join with a timeout, and pin overrides from a provisioned identity."""

import os
import re

import pytest

from tools.flash import build_image
from tools.hostboard import provision_dir
from tools.testing.micropython import run_micropython

MPY_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpy")

FAKE_MACHINE = '\nLEVELS = {}\nHOOKS = {}\nMADE = []\nSPI_PEER = [None]\nclass Pin:\n    IN = 0\n    OUT = 1\n    PULL_UP = 2\n    PULL_DOWN = 3\n    def __init__(self, pid, mode=0, pull=None, value=None):\n        self.pid = pid\n        self.mode = mode\n        self.pull = pull\n        MADE.append((pid, mode, pull))\n        if value is not None:\n            self.value(value)\n    def value(self, v=None):\n        if v is None:\n            return LEVELS.get(self.pid, 0)\n        LEVELS[self.pid] = v\n        if self.pid in HOOKS:\n            HOOKS[self.pid](v)\nclass ADC:\n    ATTN_11DB = 3\n    RAW = [0]\n    def __init__(self, pin):\n        self.pin = pin\n        self.att = None\n    def atten(self, a):\n        self.att = a\n    def read_u16(self):\n        return ADC.RAW[0]\nclass SPI:\n    def __init__(self, bus, **kw):\n        self.bus = bus\n        self.kw = kw\n    def write_readinto(self, w, r):\n        SPI_PEER[0].write_readinto(w, r)\nclass WDT:\n    def __init__(self, timeout):\n        self.timeout = timeout\n    def feed(self):\n        pass\nPWRON_RESET = 1\nHARD_RESET = 2\nWDT_RESET = 3\nDEEPSLEEP_RESET = 4\nSOFT_RESET = 5\nCAUSE = [3]\ndef reset_cause():\n    return CAUSE[0]\ndef unique_id():\n    return b"\\x24\\x0a\\xc4\\x12\\x34\\x56"\ndef reset():\n    raise SystemExit(99)\n'

FAKE_NETWORK = '\nSTA_IF = 0\nclass WLAN:\n    def __init__(self, i):\n        self.up = False\n        self.joined = None\n    def active(self, a):\n        self.up = a\n    def isconnected(self):\n        return self.joined is not None\n    def connect(self, ssid, pw):\n        if ssid == "village":\n            self.joined = ssid\n    def status(self, what):\n        return -61\n'


@pytest.mark.timeout(120)
@pytest.mark.parametrize("part,min_checks", [("esp32", 19), ("picow", 9)])
def test_boards_with_stubbed_silicon(tmp_path, part, min_checks):
    (tmp_path / "machine.py").write_text(FAKE_MACHINE)
    (tmp_path / "network.py").write_text(FAKE_NETWORK)
    provision_dir(tmp_path, {"device_id": 1, "key": bytes(32), "role": "alarm",
                             "pins": {"button.pin": 4, "buzzer": {"active": 0}}})
    proc = run_micropython(os.path.join(MPY_DIR, "hw_boards.py"), heap="64k", args=[str(tmp_path), part],
                           timeout_s=90, extra_paths=[build_image("all"), MPY_DIR])
    out = proc.stdout
    assert re.search(r"^DONE \d+$", out, re.M), out[-3000:] + proc.stderr[-2000:]
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert not fails, "\n".join(fails)
    assert len(re.findall(r"^PASS ", out, re.M)) >= min_checks
