# The write side of the identity (validate, save, rekey, factory reset), imported only when a unit is
# provisioned, erased or has its settings changed, and dropped again by whoever imported it
# (console/__init__.py, app/runtime.py): a running role never holds it.
#
# Errors: IdentityError("invalid_config", "<field>: <why>") (see identity/__init__.py), OSError
# from the flash.
#
# Heap: imported into a running unit's heap (a `config` downlink saves the settings), which is in
# small pieces by then: few globals (9; their table is one small piece), the built-in
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


def _key(cfg):
    import binascii

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
    return bytes(v)


def validate(cfg):
    """Checked copy of cfg (a dict, key as bytes or hex); raises IdentityError invalid_config."""
    if type(cfg) is not dict:
        raise _bad("cfg", "object required")
    out = {}
    out["device_id"] = _int(cfg, "device_id", 1, 0xFFFFFFFF)
    out["key_id"] = _int(cfg, "key_id", 0, 255)
    out["key"] = _key(cfg)
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


def save(root, cfg, extra=None, fresh=False):
    """Validate and write atomically (identity/file.py); returns the key fingerprint. extra:
    fields kept beside the validated ones (the console's nonce). fresh: a new identity on a unit
    that has none: whatever is left in data/ (a factory reset cut short: outbox, counters of the
    identity it erased) goes first, so those records are never sent under the new one."""
    from identity.file import write

    cfg = validate(cfg)
    if extra:
        cfg.update(extra)
    if fresh:
        _rm_tree(identity.data_dir(root))
    write(root, cfg)
    return identity.fingerprint(cfg["key"])


def rekey(root, req, nonce=None, old=None):
    """A new key for this unit, keeping everything else: req gives device_id (this unit's: the
    confirmation), key_id (another one) and key (64 hex digits); the rest of the identity stays as
    it is, and so does data/: the outbox and its records. Returns the new key fingerprint. (Only
    the key is sent: a whole config with its CA certificate is more heap than a running unit with
    a TLS session has to spare.)

    The outbox needs strictly increasing numbers, and a new key id would start again at 1, so
    the new key's sequence is made to continue above every number the old key reserved: a slot
    for the new key id is written first (the generation after the old key's newest, so it goes
    in the other slot file and the old key's newest slot stays), then the identity is renamed
    into place. A power cut between the two leaves the old identity with its slot intact (the
    extra slot belongs to another key id and is ignored). The records below `prev_below` were
    numbered under `prev_key_id`; the identity keeps that key (`prev_key`, hex) so they can be
    sent and acked under it (SPEC section 4: a record is never resent under another key id).
    Only the last rotation is kept: records from two rotations back are not told apart.
    old: the stored identity when the caller holds it (a running unit: no second parse).
    IdentityError not_provisioned / corrupt_config / invalid_config; OSError from the flash."""
    import binascii

    from identity.file import write

    old = old or identity.load(root)
    if type(req) is not dict:
        raise _bad("rekey", "object required")
    device_id = _int(req, "device_id", 1, 0xFFFFFFFF)
    key_id = _int(req, "key_id", 0, 255)
    if device_id != old["device_id"]:
        raise _bad("device_id", "a rekey keeps the device id (this unit is %d)" % old["device_id"])
    if key_id == old["key_id"]:
        raise _bad("key_id", "a rekey needs a new key id (this unit has %d)" % key_id)
    new = dict(old)
    new["key_id"] = key_id
    new["key"] = _key(req)
    from seqcounter import SeqCounter

    d = identity.data_dir(root)
    q = SeqCounter(d, old["key_id"])
    start = q.peek()  # above every number the old key handed out (its reservation on flash)
    if start > 1:
        s = SeqCounter(d, key_id)
        # Its next reservation, made from the old key's position: generation q._w + 1, the
        # slot file the old key's newest slot is not in.
        s._w = q._w
        s._n = start
        s.hi = start - 1
        s.next()
    new["prev_key_id"] = old["key_id"]
    new["prev_key"] = binascii.hexlify(old["key"]).decode()
    new["prev_below"] = start
    new.pop("nonce", None)
    if nonce:
        new["nonce"] = nonce
    write(root, new)
    return identity.fingerprint(new["key"])


def _rm_tree(p):
    # Everything under p (p stays); nothing when p does not exist.
    import os

    try:
        entries = list(os.ilistdir(p))
    except OSError:
        return  # no such directory
    for entry in entries:
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
    _rm_tree(identity.data_dir(root))
