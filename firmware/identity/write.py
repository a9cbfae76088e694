# The write side of the identity (validate, save, factory reset), imported only when a unit is
# provisioned, erased or has its settings changed, and dropped again by whoever imported it
# (console/__init__.py, app/runtime.py): a running role never holds it.
#
# Errors: IdentityError("invalid_config", "<field>: <why>") (see identity/__init__.py), OSError
# from the flash.
#
# Heap: imported into a running unit's heap (a `config` downlink saves the settings), which is in
# small pieces by then: few globals (8, so their table is one 192-byte piece), the built-in
# modules imported where they are used; the file itself is written by identity/file.py.

import identity


def _bad(name, why):
    return identity.IdentityError("invalid_config", "%s: %s" % (name, why))


def _int(cfg, name, lo, hi, opt=False):
    # opt: may be missing (None).
    v = cfg.get(name)
    if v is None and opt:
        return None
    # bool is an int subclass on CPython; JSON true must not pass as 1.
    if type(v) is not int or v < lo or v > hi:
        raise _bad(name, "integer %d..%d required" % (lo, hi))
    return v


def _str(cfg, name, hi, opt=False):
    # opt: may be missing or empty ("" then).
    v = cfg.get(name)
    if v is None and opt:
        return ""
    if type(v) is not str or len(v) > hi or (not v and not opt):
        raise _bad(name, "text of at most %d characters required" % hi)
    return v


def validate(cfg):
    """Checked copy of cfg (a dict, key as bytes or hex); raises IdentityError invalid_config."""
    import binascii

    if type(cfg) is not dict:
        raise _bad("cfg", "object required")
    out = {}
    out["device_id"] = _int(cfg, "device_id", 1, 0xFFFFFFFF)
    out["key_id"] = _int(cfg, "key_id", 0, 255)
    v = cfg.get("key")
    if type(v) is str:
        if len(v) != 64:
            raise _bad("key", "64 hex digits required")
        try:
            v = binascii.unhexlify(v)
        except ValueError:
            raise _bad("key", "64 hex digits required")
    if type(v) not in (bytes, bytearray) or len(v) != 32:
        raise _bad("key", "32 bytes required")
    out["key"] = bytes(v)
    role = cfg.get("role")
    if role not in ("alarm", "checkin"):
        raise _bad("role", "alarm or checkin required")
    out["role"] = role
    # 802.11: SSID <= 32 octets, WPA2 passphrase <= 63 characters (64 = raw hex PSK).
    out["wifi_ssid"] = _str(cfg, "wifi_ssid", 32, True)
    out["wifi_password"] = _str(cfg, "wifi_password", 64, True)
    out["broker_host"] = _str(cfg, "broker_host", 253)
    out["broker_port"] = _int(cfg, "broker_port", 1, 65535)
    tls = cfg.get("tls", False)
    if type(tls) is not bool:
        raise _bad("tls", "true or false required")
    out["tls"] = tls
    ca = cfg.get("ca_pem")
    if ca is not None and (type(ca) is not str or len(ca) > 4000 or "-----BEGIN CERTIFICATE-----" not in ca):
        raise _bad("ca_pem", "a PEM certificate (at most 4000 characters) or null required")
    if tls and ca is None:
        raise _bad("ca_pem", "tls needs the CA certificate that signed the broker's")
    out["ca_pem"] = ca
    out["checkpoint_id"] = _int(cfg, "checkpoint_id", 0, 65535, role != "checkin")
    pins = cfg.get("pins", {})
    if type(pins) is not dict:
        raise _bad("pins", "object required")
    for k in pins:
        v = pins[k]
        if type(k) is not str or not (v is None or type(v) in (int, str, bool, list, dict)):
            raise _bad("pins", "\"part.field\" -> number, name, list or null required")
    out["pins"] = pins
    given = cfg.get("settings", {})
    if type(given) is not dict:
        raise _bad("settings", "object required")
    for k in given:
        v = given[k]
        if type(k) is not str or type(v) is not int or v < 0 or v > 0xFFFFFFFF:
            raise _bad("settings", "name -> non-negative integer required")
    out["settings"] = identity.settings(given)
    return out


def save(root, cfg):
    """Validate and write atomically (identity/file.py); returns the key fingerprint."""
    from identity.file import write

    cfg = validate(cfg)
    write(root, cfg)
    return identity.fingerprint(cfg["key"])


def _rm_tree(p):
    import os

    for entry in os.ilistdir(p):
        full = p.rstrip("/") + "/" + entry[0]
        if entry[1] == 0x4000:  # a directory
            _rm_tree(full)
            os.rmdir(full)
        else:
            os.remove(full)


def factory_reset(root):
    """Remove the identity (first, so a power cut mid-way leaves an unprovisioned unit) and
    every other data file."""
    import os

    try:
        os.remove(identity.path(root))
    except OSError:
        pass
    d = identity.data_dir(root)
    try:
        os.stat(d)
    except OSError:
        return  # no data directory
    _rm_tree(d)
