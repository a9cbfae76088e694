"""`fengqiao provision`: give a unit its identity over the serial console (firmware/CONSOLE.md).

    fengqiao provision --port /dev/ttyUSB0 --device-id 0000002a --role alarm \\
        --broker-host 10.0.0.2 --ca township-ca.pem --wifi-ssid village --wifi-password-file wifi.txt \\
        [--gateway-config gateway.toml --place hh-017]

Steps: identify the unit (a clear error if the port is absent or the device is not a Fengqiao
unit) -> refuse if it already has an identity, unless --factory-reset (which erases it with the
unit's hardware id as confirmation) -> check the gateway does not know the device id yet (when
--gateway-config/--gateway-db is given) -> write the config with a fresh 32-byte key from
os.urandom -> read it back and compare every field and the key fingerprint (a mismatch resets
the unit) -> write --key-out and/or register the device and its key with the gateway (rolling
the unit back to unprovisioned if that fails) ->
print a label (device id, role, key fingerprint; never the key) -> reboot the unit.

The key exists only in this process (a bytearray, zeroed at the end), on the unit, and wrapped in
the gateway's registry. It is never printed or logged; it is written to a file only when asked
with --key-out (mode 0600, for registering a unit provisioned away from the gateway).
"""

import datetime
import os

from tools.errors import CliError

HELP = "write identity, key and settings onto a unit over its serial console; print its label"

GATEWAY_ROLES = {"alarm": "alarm_button", "checkin": "checkpoint"}
ROLE_NAMES = {"alarm": "alarm button", "checkin": "patrol check-in point"}


def add_arguments(parser):
    p = parser
    p.add_argument("--port", required=True, type=_port, help="serial port of the unit (e.g. /dev/ttyUSB0, /dev/ttyACM0; "
                                                             "a host board's: `fengqiao hostboard port`)")
    p.add_argument("--baud", type=int, default=115200)
    p.add_argument("--device-id", required=True, help="device id: 8 hex digits, e.g. 0000002a")
    p.add_argument("--role", required=True, type=role_word, metavar="{alarm,checkin}",
                   help="alarm: an alarm button; checkin: a patrol check-in point")
    p.add_argument("--checkpoint-id", type=int, help="check-in point number 0..65535 (role checkin)")
    p.add_argument("--key-id", type=int, default=1, help="key id 0..255 (default 1)")
    p.add_argument("--broker-host", required=True)
    p.add_argument("--broker-port", type=int, help="default 8883 with --ca, else 1883")
    p.add_argument("--ca", help="PEM file of the CA that signed the broker's certificate (turns TLS on)")
    p.add_argument("--wifi-ssid", default="")
    p.add_argument("--wifi-password-file", help="file holding the Wi-Fi password (or set FENGQIAO_WIFI_PASSWORD)")
    p.add_argument("--setting", action="append", default=[], metavar="NAME=INT",
                   help="e.g. heartbeat_interval_s=300, hold_ms=1000 (repeatable)")
    p.add_argument("--pin", action="append", default=[], metavar="PART.FIELD=VALUE",
                   help="wiring override when not the board default, e.g. button.pin=4 (repeatable)")
    p.add_argument("--selftest", action="store_true",
                   help="run the unit's self-test first (LED, buzzer, reader); stop if it fails")
    p.add_argument("--factory-reset", action="store_true",
                   help="erase an identity already on the unit first (its outbox and counters too)")
    g = p.add_argument_group("gateway registration (optional)")
    g.add_argument("--gateway-config", help="gateway TOML: register in its registry and allow it on its broker "
                                            "(the unit then uses the broker's TLS port and CA unless --ca is given)")
    g.add_argument("--gateway-db", help="registry database (SQLite) to register in, without touching the broker")
    g.add_argument("--master-key", help="registry master key file (with --gateway-db)")
    g.add_argument("--place", help="place id of the unit in the registry")
    g.add_argument("--power", choices=("mains", "battery"), default="mains")
    p.add_argument("--key-out", help="without a gateway option: write the key (hex, mode 0600, never overwrites) "
                                     "here for `fengqiao gateway device add --key-file` later")
    p.add_argument("--label-file", help="also write the label text to this file")
    p.add_argument("--no-reboot", action="store_true", help="leave the unit running (identity applies at next boot)")
    p.add_argument("--timeout-s", type=float, default=5.0, help="per-request timeout (default 5)")


