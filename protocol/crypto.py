"""HMAC-SHA256 on hashlib.sha256, a constant-time compare, and the key derivations of SPEC.md
section 2. MicroPython has neither `hmac` nor `compare_digest`, so both are written here."""

import hashlib

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


# Labels of SPEC section 2: "fengqiao/v1/" + up, down or mqtt. One str constant plus three
# short words (qstrs) costs less heap on a board than three bytes constants.
_LABEL = const("fengqiao/v1/")


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
    return hmac_sha256(device_key, (_LABEL + "up").encode()), hmac_sha256(device_key, (_LABEL + "down").encode())


def mqtt_password(device_key):
    """The device's MQTT password: 32 lowercase hex characters (SPEC section 2)."""
    return ("%02x" * 16) % tuple(hmac_sha256(device_key, (_LABEL + "mqtt").encode())[:16])


