"""`fengqiao device release ID`: let a quarantined device back before its cool-down ends.

Dispatched by gateway/device_cli.py (the `device` command), like the command modules of
tools/cli.py: HELP, add_arguments(parser), run(args). The device's login goes back into the
broker's password file and the running broker reloads (found through mosquitto.pid); the running
gateway sees it within [quarantine] check_interval_s and raises `device_released` (by "operator").
"""

from tools.errors import CliError

HELP = "let a quarantined (flooding) device connect again before its cool-down ends"


def add_arguments(parser):
    parser.add_argument("id", metavar="ID", help="device id, 8 hex digits")
    parser.add_argument("--config", help="gateway TOML file (see gateway/gateway.sample.toml); default "
                                         "$FENGQIAO_CONFIG, else ./gateway.toml, else /etc/fengqiao/gateway.toml")


def _device_id(text):
    from protocol.errors import BadDeviceId
    from protocol.frame import parse_device_id

    try:
        return parse_device_id(text.lower())
    except BadDeviceId as exc:
        raise CliError("device id %r: %s" % (text, exc)) from exc


def run(args):
    from gateway.broker import BrokerError, ProjectBroker
    from gateway.config import ConfigError, load_config

    device_id = _device_id(args.id)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise CliError(str(exc)) from exc
    broker = ProjectBroker(config.path_of(config["broker"]["workdir"]), port=config["broker"]["port"] or None,
                           tls_port=config["broker"]["tls_port"])
    try:
        held = broker.held()
        if device_id not in held:
            names = ", ".join("%08x" % d for d in sorted(held)) or "none"
            raise CliError("device %08x is not quarantined (quarantined now: %s)" % (device_id, names))
        broker.release_devices([device_id])
    except BrokerError as exc:
        raise CliError(str(exc)) from exc
    info = held[device_id]
    print("released %08x (quarantined for %s, %s msg/s); it may connect again" % (
        device_id, info.get("reason", "?"), info.get("msgs_per_s", "?")))
    return 0
