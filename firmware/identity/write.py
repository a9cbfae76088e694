# The write side of the identity (validate, save, factory reset), imported only when a unit is
# provisioned, erased or has its settings changed: a running role never pays the heap for it.

import binascii
import json
import os

from identity import (DEFAULT_SETTINGS, ROLES, InvalidConfig, _exists, _join, crc32_hex, data_dir,
                      fingerprint, path)


def _int(cfg, name, lo, hi, required=True):
    v = cfg.get(name)
    if v is None and not required:
        return None
    # bool is an int subclass on CPython; JSON true must not pass as 1.
    if type(v) is not int or v < lo or v > hi:
        raise InvalidConfig(name, "integer %d..%d required" % (lo, hi))
    return v


def _str(cfg, name, max_len, required=True, allow_empty=False):
    v = cfg.get(name)
    if v is None and not required:
        return None
    if type(v) is not str or len(v) > max_len or (not v and not allow_empty):
        raise InvalidConfig(name, "text of at most %d characters required" % max_len)
    return v


def _key(v):
    if type(v) is str:
        if len(v) != 64:
            raise InvalidConfig("key", "64 hex digits required")
        try:
            v = binascii.unhexlify(v)
        except ValueError:
            raise InvalidConfig("key", "64 hex digits required")
    if type(v) not in (bytes, bytearray) or len(v) != 32:
        raise InvalidConfig("key", "32 bytes required")
    return bytes(v)


def validate(cfg):
    """Checked copy of cfg (a dict, key as bytes or hex); raises InvalidConfig(field, why)."""
    if type(cfg) is not dict:
        raise InvalidConfig("cfg", "object required")
    out = {}
    out["device_id"] = _int(cfg, "device_id", 1, 0xFFFFFFFF)
    out["key_id"] = _int(cfg, "key_id", 0, 255)
    out["key"] = _key(cfg.get("key"))
    role = cfg.get("role")
    if role not in ROLES:
        raise InvalidConfig("role", "one of %s required" % ", ".join(ROLES))
    out["role"] = role
    # 802.11: SSID <= 32 octets, WPA2 passphrase <= 63 characters (64 = raw hex PSK).
    out["wifi_ssid"] = _str(cfg, "wifi_ssid", 32, required=False, allow_empty=True) or ""
    out["wifi_password"] = _str(cfg, "wifi_password", 64, required=False, allow_empty=True) or ""
    out["broker_host"] = _str(cfg, "broker_host", 253)
    out["broker_port"] = _int(cfg, "broker_port", 1, 65535)
    tls = cfg.get("tls", False)
    if type(tls) is not bool:
        raise InvalidConfig("tls", "true or false required")
    out["tls"] = tls
    ca = cfg.get("ca_pem")
    if ca is not None and (type(ca) is not str or len(ca) > 4000 or "-----BEGIN CERTIFICATE-----" not in ca):
        raise InvalidConfig("ca_pem", "a PEM certificate (at most 4000 characters) or null required")
    if tls and ca is None:
        raise InvalidConfig("ca_pem", "tls needs the CA certificate that signed the broker's")
    out["ca_pem"] = ca
    cp = _int(cfg, "checkpoint_id", 0, 65535, required=(role == "checkin"))
    out["checkpoint_id"] = cp
    pins = cfg.get("pins", {})
    if type(pins) is not dict:
        raise InvalidConfig("pins", "object required")
    for k in pins:
        v = pins[k]
        if type(k) is not str or not (v is None or type(v) in (int, str, bool, list, dict)):
            raise InvalidConfig("pins", "\"part.field\" -> number, name, list or null required")
    out["pins"] = pins
    settings = cfg.get("settings", {})
    if type(settings) is not dict:
        raise InvalidConfig("settings", "object required")
    merged = dict(DEFAULT_SETTINGS)
    for k in settings:
        v = settings[k]
        if type(k) is not str or type(v) is not int or v < 0 or v > 0xFFFFFFFF:
            raise InvalidConfig("settings", "name -> non-negative integer required")
        merged[k] = v
    out["settings"] = merged
    return out


def _mkdirs(p):
    parts = p.split("/")
    cur = ""
    for i, part in enumerate(parts):
        if not part:
            if i == 0:
                cur = "/"
            continue
        cur = _join(cur, part) if cur else part
        if not _exists(cur):
            os.mkdir(cur)


def encode(cfg):
    """The file's bytes for a validated cfg (the same function is mirrored by provision_dir)."""
    doc = dict(cfg)
    doc["key"] = binascii.hexlify(cfg["key"]).decode()
    doc["v"] = 1
    line = json.dumps(doc).encode()
    return line + b"\n" + crc32_hex(line).encode() + b"\n"


def save(root, cfg):
    """Validate and write atomically; returns the key fingerprint."""
    cfg = validate(cfg)
    _mkdirs(data_dir(root))
    final = path(root)
    tmp = final + ".tmp"
    with open(tmp, "wb") as f:
        f.write(encode(cfg))
        if hasattr(f, "flush"):
            f.flush()
        if hasattr(os, "fsync") and hasattr(f, "fileno"):
            os.fsync(f.fileno())
    os.rename(tmp, final)
    return fingerprint(cfg["key"])


def _rm_tree(p):
    for entry in os.ilistdir(p):
        name, kind = entry[0], entry[1]
        full = _join(p, name)
        if kind == 0x4000:
            _rm_tree(full)
            os.rmdir(full)
        else:
            os.remove(full)


def factory_reset(root):
    """Remove the identity (first, so a power cut mid-way leaves an unprovisioned unit) and
    every other data file."""
    d = data_dir(root)
    try:
        os.remove(path(root))
    except OSError:
        pass
    if _exists(d):
        _rm_tree(d)
