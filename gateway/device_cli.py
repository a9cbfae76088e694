"""`fengqiao device VERB`: the technician's and the duty office's device verbs (issue 15).

    fengqiao device list                     [--config F]
    fengqiao device show ID                  [--config F]     place, key id, board, fingerprint, history
    fengqiao device revoke ID                [--config F]     refused by the broker within seconds, no restart
    fengqiao device replace OLD --port P     [--config F]     the board on P takes OLD's place; OLD revoked
    fengqiao device rotate-key ID --port P   [--config F]     a new key (new key id) on the board and the gateway;
                                                              the board keeps its outbox and resets (console rekey;
                                                              with --no-reboot: erased and rewritten, outbox lost)
    fengqiao device check --port P                            field check, PASS/FAIL lines (no gateway needed)
    fengqiao device import-enrolment FILE    [--config F]     a technician's enrolment bundle (gateway/bundle.py)
    fengqiao device technician add NAME --pubkey FILE | list | remove NAME      who may sign bundles
    fengqiao device technician-key --out FILE                 a technician's Ed25519 key (on the laptop)
    fengqiao device field-kit --technician NAME --count N --out FILE    ids + keys a laptop needs away
    fengqiao device release ID               [--config F]     (gateway/quarantine_cli.py)

Without --config the config is found as gateway/config.py says ($FENGQIAO_CONFIG, ./gateway.toml,
/etc/fengqiao/gateway.toml). Verbs with --port need the laptop to be the gateway host (direct
registration); the board's key is never printed and exists in clear only on the board and in this
process (tools/deploy.py key_board). History (enrolled, replaces / replaced by, key rotated,
revoked) is kept in device_history beside the registry.
"""

import argparse
import os
import sys

from tools.errors import CliError

HELP = "devices: list | show | revoke | replace | rotate-key | check | import-enrolment | technician | release"

RELEASE_MODULE = "gateway.quarantine_cli"   # owned by the quarantine work; imported only for `release`


