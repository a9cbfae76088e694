"""What the registry, case and report commands share: finding the gateway's database, local time."""

import datetime
import os

from tools.errors import CliError


def add_db_arguments(parser):
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--config", help="the gateway's config file (its [gateway] database is used); default "
                                    "$FENGQIAO_CONFIG, else ./gateway.toml, else /etc/fengqiao/gateway.toml")
    g.add_argument("--db", help="the gateway's SQLite file directly (instead of --config)")


def _load_config(args):
    from gateway.config import ConfigError, load_config

    try:
        return load_config(args.config)
    except ConfigError as exc:
        raise CliError(str(exc)) from exc


def _default_config(args):
    """No --config and no --db: the gateway's config from the default places (gateway.config:
    $FENGQIAO_CONFIG, ./gateway.toml, /etc/fengqiao/gateway.toml), unless $FENGQIAO_DB is set alone."""
    from gateway.config import CONFIG_ENV, default_config_path

    if getattr(args, "config", None) or getattr(args, "db", None):
        return
    if os.environ.get("FENGQIAO_DB") and not os.environ.get(CONFIG_ENV):
        return
    args.config = default_config_path()


def db_path(args, must_exist=True):
    _default_config(args)
    if getattr(args, "config", None):
        cfg = _load_config(args)
        path = cfg.path_of(cfg["gateway"]["database"])
    elif getattr(args, "db", None):
        path = args.db
    elif os.environ.get("FENGQIAO_DB"):
        path = os.environ["FENGQIAO_DB"]
    else:
        raise CliError("say which gateway: --config FILE (the gateway's config) or --db FILE (its database); "
                       "without them $FENGQIAO_CONFIG, ./gateway.toml and /etc/fengqiao/gateway.toml are tried")
    if must_exist and not os.path.exists(path):
        raise CliError("no gateway database at %s (run `fengqiao gateway init --config FILE` first)" % path)
    return path


def open_registry(args):
    """G-core's Registry when the gateway config is given (it holds the master key path), else None."""
    _default_config(args)
    if not getattr(args, "config", None):
        return None
    from gateway.registry import Registry, RegistryError

    cfg = _load_config(args)
    g = cfg["gateway"]
    key_path = cfg.path_of(g["master_key"])
    if not os.path.exists(key_path):
        raise CliError("no master key at %s (run `fengqiao gateway init --config %s` first)" % (key_path, args.config))
    try:
        return Registry(cfg.path_of(g["database"]), key_path)
    except RegistryError as exc:
        raise CliError(str(exc)) from exc


def fmt_time(t, utc_offset_s=0):
    """Unix seconds -> 'YYYY-MM-DD HH:MM:SS' local ('-' for None)."""
    if t is None:
        return "-"
    tz = datetime.timezone(datetime.timedelta(seconds=utc_offset_s))
    return datetime.datetime.fromtimestamp(t, tz=tz).strftime("%Y-%m-%d %H:%M:%S")


def parse_local(text, utc_offset_s, what):
    """'YYYY-MM-DD' or 'YYYY-MM-DDTHH:MM[:SS]' local -> Unix seconds (a date means its midnight)."""
    tz = datetime.timezone(datetime.timedelta(seconds=utc_offset_s))
    for fmt in ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"):
        try:
            return datetime.datetime.strptime(text, fmt).replace(tzinfo=tz).timestamp()
        except ValueError:
            continue
    raise CliError("%s %r: write a local date YYYY-MM-DD or date and time YYYY-MM-DDTHH:MM" % (what, text))


def parse_date(text, what="--date"):
    try:
        return datetime.date.fromisoformat(text)
    except ValueError as exc:
        raise CliError("%s %r: write the date as YYYY-MM-DD" % (what, text)) from exc
