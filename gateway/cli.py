"""`fengqiao gateway ...`: run the gateway, set it up, manage devices and places.

    fengqiao gateway init   --config FILE          # data dir, master key, CA + certs, database
    fengqiao gateway run    --config FILE          # broker (if managed) + verify/store/ack service
    fengqiao gateway backup --config FILE OUT      # online copy of the database (README: restore)
    fengqiao gateway run    --config FILE --new-chain   # an empty (lost) store: a new chain epoch
    fengqiao gateway device add --config FILE --id 0000002a --role alarm|checkin [--place P]
                            (--key-file F | --key-out F) [--heartbeat-s N] [--power mains|battery]
    fengqiao gateway device revoke --config FILE --id 0000002a
    fengqiao gateway device rotate --config FILE --id 0000002a --key-out F
    fengqiao gateway device list   --config FILE
    fengqiao gateway place add --config FILE --id P --level village --name N [--parent Q]

Without --config the config is $FENGQIAO_CONFIG, else ./gateway.toml, else
/etc/fengqiao/gateway.toml (gateway.config.find_config). Device roles are `alarm` and `checkin`,
as everywhere a person types them (provision, hostboard); the registry's own names
`alarm_button` and `checkpoint` are accepted with a note.

Keys are never printed: `--key-out` writes a new random key (64 hex digits) to a 0600 file for the
provisioning tool; `--key-file` reads one (32 raw bytes or 64 hex digits). Adding, rotating or
revoking a device updates the broker's password file and reloads the running broker.

`GatewayApp` below is the composition root used by `run` (and by tests that run a gateway in
process). Plugins (`[gateway] plugins`, default gateway.upstream, gateway.cases and gateway.quarantine when present)
are modules with `attach(app)`; it may return an object with `stop()`. `app` offers: config,
clock, store, registry, service, ctx, metrics, broker, supervisor, data_dir.
"""

import importlib
import logging
import os
import signal
import sys
import threading

from tools.errors import CliError

HELP = "township gateway: run, init, backup, device add|revoke|rotate|list, place add"

log = logging.getLogger("fengqiao.gateway")