def role_word(text):
    """--role alarm | checkin (as `hostboard` and `gateway device add` say it); the registry's names
    alarm_button / checkpoint are accepted with a note on stderr."""
    import argparse
    import sys

    if text in ROLE_NAMES:
        return text
    word = {v: k for k, v in GATEWAY_ROLES.items()}.get(text)
    if word is None:
        raise argparse.ArgumentTypeError("%r: choose alarm or checkin" % text)
    print("fengqiao: note: --role %s is the registry's name; say --role %s" % (text, word), file=sys.stderr)
    return word


def _port(text):
    """--port is checked as it is parsed, before the other options: a wrong port is the first thing
    said (not found, not a serial port, no permission naming the group), not the last."""
    from tools.serialconsole import PortError, check_port

    try:
        check_port(text)
    except PortError as exc:
        raise CliError(str(exc)) from exc
    return text


# -- building the config -------------------------------------------------------------------------
def _device_id(text):
    from protocol.errors import BadDeviceId
    from protocol.frame import parse_device_id

    try:
        return parse_device_id(text.lower())
    except BadDeviceId as exc:
        raise CliError("--device-id %r: %s" % (text, exc)) from exc


def _pairs(items, what, convert):
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CliError("%s %r: expected NAME=VALUE" % (what, item))
        try:
            out[name.strip()] = convert(value.strip())
        except ValueError as exc:
            raise CliError("%s %r: %s" % (what, item, exc)) from exc
    return out


def _pin_value(v):
    return int(v) if v.lstrip("-").isdigit() else v


