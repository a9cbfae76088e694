"""The gateway's strict frame decoder (CPython only): trusts nothing, names every rejection.

An implementation of SPEC.md independent of the device codec (protocol.frame / protocol.cbor):
its own CBOR subset scanner (iterative, where the device's is recursive), `cbor2` to build the
values, a canonical re-encode with `cbor2` that must give back the exact body bytes, the
standard library's `hmac`, and its own table of body schemas. The test vectors are checked by
both implementations.

    frame = decode_uplink(data, topic, key_lookup)    # -> VerifiedFrame, or raises
    header_and_body = parse_unverified(data)           # syntax only, for counting; NOT verified

`key_lookup(device_id, key_id)` returns the 32-byte device key, or raises (the caller's own
error, e.g. its UnknownDevice, passes through unchanged; returning None raises UnknownKey).

Order of checks (SPEC section 2, the same on every receiver): length, version, direction, type
code, header fields; key lookup; topic (TopicMismatch); MAC (BadMac); the body's CBOR syntax
(MalformedFrame / NonCanonical); its schema (BadBody). So a body error always comes from an
authenticated sender (a device bug), while forgeries and corruption count as BadMac. Every rejection is a protocol.errors.FrameError; a fuzz
test and `fengqiao bench fuzz` check that nothing else escapes for any input bytes.
"""

import functools
import hmac
import struct
from dataclasses import dataclass

import cbor2

from protocol.errors import (
    BadBody,
    BadMac,
    FrameError,
    MalformedFrame,
    NonCanonical,
    Oversize,
    TopicMismatch,
    UnknownKey,
    UnknownType,
    UnsupportedVersion,
    WrongDirection,
)

__all__ = ["Unverified", "VerifiedFrame", "decode_downlink", "decode_uplink", "parse_unverified", "FrameError"]

_HEADER = struct.Struct(">BBIBII")
_HEADER_LEN = 15
_MAC_LEN = 16
_MIN_FRAME = 32
_MAX_FRAME = 256
_MAX_DEPTH = 4
_MAX_STRING = 64
_MAX_ITEMS = 16
_U16 = 0xFFFF
_U32 = 0xFFFFFFFF
# smallest argument allowed after an additional-info byte of 24, 25, 26, 27 (shortest form)
_MIN_ARG = {24: 24, 25: 0x100, 26: 0x10000, 27: 0x100000000}


def _uint(lo, hi):
    def check(v):
        return type(v) is int and lo <= v <= hi

    return check


def _bool(v):
    return v is True or v is False


def _rssi(v):
    return v is None or (type(v) is int and -128 <= v <= 127)


def _uid(v):
    return type(v) is bytes and len(v) in (4, 7, 10)


def _settings(v):
    return type(v) is dict and all(type(k) is int and 0 <= k <= _U32 and type(x) is int and 0 <= x <= _U32 for k, x in v.items())


# code -> (name, ((field name, check), ...)), SPEC section 3
TYPES = {
    0x01: ("boot", (("reset_reason", _uint(0, 255)), ("fw", _uint(0, _U16)))),
    0x02: ("heartbeat", (("battery_mv", _uint(0, _U16)), ("uptime_s", _uint(0, _U32)), ("outbox_depth", _uint(0, _U16)),
                         ("rssi_dbm", _rssi), ("fw", _uint(0, _U16)))),
    0x03: ("alarm", (("kind", _uint(0, 3)),)),
    0x04: ("alarm_cancel", (("alarm_seq", _uint(1, _U32)),)),
    0x05: ("checkin", (("checkpoint_id", _uint(0, _U16)), ("card_uid", _uid))),
    0x06: ("tamper", (("open", _bool),)),
    0x07: ("battery_low", (("battery_mv", _uint(0, _U16)),)),
    0x81: ("ack", (("acked_seq", _uint(1, _U32)), ("stage", _uint(0, 4)), ("gateway_time", _uint(0, _U32)))),
    0x82: ("siren", (("on", _bool), ("pattern", _uint(0, 3)), ("duration_s", _uint(0, _U32)))),
    0x83: ("config", (("settings", _settings),)),
}


@dataclass(frozen=True)
class Unverified:
    """Header and body of a frame whose syntax is valid. NOT authenticated: count, never act."""

    version: int
    msg_type: int
    name: str
    device_id: int
    key_id: int
    seq: int
    device_time: int | None  # None when the sender's clock was unknown (0 on the wire)
    body: list
    raw: bytes

    @property
    def device_id_text(self):
        return "%08x" % self.device_id

    @property
    def downlink(self):
        return bool(self.msg_type & 0x80)


@dataclass(frozen=True)
class VerifiedFrame(Unverified):
    """A frame whose topic, MAC and body schema were verified. `fields` names the body elements."""

    topic: str = ""

    @property
    def fields(self):
        return {name: value for (name, _), value in zip(TYPES[self.msg_type][1], self.body)}


def parse_unverified(data, downlink=False):
    """Check length, version, direction, type, header fields and the body's CBOR syntax; no MAC.
    For tools and for classifying a frame that failed verification; never act on the result.

    `downlink` False expects an uplink (the gateway), True a downlink, None either."""
    data, header = _header(data, downlink)
    return Unverified(*header, _decode_body(data[_HEADER_LEN:-_MAC_LEN]), data)