class GatewayApp:
    def __init__(self, config, clock=None, new_chain=False):
        from gateway.clock import SystemClock

        self.config = config
        self.new_chain = new_chain   # `run --new-chain`: an empty store starts a new chain epoch
        self.clock = clock or SystemClock()
        self.data_dir = config.data_dir
        self.broker = None
        self.store = self.registry = self.service = self.ctx = self.supervisor = None
        self._metrics_server = None
        self._plugins = []
        self._stopped = threading.Event()

    def _make_broker(self):
        from gateway.broker import ProjectBroker

        b = self.config["broker"]
        return ProjectBroker(self.config.path_of(b["workdir"]), port=b["port"] or None, tls_port=b["tls_port"],
                             bind=b["bind"], hostnames=b["hostnames"], plain_listener=bool(b["port"]),
                             inflight=self.config["pipeline"]["broker_inflight"])

    def open_registry(self):
        from gateway.registry import Registry
        from gateway.store import check_database

        g = self.config["gateway"]
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        check_database(self.config.path_of(g["database"]))   # StoreDamaged before anything opens it
        return Registry(self.config.path_of(g["database"]), self.config.path_of(g["master_key"]), self.clock)

    def start(self, connect_timeout_s=15):
        from gateway.metrics import Metrics, MetricsServer
        from gateway.service import GatewayService, MqttSettings
        from gateway.store import EventStore
        from gateway.supervision import Supervisor

        cfg = self.config
        b, p, s, m = cfg["broker"], cfg["pipeline"], cfg["supervision"], cfg["metrics"]
        self.registry = self.open_registry()
        self.store = EventStore(cfg.path_of(cfg["gateway"]["database"]), self.clock, synchronous=p["synchronous"])
        self.broker = self._make_broker()
        self.broker.setup()
        sync_broker_credentials(self.registry, self.broker, reload=False)
        if b["manage"]:
            self.broker.start()
        self.metrics = Metrics()
        user, password = self.broker.gateway_credentials
        if b["use_tls"] or not b["port"]:  # no plain listener: the gateway uses TLS too
            settings = MqttSettings(b["host"], b["tls_port"], user, password, tls_ca=self.broker.ca_path,
                                    client_id=b["client_id"])
        else:
            settings = MqttSettings(b["host"], b["port"], user, password, client_id=b["client_id"])
        self.service = GatewayService(self.store, self.registry, self.clock, settings, self.metrics,
                                      max_batch=p["max_batch"], device_rate_per_s=p["device_rate_per_s"],
                                      device_burst=p["device_burst"], backlog_grace_s=p["backlog_grace_s"],
                                      log_per_reason_per_min=p["log_per_reason_per_min"])
        self.ctx = self.service.ctx
        self.supervisor = Supervisor(self.ctx, s["default_heartbeat_interval_s"], s["offline_factor"],
                                     s["low_battery_mv"], s["battery_ok_mv"],
                                     s["clock_tolerance_s"]).attach(self.service, s["check_interval_s"])
        self._load_plugins()
        if m["enabled"]:
            self._metrics_server = MetricsServer(self.metrics, m["host"], m["port"]).start()
        self.service.start()
        self.service.wait_connected(connect_timeout_s)
        log.info("gateway running", extra={"fields": {
            "mqtt": "%s:%s" % (settings.host, settings.port), "database": self.store.path,
            "metrics": self._metrics_server and "http://%s:%d/metrics" % (m["host"], self._metrics_server.port)}})
        return self

    @property
    def metrics_port(self):
        return self._metrics_server.port if self._metrics_server else None

    def _load_plugins(self):
        names = self.config["gateway"]["plugins"]
        explicit = names is not None
        from gateway.config import DEFAULT_PLUGINS

        for name in (names if explicit else DEFAULT_PLUGINS):
            try:
                mod = importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if explicit or not (exc.name and name.startswith(exc.name)):
                    raise
                log.warning("plugin not available", extra={"fields": {"plugin": name}})
                continue
            attach = getattr(mod, "attach", None)
            if attach is None:
                if explicit:
                    raise CliError("plugin %s has no attach(app)" % name)
                log.warning("plugin has no attach(app); skipped", extra={"fields": {"plugin": name}})
                continue
            self._plugins.append(attach(self))
            log.info("plugin attached", extra={"fields": {"plugin": name}})

    def stop(self):
        if self._stopped.is_set():
            return
        self._stopped.set()
        for p in reversed(self._plugins):
            if p is not None and hasattr(p, "stop"):
                try:
                    p.stop()
                except Exception:
                    log.exception("plugin stop failed")
        if self.service:
            self.service.stop()
        if self._metrics_server:
            self._metrics_server.stop()
        if self.broker and self.config["broker"]["manage"]:
            self.broker.stop()
        if self.store:
            self.store.close()
        if self.registry:
            self.registry.close()
        log.info("gateway stopped")

    def run_forever(self):
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *a: done.set())
        try:
            while not done.wait(1.0):
                pass
        finally:
            self.stop()


def sync_broker_credentials(registry, broker, reload=True):
    """Make the broker's password file match the registry's active devices (current keys)."""
    active = [d for d in registry.devices() if d.status == "active"]
    wanted = {d.text_id for d in active}
    for user in broker.devices():
        if user not in wanted:
            broker.revoke_device(int(user, 16), reload=False)
    broker.add_devices([(d.device_id, registry.device_key(d.device_id, d.key_id)) for d in active], reload=False)
    if reload:
        broker.reload()


# -- command line ----------------------------------------------------------------------------------

