"""Fuzz cases for the strict decoder (CPython): random bytes and mutated valid frames.

Used by `fengqiao bench fuzz` (protocol/bench_fuzz.py) and the fuzz tests. A case is
(data, topic, downlink); the key lookup knows KEY for key id 1 and raises UnknownKey otherwise.
Most mutations are re-signed with the right key, so that they get past the MAC and reach the
body parser and the schema checks (unsigned mutations only ever test the MAC compare).
"""

import hashlib
import hmac
import random
import struct

import cbor2

from protocol import strict
from protocol.errors import FrameError, UnknownKey

KEY = hashlib.sha256(b"fengqiao fuzz key (test only)").digest()
KEY_ID = 1
_CODES = (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x81, 0x82, 0x83)
# bodies of every type (canonical CBOR), the seeds of the body mutations
_BODIES = {
    code: cbor2.dumps(value, canonical=True)
    for code, value in {
        0x01: [0, 10203],
        0x02: [3711, 86400, 0, -67, 10203],
        0x03: [0],
        0x04: [103],
        0x05: [65535, bytes(range(0xA0, 0xA7))],
        0x06: [True],
        0x07: [3300],
        0x81: [103, 2, 1763780000],
        0x82: [True, 1, 120],
        0x83: [{1: 300, 2: 60, 3: 800, 4: 3300}],
    }.items()
}
# interesting CBOR initial bytes: every major type with short/long/reserved/indefinite forms
_HEADS = bytes([0x00, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1C, 0x1F, 0x20, 0x38, 0x40, 0x41, 0x58, 0x5F, 0x60, 0x61,
                0x78, 0x7F, 0x80, 0x81, 0x90, 0x98, 0x9F, 0xA0, 0xA1, 0xB0, 0xB8, 0xBF, 0xC0, 0xC2, 0xD8, 0xF4,
                0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA, 0xFB, 0xFF])


def _k(direction):
    return hmac.new(KEY, b"fengqiao/v1/" + direction, hashlib.sha256).digest()


_K = {False: _k(b"up"), True: _k(b"down")}


def topic(device_id, downlink):
    return "fq/v1/%08x/%s" % (device_id, "down" if downlink else "up")


def sign(unsigned, topic_text, downlink):
    t = topic_text.encode()
    return unsigned + hmac.digest(_K[downlink], bytes((len(t),)) + t + unsigned, "sha256")[:16]


def key_lookup(device_id, key_id):
    if key_id != KEY_ID:
        raise UnknownKey("fuzz: no key %d" % key_id)
    return KEY


def _below(rng, n):
    # rng.randrange(n), about 3x faster (random() is one C call); the bench is generator-bound
    return int(rng.random() * n)


def _pick(rng, seq):
    return seq[int(rng.random() * len(seq))]


def _header(rng, code):
    device_id = _pick(rng, (1, 0x2A, 0xFFFFFFFF, rng.getrandbits(32) or 1))
    return struct.pack(">BBIBII", 1, code, device_id, KEY_ID, rng.getrandbits(32) or 1, rng.getrandbits(32)), device_id


def _mutate(rng, b):
    b = bytearray(b)
    for _ in range(1 + _below(rng, 4)):
        op = _below(rng, 6)
        i = _below(rng, len(b) + 1)
        if op == 0 and b:
            b[min(i, len(b) - 1)] ^= 1 << _below(rng, 8)
        elif op == 1 and b:
            b[min(i, len(b) - 1)] = _below(rng, 256)
        elif op == 2:
            b[i:i] = bytes((_pick(rng, _HEADS),))
        elif op == 3:
            b[i:i] = rng.randbytes(1 + _below(rng, 9))
        elif op == 4 and b:
            del b[i : i + 1 + _below(rng, 4)]
        else:
            del b[i:]
    return bytes(b)


def _random_cbor(rng, n):
    b = bytearray(rng.randbytes(n))
    for i in range(n):
        if rng.random() < 0.5:
            b[i] = _pick(rng, _HEADS)
    return bytes(b)


def make_case(rng):
    """One (data, topic, downlink) case and the name of the generator that made it."""
    r = rng.random
    downlink = r() < 0.3
    code = _pick(rng, _CODES)
    if (code >= 0x80) != downlink and r() < 0.9:
        code ^= 0x80
    kind = _below(rng, 8)
    if kind == 0:  # random bytes of any length, half of them with a plausible version and type
        data = rng.randbytes(_below(rng, 41) if r() < 0.5 else _below(rng, 301))
        if len(data) >= 2 and r() < 0.5:
            data = bytes((1, code)) + data[2:]
        return data, topic(rng.getrandbits(32) or 1, downlink), downlink, "random"
    header, device_id = _header(rng, code)
    t = topic(device_id, downlink)
    body = _BODIES.get(code, _BODIES[0x03])
    if kind == 1:  # valid frame with the body mutated, re-signed
        return sign(header + _mutate(rng, body), t, downlink), t, downlink, "body-mutated-signed"
    if kind == 2:  # random CBOR-ish body, re-signed
        return sign(header + _random_cbor(rng, 1 + _below(rng, 30)), t, downlink), t, downlink, "body-random-signed"
    if kind == 3:  # whole frame mutated after signing (MAC, header, length)
        return _mutate(rng, sign(header + body, t, downlink)), t, downlink, "frame-mutated"
    if kind == 4:  # header mutated, re-signed
        return sign(_mutate(rng, header) + body, t, downlink), t, downlink, "header-mutated-signed"
    if kind == 5:  # valid frame on a random or neighbouring topic
        other = _pick(rng, (topic(device_id, not downlink), topic(device_id ^ 1, downlink), rng.randbytes(12).hex()))
        return sign(header + body, t, downlink), other, downlink, "topic"
    if kind == 6:  # valid frame, random key id (unknown key)
        unsigned = bytearray(header + body)
        unsigned[6] = _below(rng, 256)
        return sign(bytes(unsigned), t, downlink), t, downlink, "key-id"
    return sign(header + body, t, downlink), t, downlink, "valid"


def run_case(data, topic_text, downlink):
    """Outcome name: "ok" or the FrameError class name. Anything else propagates (a bug)."""
    try:
        if downlink:
            strict.decode_downlink(data, topic_text, key_lookup)
        else:
            strict.decode_uplink(data, topic_text, key_lookup)
        return "ok"
    except FrameError as exc:
        return type(exc).__name__


def cases(seed, n):
    rng = random.Random(seed)
    for _ in range(n):
        yield make_case(rng)
