"""Gateway configuration: one TOML file (see gateway/gateway.sample.toml for every key).

    cfg = load_config(path)     # -> Config; raises ConfigError naming the bad key
    cfg.section("upstream")     # the raw dict of a section owned by a plugin (upstream, cases, ...)

    path = find_config(args.config)   # --config, else $FENGQIAO_CONFIG, ./gateway.toml, /etc/fengqiao/gateway.toml

Relative paths are resolved against `gateway.data_dir`, which itself is relative to the config
file's directory. Unknown keys in the core sections are errors (a typo must not silently fall
back to a default); sections the core does not know are kept for plugins.
"""

import json
import os
import re
import tomllib
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """The configuration file is missing, unreadable, or has a bad or unknown key."""


DEFAULTS = {
    "gateway": {"data_dir": ".", "database": "gateway.db", "master_key": "master.key",
                "plugins": None},
    "broker": {"manage": True, "workdir": "broker", "host": "127.0.0.1", "port": 1884, "tls_port": 8883,
               "bind": "0.0.0.0", "hostnames": ["localhost"], "use_tls": False, "client_id": "fengqiao-gateway"},
    "pipeline": {"max_batch": 2000, "device_rate_per_s": 20.0, "device_burst": 100, "backlog_grace_s": 30.0, "broker_inflight": 1000,
                 "synchronous": "FULL", "log_per_reason_per_min": 10},
    "supervision": {"default_heartbeat_interval_s": 30, "offline_factor": 2.5, "check_interval_s": 5.0,
                    "low_battery_mv": 3400, "battery_ok_mv": 3600, "clock_tolerance_s": 120.0},
    "metrics": {"enabled": True, "host": "127.0.0.1", "port": 9108},
    "log": {"level": "info", "format": "json"},
}
DEFAULT_PLUGINS = ("gateway.upstream", "gateway.cases", "gateway.quarantine")


@dataclass
class Config:
    path: str
    base_dir: str
    values: dict = field(default_factory=dict)

    def __getitem__(self, section):
        return self.values[section]

    def section(self, name):
        return self.values.get(name, {})

    def path_of(self, value):
        """A path from the config, absolute (relative ones are under gateway.data_dir)."""
        return value if os.path.isabs(value) else os.path.join(self.data_dir, value)

    @property
    def data_dir(self):
        d = self.values["gateway"]["data_dir"]
        return d if os.path.isabs(d) else os.path.normpath(os.path.join(self.base_dir, d))


CONFIG_ENV = "FENGQIAO_CONFIG"
SYSTEM_CONFIG = "/etc/fengqiao/gateway.toml"
LOOKUP_TEXT = "--config FILE, $FENGQIAO_CONFIG, ./gateway.toml, then /etc/fengqiao/gateway.toml"


def default_config_path():
    """Where the gateway's config is when no --config is given: $FENGQIAO_CONFIG (as set, even if
    the file is missing: load_config then says so), else ./gateway.toml, else
    /etc/fengqiao/gateway.toml when it exists; None when there is none."""
    if os.environ.get(CONFIG_ENV):
        return os.environ[CONFIG_ENV]
    for path in ("gateway.toml", SYSTEM_CONFIG):
        if os.path.isfile(path):
            return path
    return None


def find_config(given=None):
    """The config file to use: `given` (a --config value) or default_config_path(); ConfigError
    naming every place looked when there is none."""
    path = given or default_config_path()
    if path is None:
        raise ConfigError("say which gateway: --config FILE (or set $%s); no ./gateway.toml here and no %s"
                          % (CONFIG_ENV, SYSTEM_CONFIG))
    return path


def toml_error_position(text, exc):
    """(line, column), both from 1, of a tomllib.TOMLDecodeError in `text`: from its message, or the
    end of the document (tomllib says only "at end of document" there, e.g. an unclosed string)."""
    m = re.search(r"at line (\d+), column (\d+)", str(exc))
    if m:
        return int(m.group(1)), int(m.group(2))
    return text.count("\n") + 1, len(text.rsplit("\n", 1)[-1]) + 1


def toml_error_text(name, text, exc):
    """`name:LINE:COL: TOML syntax: what` for a tomllib error (its own "(at ...)" suffix dropped)."""
    line, col = toml_error_position(text, exc)
    what = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)$", "", str(exc))
    return "%s:%d:%d: TOML syntax: %s" % (name, line, col, what)


def load_config(path=None):
    """The Config in `path` (default: find_config()); ConfigError for every way it can be wrong."""
    path = find_config(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise ConfigError("no config file %s (start from gateway/gateway.sample.toml)" % path) from exc
    except OSError as exc:
        raise ConfigError("cannot read %s: %s" % (path, exc)) from exc
    text = data.decode("utf-8", errors="replace")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(toml_error_text(path, text, exc)) from exc
    return from_dict(raw, path)


def from_dict(raw, path="<dict>"):
    values = {}
    for name, defaults in DEFAULTS.items():
        given = raw.get(name, {})
        if not isinstance(given, dict):
            raise ConfigError("[%s] must be a table" % name)
        unknown = set(given) - set(defaults)
        if unknown:
            raise ConfigError("unknown key(s) in [%s]: %s" % (name, ", ".join(sorted(unknown))))
        merged = dict(defaults)
        for k, v in given.items():
            d = defaults[k]
            if d is not None and not isinstance(v, type(d)) and not (isinstance(d, float) and isinstance(v, int)):
                raise ConfigError("[%s] %s must be a %s, not %r" % (name, k, type(d).__name__, v))
            merged[k] = v
        values[name] = merged
    for name, v in raw.items():
        if name not in DEFAULTS:
            values[name] = v
    if values["pipeline"]["synchronous"] not in ("FULL", "NORMAL"):
        raise ConfigError("[pipeline] synchronous must be FULL or NORMAL")
    base = os.path.dirname(os.path.abspath(path)) if path != "<dict>" else os.getcwd()
    return Config(str(path), base, values)


def write_config(path, raw):
    """Write a config dict {section: {key: value}} as TOML (what load_config reads back);
    for tools and tests that make a gateway config. Returns the path as a string."""
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)   # a JSON string is a valid TOML basic string (quotes, backslashes)
        if isinstance(v, list):
            return "[%s]" % ", ".join(val(x) for x in v)
        return repr(v)

    with open(path, "w") as f:
        for name, values in raw.items():
            f.write("[%s]\n" % name)
            for k, v in values.items():
                f.write("%s = %s\n" % (k, val(v)))
    return str(path)
