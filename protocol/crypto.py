"""HMAC-SHA256 on hashlib.sha256, a constant-time compare, and the key derivations of SPEC.md
section 2. MicroPython has neither `hmac` nor `compare_digest`, so both are written here."""

import hashlib

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


# const(): private names vanish at compile time (no global, no qstr in a board's heap).
_LABEL_UP = const(b"fengqiao/v1/up")
_LABEL_DOWN = const(b"fengqiao/v1/down")
_LABEL_MQTT = const(b"fengqiao/v1/mqtt")


def hmac_sha256(key, msg):
    """HMAC-SHA256(key, msg) -> 32 bytes, on hashlib.sha256 only."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    pad = bytearray(64)
    pad[: len(key)] = key
    for i in range(64):
        pad[i] ^= 0x36
    inner = hashlib.sha256(pad)
    inner.update(msg)
    ih = inner.digest()
    for i in range(64):
        pad[i] ^= 0x36 ^ 0x5C
    outer = hashlib.sha256(pad)
    outer.update(ih)
    return outer.digest()


def compare_digest(a, b):
    """True when a == b; time depends only on the lengths, not on where the bytes differ."""
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0


def derive_keys(device_key):
    """(K_up, K_down) from the 32-byte device key (SPEC section 2)."""
    return hmac_sha256(device_key, _LABEL_UP), hmac_sha256(device_key, _LABEL_DOWN)


def mqtt_password(device_key):
    """The device's MQTT password: 32 lowercase hex characters (SPEC section 2)."""
    d = hmac_sha256(device_key, _LABEL_MQTT)
    return "".join("%02x" % d[i] for i in range(16))