def _read_text(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise CliError("cannot read %s %s: %s" % (what, path, exc)) from exc


def build_config(args, key, ca_path=None, tls_port=None):
    """The config dict sent to the unit (CONSOLE.md), with the key as hex. ca_path/tls_port are
    the gateway broker's, used when --ca / --broker-port are not given."""
    if args.role == "checkin" and args.checkpoint_id is None:
        raise CliError("--checkpoint-id is required for role checkin")
    if args.checkpoint_id is not None and not 0 <= args.checkpoint_id <= 65535:
        raise CliError("--checkpoint-id must be 0..65535")
    if not 0 <= args.key_id <= 255:
        raise CliError("--key-id must be 0..255")
    ca = None
    ca_path = args.ca or ca_path
    if ca_path:
        ca = _read_text(ca_path, "CA file").strip() + "\n"
        if "-----BEGIN CERTIFICATE-----" not in ca:
            raise CliError("%s is not a PEM certificate" % ca_path)
    password = os.environ.get("FENGQIAO_WIFI_PASSWORD", "")
    if args.wifi_password_file:
        password = _read_text(args.wifi_password_file, "Wi-Fi password file").strip("\r\n")
    return {
        "device_id": _device_id(args.device_id), "key_id": args.key_id, "key": bytes(key).hex(),
        "role": args.role, "wifi_ssid": args.wifi_ssid, "wifi_password": password,
        "broker_host": args.broker_host,
        "broker_port": args.broker_port or ((tls_port or 8883) if ca else 1883),
        "tls": ca is not None, "ca_pem": ca, "checkpoint_id": args.checkpoint_id,
        "pins": _pairs(args.pin, "--pin", _pin_value), "settings": _pairs(args.setting, "--setting", int),
    }


def compare_readback(sent, back, fingerprint):
    """Names of fields the unit stored differently from what was sent ([] when all match)."""
    diffs = []
    import hashlib

    for name, value in sent.items():
        if name == "key":
            continue
        got = back.get(name)
        if name == "wifi_password":  # read back as a fingerprint only, like the key
            name, got = "wifi_password_fingerprint", back.get("wifi_password_fingerprint")
            value = hashlib.sha256(value.encode()).hexdigest()[:16] if value else ""
        if name == "settings":
            if any(got.get(k) != v for k, v in value.items()) if isinstance(got, dict) else True:
                diffs.append(name)
        elif got != value:
            diffs.append(name)
    if back.get("key_fingerprint") != fingerprint:
        diffs.append("key_fingerprint")
    return diffs


# -- gateway registration ----------------------------------------------------------------------
class _Gateway:
    """The gateway's registry (and broker, with --gateway-config), opened only when asked for."""

    def __init__(self, args):
        self.args = args
        self.registry = None
        self.broker = None
        try:
            if args.gateway_config:
                from gateway.cli import GatewayApp
                from gateway.config import ConfigError, load_config

                try:
                    app = GatewayApp(load_config(args.gateway_config))
                except ConfigError as exc:
                    raise CliError(str(exc)) from exc
                self.registry = app.open_registry()
                self.broker = app._make_broker()
            else:
                from gateway.registry import Registry

                if not args.master_key:
                    raise CliError("--gateway-db needs --master-key (the registry's master key file)")
                self.registry = Registry(args.gateway_db, args.master_key)
        except ImportError as exc:
            raise CliError("gateway registration is not available in this install (%s)" % exc) from exc

    def check_new(self, device_id):
        if self.registry.device(device_id) is not None:
            raise CliError("the gateway already knows device %08x: choose another --device-id, or revoke it "
                           "first (`fengqiao gateway device revoke`)" % device_id)

    def register(self, device_id, role, key, key_id):
        from gateway.registry import RegistryError

        try:
            self.registry.add_device(device_id, GATEWAY_ROLES[role], self.args.place, key=bytes(key), key_id=key_id,
                                     power=self.args.power)
            if self.broker is not None:
                self.broker.add_device(device_id, bytes(key), reload=False)
                self.broker.reload()
        except RegistryError as exc:
            raise CliError("gateway registration failed: %s" % exc) from exc

    def close(self):
        if self.registry is not None:
            self.registry.close()


def _write_key(path, key):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(bytes(key).hex() + "\n")


# -- the command ---------------------------------------------------------------------------------
def label_text(info, cfg, fingerprint, place=None):
    lines = [
        "FENGQIAO %s" % ROLE_NAMES[cfg["role"]],
        "device   %08x" % cfg["device_id"],
        "key      id %d  fingerprint %s" % (cfg["key_id"], fingerprint),
        "hardware %s (%s)" % (info.get("hwid"), info.get("board")),
    ]
    if cfg.get("checkpoint_id") is not None:
        lines.append("checkpoint %d" % cfg["checkpoint_id"])
    if place:
        lines.append("place    %s" % place)
    lines.append("provisioned %s" % datetime.date.today().isoformat())
    width = max(len(line) for line in lines)
    border = "+" + "-" * (width + 2) + "+"
    return "\n".join([border] + ["| %s |" % line.ljust(width) for line in lines] + [border])


def selftest_text(res):
    reader = res.get("reader")
    if reader == "ok":
        reader = "ok (MFRC522 version %s%s)" % (res.get("reader_version"),
                                               ", card %s" % res["card"] if res.get("card") else "")
    return ("self-test: LED %s (it should have shown red, green, blue, white), buzzer %s (one beep), "
            "reader %s, battery %s mV, case %s" % (res.get("led"), res.get("buzzer"), reader,
                                                   res.get("battery_mv"), "OPEN" if res.get("tamper_open") else "closed"))


def run(args):
    from tools.serialconsole import ConsoleError, DeviceError, NotFengqiao, PortError, SerialConsole

    from tools.serialconsole import check_port_free

    try:
        check_port_free(args.port)  # busy (another program has it), before the gateway is touched
    except PortError as exc:
        raise CliError(str(exc)) from exc
    if args.gateway_config and args.gateway_db:
        raise CliError("give --gateway-config or --gateway-db, not both")
    if not (args.gateway_config or args.gateway_db or args.key_out):
        raise CliError("the new key must go somewhere the gateway can get it: give --gateway-config, "
                       "--gateway-db (with --master-key), or --key-out FILE")
    if args.key_out and os.path.exists(args.key_out):
        raise CliError("%s exists; not overwriting a key file" % args.key_out)
    key = bytearray(os.urandom(32))
    gateway = None
    con = SerialConsole(args.port, args.baud, timeout_s=args.timeout_s)
    try:
        ca_path = tls_port = None
        if args.gateway_config or args.gateway_db:
            gateway = _Gateway(args)
            if gateway.broker is not None:
                # Devices reach the township broker over TLS and trust its CA (made on first use).
                gateway.broker.setup()
                ca_path, tls_port = gateway.broker.ca_path, gateway.broker.tls_port
        cfg = build_config(args, key, ca_path, tls_port)
        if gateway is not None:
            gateway.check_new(cfg["device_id"])
        try:
            con.open()
            info = con.identify()
            if args.selftest:  # before anything is erased: a failing unit keeps what it had
                print(selftest_text(con.selftest()))
                res = con.last_selftest
                if not res.get("pass") or (args.role == "checkin" and res.get("reader") != "ok"):
                    raise CliError("self-test failed (%s); fix the unit before provisioning it"
                                   % ", ".join("%s %s" % (k, res.get(k)) for k in ("led", "buzzer", "reader")))
            if info.get("provisioned"):
                if not args.factory_reset:
                    raise CliError("the unit on %s (hardware %s) already has an identity (device %s); refusing to "
                                   "overwrite it. Re-run with --factory-reset to erase it first."
                                   % (args.port, info.get("hwid"), "%08x" % info["device_id"] if "device_id" in info else "unreadable"))
                con.factory_reset(info["hwid"])
            from tools.hostboard import key_fingerprint

            fingerprint = key_fingerprint(key)
            got = con.write_config(cfg)
            diffs = [] if got == fingerprint else ["key_fingerprint"]
            diffs = diffs or compare_readback(cfg, con.read_config(), fingerprint)
            if diffs:
                # The unit holds something other than what was sent: never leave it like that.
                con.factory_reset(info["hwid"])
                raise CliError("the unit stored a different %s than was sent (a damaged transfer?); it was "
                               "reset to unprovisioned: run the command again" % ", ".join(diffs))
            wrote_key = False
            try:
                if args.key_out:
                    _write_key(args.key_out, key)
                    wrote_key = True
                if gateway is not None:
                    gateway.register(cfg["device_id"], cfg["role"], key, cfg["key_id"])
            except (CliError, OSError) as exc:
                # A unit with a key nobody else holds is useless, and a key file for a unit that
                # does not have it is misleading: undo both.
                if wrote_key:
                    os.unlink(args.key_out)
                con.factory_reset(info["hwid"])
                if isinstance(exc, OSError):
                    raise CliError("cannot write %s: %s (the unit was reset)" % (args.key_out, exc)) from exc
                raise CliError("%s (the unit was reset to unprovisioned)" % exc) from exc
        except NotFengqiao as exc:
            raise CliError(str(exc)) from exc
        except PortError as exc:
            raise CliError(str(exc)) from exc
        except DeviceError as exc:
            raise CliError("the unit refused: %s" % exc) from exc
        except ConsoleError as exc:
            raise CliError("console on %s: %s" % (args.port, exc)) from exc
        text = label_text(info, cfg, fingerprint, args.place)
        print(text)
        if args.label_file:
            with open(args.label_file, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        if gateway is None:
            print("note: not registered with a gateway; register it with `fengqiao gateway device add "
                  "--id %08x --key-file %s` before it can send events" % (cfg["device_id"], args.key_out))
        if not args.no_reboot:
            con.reboot()
        return 0
    finally:
        for i in range(len(key)):
            key[i] = 0
        con.close()
        if gateway is not None:
            gateway.close()