def add_arguments(parser):
    from gateway.cli import _config_argument

    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name, help_text, config=True):
        p = sub.add_parser(name, help=help_text)
        if config:
            _config_argument(p)
        return p

    verb("list", "list devices with their place, key id, board and fingerprint")
    verb("show", "one device: place path, key, board, history").add_argument("id", metavar="ID")
    verb("revoke", "revoke a device: the broker drops it and refuses it from now on").add_argument("id", metavar="ID")
    for name, help_text, target in (("replace", "a new board takes a device's place and group; the old one is revoked",
                                     "old"),
                                    ("rotate-key", "give the board on --port (device ID) a new key", "id")):
        p = verb(name, help_text)
        p.add_argument(target, metavar=target.upper() if target == "old" else "ID")
        _board_arguments(p)
    p = verb("check", "field check of the board on --port: PASS/FAIL lines", config=False)
    p.add_argument("--port", required=True)
    p.add_argument("--timeout-s", type=float, default=5.0)
    verb("import-enrolment", "import a technician's enrolment bundle").add_argument("file", metavar="FILE")
    t = sub.add_parser("technician", help="technicians whose enrolment bundles this gateway accepts")
    tsub = t.add_subparsers(dest="tverb", metavar="ACTION", required=True)
    p = tsub.add_parser("add", help="trust a technician's public key")
    _config_argument(p)
    p.add_argument("name")
    p.add_argument("--pubkey", required=True, help="PEM or 64 hex digits (from `fengqiao device technician-key`)")
    p = tsub.add_parser("remove", help="stop accepting a technician's bundles")
    _config_argument(p)
    p.add_argument("name")
    _config_argument(tsub.add_parser("list", help="list technicians"))
    p = verb("technician-key", "create a technician's signing key on this laptop (0600); prints the public key",
             config=False)
    p.add_argument("--out", required=True)
    p = verb("field-kit", "reserve device ids for a technician and write what the laptop needs (no secrets)")
    p.add_argument("--technician", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--broker-host", help="host name the boards use for the broker (default [broker] hostnames[0])")
    p = sub.add_parser("release", help="let a quarantined device back (fengqiao device release ID --help)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)


def _board_arguments(p):
    p.add_argument("--port", required=True, help="serial port of the board")
    p.add_argument("--broker-host", help="broker host name for the board (default [broker] hostnames[0])")
    p.add_argument("--wifi-ssid", default="")
    p.add_argument("--wifi-password-file")
    p.add_argument("--checkpoint-id", type=int, help="check-in point number (replace of a checkin, when the "
                                                     "village file does not give it)")
    p.add_argument("--labels", help="directory for the new label (PNG/SVG)")
    p.add_argument("--timeout-s", type=float, default=5.0)
    p.add_argument("--no-reboot", action="store_true", help="leave the board running (rotate-key: erase and rewrite "
                   "its identity instead of the one-step rekey, which resets it; its outbox is lost)")


def run(args):
    from gateway.bundle import BundleError
    from gateway.registry import RegistryError

    if args.verb == "release":
        return _release(args.rest)
    if args.verb == "check":
        return check(args)
    if args.verb == "technician-key":
        return technician_key(args)
    try:
        return VERBS[args.verb](args)
    except (RegistryError, BundleError) as exc:   # named errors: printed, exit 1
        raise CliError("%s: %s" % (type(exc).__name__, exc)) from exc


def _release(rest):
    import importlib

    try:
        mod = importlib.import_module(RELEASE_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name and RELEASE_MODULE.startswith(exc.name):
            raise CliError("`fengqiao device release` is not available in this build (%s)" % exc) from exc
        raise
    p = argparse.ArgumentParser(prog="fengqiao device release", description=getattr(mod, "HELP", None))
    mod.add_arguments(p)
    return mod.run(p.parse_args(rest))


# -- gateway side -----------------------------------------------------------------------------------
class _Gw:
    """Registry, broker, enrolments and bundle store of the configured gateway."""

    def __init__(self, config_path, broker=True):
        from gateway.bundle import BundleStore
        from gateway.cli import GatewayApp, _config
        from gateway.enrolment import Enrolments

        self.config = _config(argparse.Namespace(config=config_path))
        app = GatewayApp(self.config)
        self.registry = app.open_registry()
        g = self.config["gateway"]
        db = self.config.path_of(g["database"])
        self.enrolments = Enrolments(db, self.config.path_of(g["master_key"]))
        self.bundles = BundleStore(db)
        self.broker = app._make_broker() if broker else None
        if self.broker is not None:
            self.broker.setup()

    def enrolment_key(self):
        from gateway.bundle import ENROLMENT_KEY_FILE, EnrolmentKey

        return EnrolmentKey.load_or_create(os.path.join(self.config.data_dir, ENROLMENT_KEY_FILE))

    def close(self):
        self.bundles.close()
        self.enrolments.close()
        self.registry.close()


def _with_gw(fn, broker=True):
    def wrapped(args):
        gw = _Gw(args.config, broker)
        try:
            return fn(args, gw)
        finally:
            gw.close()
    return wrapped


def _id(text):
    from gateway.cli import _device_id

    return _device_id(text)


def _require(gw, device_id):
    dev = gw.registry.device(device_id)
    if dev is None:
        raise CliError("device %08x is not registered (see `fengqiao device list`)" % device_id)
    return dev


def _fingerprint(gw, dev):
    from tools.hostboard import key_fingerprint

    e = gw.enrolments.of_device(dev.device_id)
    if e is not None and e.key_id == dev.key_id:
        return e.fingerprint, e.hwid
    if dev.status == "active":
        return key_fingerprint(gw.registry.device_key(dev.device_id, dev.key_id)), e.hwid if e else "-"
    return (e.fingerprint if e else "-"), (e.hwid if e else "-")


def list_devices(args, gw):
    from gateway.cli import ROLE_WORDS

    print("%-8s %-7s %-7s %-3s %-14s %-18s %s" % ("device", "role", "status", "key", "place", "board", "fingerprint"))
    for d in gw.registry.devices():
        fp, hwid = _fingerprint(gw, d)
        print("%-8s %-7s %-7s %-3d %-14s %-18s %s" % (d.text_id, ROLE_WORDS.get(d.role, d.role), d.status, d.key_id,
                                                     d.place_id or "-", hwid, fp))
    return 0


def show(args, gw):
    import time

    from gateway.cli import ROLE_WORDS

    dev = _require(gw, _id(args.id))
    fp, hwid = _fingerprint(gw, dev)
    path = " > ".join("%s (%s)" % (p.name, p.place_id) for p in gw.registry.place_path(dev.place_id)) or "-"
    print("device      %s" % dev.text_id)
    print("role        %s, %s powered" % (ROLE_WORDS.get(dev.role, dev.role), dev.power))
    print("status      %s" % dev.status)
    print("place       %s" % path)
    print("key         id %d, fingerprint %s" % (dev.key_id, fp))
    print("board       %s" % hwid)
    print("registered  %s" % time.strftime("%Y-%m-%d %H:%M", time.localtime(dev.created_at)))
    for at, event, other, detail in gw.enrolments.history(dev.device_id):
        print("history     %s %s%s%s" % (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)), event,
                                         " %08x" % other if other is not None else "", " (%s)" % detail if detail else ""))
    return 0


def revoke(args, gw):
    """`fengqiao gateway device revoke` (gateway/cli.py) does the work; history noted here."""
    from gateway import cli as gateway_cli

    device_id = _id(args.id)
    dev = _require(gw, device_id)
    if dev.status == "revoked":
        raise CliError("device %s is revoked already" % dev.text_id)
    gateway_cli.run(argparse.Namespace(config=args.config, action="device", device_action="revoke", id=args.id))
    gw.enrolments.note(device_id, "revoked", None, "fengqiao device revoke")
    return 0


def _board_session(args, gw, row, kind, device_id=None, key_id=1, replaces=None, expect_device=None):
    """Open the board on --port, identify and check it, key it through an enrolment; the result dict."""
    from tools import deploy
    from tools.serialconsole import ConsoleError

    deploy.check_port(args.port)
    settings = deploy.settings_from(args, gw)
    con = deploy.open_console(args.port, args.timeout_s)

    def progress(step):
        print("%s — %s" % (args.port, step), flush=True)

    try:
        info = deploy.identify(con, args.port)
        if expect_device is not None:
            if not info.get("provisioned") or info.get("device_id") != expect_device:
                raise CliError("the board on %s is %s, not device %08x: plug in that board"
                               % (args.port, "device %08x" % info["device_id"] if info.get("device_id") else
                                  "unprovisioned", expect_device))
        elif info.get("provisioned") and gw.enrolments.pending_for_hwid(info["hwid"]) is None:
            raise CliError("the board on %s (hardware %s) already has an identity (device %s): the replacement must "
                           "be a new or factory-reset board" % (args.port, info["hwid"], "%08x" % info.get("device_id", 0)))
        if not info.get("provisioned"):
            progress("self-test")
            deploy.require_selftest(con, row["role"])
        # A rotation on a board that may reset uses the console's one-step `rekey` (its outbox kept, the
        # board resets onto the new key); with --no-reboot the old identity is erased and the new one written.
        rekey = kind == "rotate" and not args.no_reboot
        e = deploy.key_board(con, info, gw, row, settings, progress, kind=kind, device_id=device_id, key_id=key_id,
                             replaces=replaces, rekey=rekey)
        if not args.no_reboot and not rekey:   # a rekey has reset the board already
            con.reboot()
        return {"device_id": e.device_id, "fingerprint": e.fingerprint, "hwid": info["hwid"], "place": e.place_id}
    except deploy.BoardFailed as exc:
        raise CliError(str(exc)) from exc
    except ConsoleError as exc:
        raise CliError("console on %s: %s (cable pulled? plug it back and run the command again)"
                       % (args.port, exc)) from exc
    finally:
        con.close()


def _row(gw, dev, checkpoint_id=None):
    from gateway.cli import ROLE_WORDS

    role = ROLE_WORDS.get(dev.role, dev.role)
    place = gw.registry.place(dev.place_id) if dev.place_id else None
    cp = checkpoint_id
    if role == "checkin" and cp is None:
        cp = _village_checkpoint(gw, dev.place_id)
        if cp is None:
            raise CliError("device %s is a check-in point: give --checkpoint-id (the village file has none for %s)"
                           % (dev.text_id, dev.place_id))
    village = next((p.name for p in gw.registry.place_path(dev.place_id) if p.level == "village"), "")
    return {"role": role, "place": dev.place_id, "power": dev.power, "checkpoint_id": cp, "village": village,
            "name": place.name if place else "", "group": ""}


def _village_checkpoint(gw, place_id):
    import sqlite3

    db = sqlite3.connect(gw.registry.path)
    try:
        row = db.execute("SELECT checkpoint FROM village_places WHERE id = ?", (place_id,)).fetchone()
    except sqlite3.OperationalError:
        return None   # no village imported
    finally:
        db.close()
    return row[0] if row else None


def replace(args, gw):
    old = _require(gw, _id(args.old))
    if old.status != "active":
        raise CliError("device %s is revoked; replace an active device (its place: %s)" % (old.text_id, old.place_id))
    row = _row(gw, old, args.checkpoint_id)
    res = _board_session(args, gw, row, "replace", replaces=old.device_id)
    print("device %08x replaces %s at %s; %s is revoked (broker reloaded)" % (res["device_id"], old.text_id,
                                                                           res["place"], old.text_id))
    _label(row, res, args.labels)
    return 0


def rotate_key(args, gw):
    dev = _require(gw, _id(args.id))
    if dev.status != "active":
        raise CliError("device %s is revoked" % dev.text_id)
    if dev.key_id >= 255:
        raise CliError("device %s has used all 255 key ids: replace it (`fengqiao device replace`)" % dev.text_id)
    row = _row(gw, dev, args.checkpoint_id)
    pending = gw.enrolments.pending_for_device(dev.device_id)
    key_id = pending.key_id if pending is not None else dev.key_id + 1
    res = _board_session(args, gw, row, "rotate", device_id=dev.device_id, key_id=key_id, expect_device=dev.device_id)
    print("device %s now uses key id %d, fingerprint %s" % (dev.text_id, key_id, res["fingerprint"]))
    _label(row, res, args.labels)
    return 0


def _label(row, res, label_dir):
    from tools.deploy import print_label

    print_label(row, res, label_dir)


def import_enrolment(args, gw):
    from gateway.cli import ROLE_WORDS

    try:
        with open(args.file, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise CliError("cannot read %s: %s" % (args.file, exc)) from exc
    from gateway.bundle import import_bundle

    bundle, done = import_bundle(data, gw.enrolment_key(), gw.bundles, gw.registry, gw.broker, gw.enrolments)
    print("bundle %s from technician %s (%s): %d device(s)" % (bundle.bundle_id, bundle.technician.name,
                                                              bundle.created_at, len(done)))
    for device_id, what in done:
        d = gw.registry.device(device_id)
        print("  %08x %-7s %-14s %s" % (device_id, ROLE_WORDS.get(d.role, d.role), d.place_id or "-",
                                       "registered" if what == "added" else "already registered"))
    return 0


def technician(args, gw):
    if args.tverb == "list":
        import time

        for key_id, name, added, removed in gw.bundles.technicians():
            print("%-16s %-20s added %s%s" % (key_id, name, time.strftime("%Y-%m-%d", time.localtime(added)),
                                              " REMOVED" if removed else ""))
        return 0
    if args.tverb == "remove":
        gw.bundles.remove_technician(args.name)
        print("technician %s removed: their bundles are refused from now on" % args.name)
        return 0
    from gateway.keys import KeyFileError, load_public_key

    try:
        pub = load_public_key(args.pubkey)
    except KeyFileError as exc:
        raise CliError(str(exc)) from exc
    print("technician %s added (key id %s)" % (args.name, gw.bundles.add_technician(args.name, pub.raw)))
    return 0


def technician_key(args):
    from gateway.keys import KeyFileError, SigningKey

    if os.path.exists(args.out):
        raise CliError("%s exists; not overwriting a key" % args.out)
    try:
        key = SigningKey.load_or_create(args.out)
    except KeyFileError as exc:
        raise CliError(str(exc)) from exc
    print(key.public.raw.hex())
    print("technician key %s written to %s (mode 0600; keep it on this laptop). Give the line above to the "
          "township: `fengqiao device technician add NAME --pubkey HEX`" % (key.key_id, args.out), file=sys.stderr)
    return 0


def field_kit(args, gw):
    import json

    tech = gw.bundles.technician_named(args.technician)
    if tech is None:
        raise CliError("no technician %r: add them first (`fengqiao device technician add`)" % args.technician)
    if os.path.exists(args.out):
        raise CliError("%s exists; not overwriting" % args.out)
    first, last = gw.enrolments.reserve(tech.key_id, args.count)
    key = gw.enrolment_key()
    with open(gw.broker.ca_path, encoding="ascii") as f:
        ca = f.read()
    kit = {"fengqiao_field_kit": 1, "technician": tech.name, "technician_key_id": tech.key_id,
           "gateway_enrolment_key": key.public_raw.hex(), "gateway_key_id": key.key_id,
           "device_ids": [first, last], "broker_host": args.broker_host or gw.config["broker"]["hostnames"][0],
           "broker_port": gw.broker.tls_port, "ca_pem": ca,
           "places": {p.place_id: p.level for p in gw.registry.places() if p.level in ("household", "checkpoint")}}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(kit, f, indent=1)
    print("field kit %s: device ids %08x..%08x reserved for %s (no secret in it)" % (args.out, first, last, tech.name))
    return 0


def check(args):
    from tools import deploy

    return deploy.field_check(args.port, args.timeout_s)


VERBS = {
    "list": _with_gw(list_devices, broker=False), "show": _with_gw(show, broker=False), "revoke": _with_gw(revoke),
    "replace": _with_gw(replace), "rotate-key": _with_gw(rotate_key), "import-enrolment": _with_gw(import_enrolment),
    "technician": _with_gw(technician, broker=False), "field-kit": _with_gw(field_kit),
}
