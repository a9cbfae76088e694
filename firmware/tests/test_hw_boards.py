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

FAKE_MACHINE = """
LEVELS = {}
HOOKS = {}
MADE = []
SPI_PEER = [None]
class Pin:
    IN = 0
    OUT = 1
    PULL_UP = 2
    PULL_DOWN = 3
    def __init__(self, pid, mode=0, pull=None, value=None):
        self.pid = pid
        self.mode = mode
        self.pull = pull
        MADE.append((pid, mode, pull))
        if value is not None:
            self.value(value)
    def value(self, v=None):
        if v is None:
            return LEVELS.get(self.pid, 0)
        LEVELS[self.pid] = v
        if self.pid in HOOKS:
            HOOKS[self.pid](v)
class ADC:
    ATTN_11DB = 3
    RAW = [0]
    def __init__(self, pin):
        self.pin = pin
        self.att = None
    def atten(self, a):
        self.att = a
    def read_u16(self):
        return ADC.RAW[0]
class SPI:
    def __init__(self, bus, **kw):
        self.bus = bus
        self.kw = kw
    def write_readinto(self, w, r):
        SPI_PEER[0].write_readinto(w, r)
class WDT:
    def __init__(self, timeout):
        self.timeout = timeout
    def feed(self):
        pass
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
CAUSE = [3]
def reset_cause():
    return CAUSE[0]
def unique_id():
    return b"\\x24\\x0a\\xc4\\x12\\x34\\x56"
def reset():
    raise SystemExit(99)
"""

FAKE_NETWORK = """
STA_IF = 0
class WLAN:
    def __init__(self, i):
        self.up = False
        self.joined = None
    def active(self, a):
        self.up = a
    def isconnected(self):
        return self.joined is not None
    def connect(self, ssid, pw):
        self.connects = getattr(self, "connects", 0) + 1
        if ssid == "village":
            self.joined = ssid
    def status(self, what=None):
        return -61 if what == "rssi" else (1 if self.joined else 0)
    def disconnect(self):
        self.joined = None
"""


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