def _header(data, downlink):
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedFrame("frame must be bytes")
    data = bytes(data)
    n = len(data)
    if n < _MIN_FRAME:
        raise MalformedFrame("frame of %d bytes, minimum 32" % n)
    if n > _MAX_FRAME:
        raise Oversize("frame of %d bytes, maximum 256" % n)
    version, msg_type, device_id, key_id, seq, t = _HEADER.unpack_from(data)
    if version != 1:
        raise UnsupportedVersion("version %d" % version)
    if downlink is not None and bool(msg_type & 0x80) != downlink:
        raise WrongDirection("%s frame where %s expected" % (("downlink", "uplink") if downlink is False else ("uplink", "downlink")))
    if msg_type not in TYPES:
        raise UnknownType("message type 0x%02x" % msg_type)
    if device_id == 0:
        raise MalformedFrame("device id 0")
    if seq == 0:
        raise MalformedFrame("seq 0")
    return data, (version, msg_type, TYPES[msg_type][0], device_id, key_id, seq, t or None)


def decode_uplink(data, topic, key_lookup):
    """Verify an uplink received on `topic`; returns a VerifiedFrame or raises a FrameError."""
    return _verify(data, topic, key_lookup, False)


def decode_downlink(data, topic, key_lookup):
    """Verify a downlink (for tools and tests: what a device would accept, minus the replay check)."""
    return _verify(data, topic, key_lookup, True)


def _verify(data, topic, key_lookup, downlink):
    data, header = _header(data, downlink)
    version, msg_type, name, device_id, key_id, seq, device_time = header
    key = key_lookup(device_id, key_id)
    if key is None:
        raise UnknownKey("no key %d for device %08x" % (key_id, device_id))
    direction = "down" if downlink else "up"
    expected = "fq/v1/%08x/%s" % (device_id, direction)
    if isinstance(topic, (bytes, bytearray, memoryview)):
        topic_ok = bytes(topic) == expected.encode()
    else:
        topic_ok = topic == expected
    if not topic_ok:
        raise TopicMismatch("frame for %08x received on %r" % (device_id, topic))
    topic_b = expected.encode()
    mac = hmac.digest(_direction_key(bytes(key), direction), bytes((len(topic_b),)) + topic_b + data[:-_MAC_LEN], "sha256")
    if not hmac.compare_digest(mac[:_MAC_LEN], data[-_MAC_LEN:]):
        raise BadMac("MAC does not verify for %08x key %d" % (device_id, key_id))
    body = _decode_body(data[_HEADER_LEN:-_MAC_LEN])
    fields = TYPES[msg_type][1]
    if not isinstance(body, list) or len(body) != len(fields):
        raise BadBody("%s body must be an array of %d elements" % (name, len(fields)))
    for i, ((field, check), value) in enumerate(zip(fields, body)):
        if not check(value):
            raise BadBody("%s element %d (%s) out of range: %r" % (name, i, field, value))
    return VerifiedFrame(*header, body, data, expected)


@functools.lru_cache(maxsize=4096)
def _direction_key(device_key, direction):
    return hmac.digest(device_key, b"fengqiao/v1/" + direction.encode(), "sha256")


def _decode_body(body):
    _scan(body)
    try:
        value = cbor2.loads(body)
    except cbor2.CBORDecodeError as exc:  # the scan accepted it: cbor2 and the scan disagree
        raise MalformedFrame("cbor2 rejected a body the subset scan accepted: %s" % exc) from exc
    if cbor2.dumps(value, canonical=True) != body:
        raise NonCanonical("body is not the canonical encoding of its value")
    return value


def _scan(b):
    """Check that `b` is exactly one item of the CBOR subset (SPEC section 5), first fault in
    byte order wins. Iterative: a stack of [items left, is map, previous key]; map entries count
    twice (key and value) and keys are read when the count left is even."""
    n = len(b)
    pos = 0
    stack = [[1, False, -1]]
    while stack:
        top = stack[-1]
        if top[0] == 0:
            stack.pop()
            continue
        is_key = top[1] and top[0] % 2 == 0
        top[0] -= 1
        if pos >= n:
            raise MalformedFrame("truncated CBOR")
        ib = b[pos]
        pos += 1
        major, ai = ib >> 5, ib & 0x1F
        if is_key and major != 0:
            raise MalformedFrame("map key is not an unsigned integer")
        if major == 7:
            if ib in (0xF4, 0xF5, 0xF6):
                continue
            raise MalformedFrame("float or simple value 0x%02x outside the subset" % ib)
        if major == 6:
            raise MalformedFrame("tag outside the subset")
        if ai < 24:
            arg = ai
        elif ai <= 27:
            size = 1 << (ai - 24)
            if pos + size > n:
                raise MalformedFrame("truncated CBOR argument")
            arg = int.from_bytes(b[pos : pos + size], "big")
            pos += size
            if arg < _MIN_ARG[ai]:
                raise NonCanonical("argument %d not in shortest form" % arg)
        else:
            raise MalformedFrame("reserved or indefinite length (additional info %d)" % ai)
        if is_key:
            if arg == top[2]:
                raise MalformedFrame("duplicate map key %d" % arg)
            if arg < top[2]:
                raise NonCanonical("map keys not ascending")
            top[2] = arg
        elif major in (2, 3):
            if arg > _MAX_STRING:
                raise MalformedFrame("string of %d bytes, maximum 64" % arg)
            if pos + arg > n:
                raise MalformedFrame("truncated CBOR string")
            if major == 3:
                try:
                    b[pos : pos + arg].decode("utf-8", "strict")
                except UnicodeDecodeError as exc:
                    raise MalformedFrame("text string is not UTF-8") from exc
            pos += arg
        elif major in (4, 5):
            if len(stack) > _MAX_DEPTH:
                raise MalformedFrame("containers nested deeper than 4")
            if arg > _MAX_ITEMS:
                raise MalformedFrame("container of %d items, maximum 16" % arg)
            stack.append([arg * 2 if major == 5 else arg, major == 5, -1])
    if pos != n:
        raise MalformedFrame("%d trailing bytes after the CBOR item" % (n - pos))