def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def cmd(name, help_text):
        p = sub.add_parser(name, help=help_text)
        _config_argument(p)
        return p

    cmd("init", "create data dir, master key, broker CA/certificates and database")
    cmd("pubkey", "print the upstream signing public key (for `fengqiao verify --pubkey`)").add_argument(
        "--hex", action="store_true", help="64 hex characters instead of PEM")
    bk = cmd("backup", "copy the database while the gateway runs (SQLite online backup; restore: gateway/README.md)")
    bk.add_argument("out", metavar="OUT", help="the backup file to write (must not exist)")
    r = cmd("run", "run the broker (if managed) and the gateway until SIGTERM/Ctrl-C")
    r.add_argument("--log-format", choices=("json", "text"), help="override [log] format")
    r.add_argument("--new-chain", action="store_true",
                   help="the store is empty (lost) but the key signed a chain: start a new chain epoch the county sees")
    dev = sub.add_parser("device", help="add | revoke | rotate | list devices")
    dsub = dev.add_subparsers(dest="device_action", metavar="DEVICE_ACTION", required=True)
    for name, help_text in (("add", "register a device and allow it on the broker"),
                            ("revoke", "revoke a device: refused by the broker and the pipeline"),
                            ("rotate", "give a device a new key (new key id)"), ("list", "list devices")):
        p = dsub.add_parser(name, help=help_text)
        _config_argument(p)
        if name != "list":
            p.add_argument("--id", required=True, help="device id, 8 hex digits")
        if name == "add":
            p.add_argument("--role", required=True, type=_role, metavar="{alarm,checkin}",
                           help="alarm: an alarm button; checkin: a patrol check-in point")
            p.add_argument("--place", help="place id (see `place add` / `fengqiao registry import`)")
            p.add_argument("--heartbeat-s", type=int, help="heartbeat interval for supervision (default from config)")
            p.add_argument("--power", choices=("mains", "battery"), default="mains")
            k = p.add_mutually_exclusive_group(required=True)
            k.add_argument("--key-file", help="existing key: 32 raw bytes or 64 hex digits")
            k.add_argument("--key-out", help="generate a key and write it (hex, mode 0600) here")
        if name == "rotate":
            p.add_argument("--key-out", required=True)
    pl = sub.add_parser("place", help="add a place")
    psub = pl.add_subparsers(dest="place_action", metavar="PLACE_ACTION", required=True)
    p = psub.add_parser("add", help="add or update a place")
    _config_argument(p)
    p.add_argument("--id", required=True)
    p.add_argument("--level", required=True, choices=("county", "township", "village", "grid", "household", "checkpoint"))
    p.add_argument("--name", required=True)
    p.add_argument("--parent")


def _config_argument(parser):
    parser.add_argument("--config", help="gateway TOML file (see gateway/gateway.sample.toml); default "
                                         "$FENGQIAO_CONFIG, else ./gateway.toml, else /etc/fengqiao/gateway.toml")


# What a person types (as `provision --role` and `hostboard --role`) -> the registry's role names.
ROLES = {"alarm": "alarm_button", "checkin": "checkpoint"}
ROLE_WORDS = {v: k for k, v in ROLES.items()}


def _role(text):
    """--role: alarm | checkin; the registry's names are accepted with a note on stderr."""
    import argparse

    if text in ROLES:
        return ROLES[text]
    if text in ROLE_WORDS:
        print("fengqiao: note: --role %s is the registry's name; say --role %s" % (text, ROLE_WORDS[text]),
              file=sys.stderr)
        return text
    raise argparse.ArgumentTypeError("%r: choose alarm or checkin" % text)


def _config(args):
    from gateway.config import ConfigError, load_config

    try:
        return load_config(args.config)
    except ConfigError as exc:
        raise CliError(str(exc)) from exc


def _device_id(text):
    from protocol.errors import BadDeviceId
    from protocol.frame import parse_device_id

    try:
        return parse_device_id(text.lower())
    except BadDeviceId as exc:
        raise CliError("--id %r: %s" % (text, exc)) from exc


