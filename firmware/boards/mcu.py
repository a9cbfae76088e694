# What the ESP32 and the Pico W boards share: parts built from machine.Pin / ADC / SPI / WDT and
# Wi-Fi through network.WLAN, from a wiring dict (boards/wiring_<name>.py, overridable by the
# provisioned `pins`). Only board modules import machine and network.

import time

import machine
import network

from boards.stdconsole import StdConsole

FLASH_ROOT = "/"
_JOIN_RETRY_MS = 20000
# WLAN.status() values after which a join will not succeed by waiting (names differ by port).
_JOIN_FAILED = tuple(getattr(network, n) for n in ("STAT_WRONG_PASSWORD", "STAT_NO_AP_FOUND",
                                                    "STAT_CONNECT_FAIL") if hasattr(network, n))


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


class _Out:
    def __init__(self, pin_id, active=1):
        self.pin = machine.Pin(pin_id, machine.Pin.OUT)
        self.active = active
        self.off()

    def set(self, v):
        self.pin.value(self.active if v else 1 - self.active)

    def on(self):
        self.set(1)

    def off(self):
        self.set(0)


class PinLed:
    def __init__(self, w):
        a = w.get("active", 1)
        rgb = w.get("rgb")
        self.is_rgb = bool(rgb)
        self._outs = [_Out(p, a) for p in rgb] if rgb else [_Out(w["pin"], a)]

    def rgb(self, r, g, b):
        if self.is_rgb:
            self._outs[0].set(r)
            self._outs[1].set(g)
            self._outs[2].set(b)
        else:
            self._outs[0].set(r or g or b)


def _input(w):
    pull = machine.Pin.PULL_UP if w.get("pull") == "up" else (machine.Pin.PULL_DOWN if w.get("pull") == "down" else None)
    return machine.Pin(w["pin"], machine.Pin.IN, pull)


class McuBoard:
    name = "mcu"
    wiring_defaults = {}
    wdt_max_ms = 0x7FFFFFFF

    def __init__(self, argv=None):
        import identity
        self.flash_root = FLASH_ROOT
        self.wiring = w = merge_wiring(self.wiring_defaults, identity.load_pins(FLASH_ROOT))
        bp = _input(w["button"])
        active = w["button"].get("active", 0)
        self.button = lambda: 1 if bp.value() == active else 0
        tp = _input(w["tamper"])
        open_level = w["tamper"].get("open_level", 1)
        self.tamper = lambda: 1 if tp.value() == open_level else 0
        self.led = PinLed(w["led"])
        self.buzzer = _Out(w["buzzer"]["pin"], w["buzzer"].get("active", 1))
        self._adc = self._make_adc(w["battery"])
        self._reader = None
        self._wlan = None
        self._join_t = None
        self.console = StdConsole()

    def _make_adc(self, w):
        return machine.ADC(machine.Pin(w["pin"]))

    def hardware_id(self):
        return "".join("%02x" % b for b in machine.unique_id())

    def reset_reason(self):
        cause = machine.reset_cause()
        for name, code in (("PWRON_RESET", 0), ("HARD_RESET", 1), ("WDT_RESET", 2),
                           ("DEEPSLEEP_RESET", 3), ("SOFT_RESET", 4), ("BROWNOUT_RESET", 5)):
            if getattr(machine, name, None) == cause:
                return code
        return 255

    def battery_mv(self):
        w = self.wiring["battery"]
        # machine.ADC.read_u16() counts (0..65535 over 0..3.3 V) -> battery mV behind the divider
        return int(self._adc.read_u16() * 3300 * w.get("divider", 2.0) / 65535 + 0.5)

    def rfid(self):
        if self._reader is None:
            from drivers.mfrc522 import MFRC522
            w = self.wiring["rfid"]
            if not w:
                return None
            spi = machine.SPI(w["spi"], baudrate=w.get("baud", 1000000), polarity=0, phase=0,
                              sck=machine.Pin(w["sck"]), mosi=machine.Pin(w["mosi"]), miso=machine.Pin(w["miso"]))
            cs = machine.Pin(w["cs"], machine.Pin.OUT, value=1)
            rst = machine.Pin(w["rst"], machine.Pin.OUT, value=1) if w.get("rst") is not None else None
            self._reader = MFRC522(spi, cs.value, rst.value if rst else None, time.sleep_ms)
        return self._reader

    def network_up(self, cfg, timeout_ms=0):
        """True when Wi-Fi is up. Never blocks longer than timeout_ms (default: not at all): the
        join runs in the Wi-Fi chip; this starts it, and starts it again when it failed or took
        longer than _JOIN_RETRY_MS, so a link task polling it keeps the watchdog fed."""
        wl = self._wlan
        if wl is None:
            wl = self._wlan = network.WLAN(network.STA_IF)
            wl.active(True)
        if wl.isconnected():
            self._join_t = None
            return True
        now = time.ticks_ms()
        if (self._join_t is None or time.ticks_diff(now, self._join_t) > _JOIN_RETRY_MS
                or wl.status() in _JOIN_FAILED):
            try:
                wl.disconnect()
            except OSError:
                pass
            wl.connect(cfg["wifi_ssid"], cfg["wifi_password"])
            self._join_t = now
        while timeout_ms > 0 and not wl.isconnected() and time.ticks_diff(time.ticks_ms(), now) < timeout_ms:
            time.sleep_ms(50)
        return wl.isconnected()

    def rssi(self):
        try:
            return self._wlan.status("rssi") if self._wlan and self._wlan.isconnected() else None
        except (OSError, ValueError):
            return None

    def watchdog(self, timeout_ms):
        return machine.WDT(timeout=min(timeout_ms, self.wdt_max_ms))

    def reboot(self):
        machine.reset()

    def poll(self):
        pass

    def idle_ms(self, ms):
        time.sleep_ms(ms)