def _read_key(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise CliError("cannot read key file: %s" % exc) from exc
    if len(data) == 32:
        return data
    try:
        key = bytes.fromhex(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != 32:
        raise CliError("key file %s must hold 32 raw bytes or 64 hex digits" % path)
    return key


def _write_key(path, key):
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise CliError("%s exists; not overwriting a key file" % path) from exc
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")


def run(args):
    from gateway.store import StoreDamaged

    from gateway.upstream import NewChainRequired

    try:
        return _run(args)
    except (StoreDamaged, NewChainRequired) as exc:   # named, actionable errors: no traceback, exit 1
        raise CliError(str(exc)) from exc


def _run(args):
    from gateway.logs import setup_logging
    from gateway.registry import RegistryError

    cfg = _config(args)
    app = GatewayApp(cfg, new_chain=getattr(args, "new_chain", False))
    if args.action == "pubkey":
        from gateway.upstream import public_key_text

        print(public_key_text(cfg, args.hex))
        return 0
    if args.action == "backup":
        from gateway.store import StoreError, backup_database

        try:
            count, head = backup_database(cfg.path_of(cfg["gateway"]["database"]), args.out)
        except StoreError as exc:
            raise CliError(str(exc)) from exc
        print("backup %s: %d events, head event %d, quick_check ok (the master key is not in it:"
              " back up %s separately)" % (args.out, count, head, cfg.path_of(cfg["gateway"]["master_key"])))
        return 0
    if args.action == "run":
        setup_logging(cfg["log"]["level"], args.log_format or cfg["log"]["format"])
        try:
            app.start()
        except Exception:
            app.stop()
            raise
        app.run_forever()
        return 0
    if args.action == "init":
        reg = app.open_registry()
        from gateway.store import EventStore

        EventStore(cfg.path_of(cfg["gateway"]["database"]), app.clock).close()
        app._make_broker().setup()
        reg.close()
        print("initialised %s" % app.data_dir)
        return 0
    reg = app.open_registry()
    broker = app._make_broker()
    try:
        if args.action == "place":
            reg.add_place(args.id, args.level, args.name, args.parent)
            print("place %s (%s) saved" % (args.id, args.level))
            return 0
        if args.device_action == "list":
            for d in reg.devices():
                print("%s %-8s %-7s key %-3d place %-12s heartbeat %s" % (
                    d.text_id, ROLE_WORDS.get(d.role, d.role), d.status, d.key_id, d.place_id or "-", d.heartbeat_interval_s or "default"))
            return 0
        device_id = _device_id(args.id)
        broker.setup()
        if args.device_action == "add":
            key = _read_key(args.key_file) if args.key_file else None
            if args.key_out and os.path.exists(args.key_out):
                raise CliError("%s exists; not overwriting a key file" % args.key_out)
            key = reg.add_device(device_id, args.role, args.place, key=key, heartbeat_interval_s=args.heartbeat_s,
                                 power=args.power)
            if args.key_out:
                _write_key(args.key_out, key)
            reloaded = _allow(broker, device_id, key)
            print("device %08x added%s" % (device_id, " (broker reloaded)" if reloaded else ""))
        elif args.device_action == "rotate":
            if os.path.exists(args.key_out):
                raise CliError("%s exists; not overwriting a key file" % args.key_out)
            key_id, key = reg.rotate_key(device_id)
            _write_key(args.key_out, key)
            _allow(broker, device_id, key)
            print("device %08x now uses key id %d" % (device_id, key_id))
        elif args.device_action == "revoke":
            reg.revoke_device(device_id)
            broker.revoke_device(device_id, reload=False)
            reloaded = broker.reload()
            print("device %08x revoked%s" % (device_id, " (broker reloaded)" if reloaded else ""))
        return 0
    except RegistryError as exc:
        raise CliError(str(exc)) from exc
    finally:
        reg.close()


def _allow(broker, device_id, key):
    broker.add_device(device_id, key, reload=False)
    return broker.reload()


if __name__ == "__main__":
    from tools.cli import main

    sys.exit(main(["gateway"] + sys.argv[1:]))
