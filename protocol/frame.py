"""Frames of SPEC.md sections 1-4 and 6: build, peek, verify and decode. MicroPython and CPython.

The device codec: the firmware imports it as `from protocol import frame`; the gateway may use
`encode` to build downlinks (it decodes uplinks with the stricter `protocol.strict`). Time and
sequence numbers are always passed in, so every result is reproducible.

    k_up, k_down = derive_keys(device_key)
    data = encode(k_up, uplink_topic(dev), UP_ALARM, dev, key_id, seq, now_s, [0])
    f = decode(k_down, topic, data, downlink=True)   # raises a protocol.errors.FrameError

HMAC and the key derivations are in protocol.crypto, the body schemas in protocol.schema (split
so that compiling each module from source fits a 64 KB heap); all are re-exported here.
"""

import struct

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from protocol import cbor
from protocol.crypto import compare_digest, derive_keys, hmac_sha256, mqtt_password  # noqa: F401 (API)
from protocol.schema import (  # noqa: F401 (re-exported: the frame API in one import)
    ACK_STAGES,
    ALARM_KINDS,
    CONFIG_KEYS,
    RESET_REASONS,
    SCHEMAS,
    SIREN_PATTERNS,
    TYPE_CODES,
    TYPE_NAMES,
    UID_LENGTHS,
    validate_body,
)
from protocol.errors import (
    BadDeviceId,
    BadMac,
    MalformedFrame,
    Oversize,
    TopicMismatch,
    UnknownKey,
    UnknownType,
    UnsupportedVersion,
    WrongDirection,
)

VERSION = const(1)

UP_BOOT = const(0x01)
UP_HEARTBEAT = const(0x02)
UP_ALARM = const(0x03)
UP_ALARM_CANCEL = const(0x04)
UP_CHECKIN = const(0x05)
UP_TAMPER = const(0x06)
UP_BATTERY_LOW = const(0x07)
DOWN_ACK = const(0x81)
DOWN_SIREN = const(0x82)
DOWN_CONFIG = const(0x83)
DOWNLINK_BIT = const(0x80)

HEADER_LEN = const(15)
MAC_LEN = const(16)
MIN_FRAME = const(32)
MAX_FRAME = const(256)
# const(): private names vanish at compile time (no global, no qstr in a board's heap); a value
# over the small-int range is stored as a constant object.
_HEADER_FMT = const(">BBIBII")
_U32 = const(0xFFFFFFFF)



# --- device ids and topics ------------------------------------------------------------------------

def device_id_text(device_id):
    """1..2^32-1 -> 8 lowercase hex digits; BadDeviceId otherwise."""
    if device_id is True or device_id is False or not isinstance(device_id, int) or not 0 < device_id <= _U32:
        raise BadDeviceId("device id must be an integer 1..2^32-1")
    return "%08x" % device_id


def parse_device_id(text):
    """8 lowercase hex digits (not all zero) -> int; BadDeviceId otherwise."""
    if not isinstance(text, str) or len(text) != 8:
        raise BadDeviceId("device id must be 8 lowercase hex digits")
    for c in text:
        if c not in "0123456789abcdef":
            raise BadDeviceId("device id must be 8 lowercase hex digits")
    value = int(text, 16)
    if value == 0:
        raise BadDeviceId("device id 00000000 is reserved")
    return value


def uplink_topic(device_id):
    return "fq/v1/%s/up" % device_id_text(device_id)


def downlink_topic(device_id):
    return "fq/v1/%s/down" % device_id_text(device_id)


def topic_for(msg_type, device_id):
    """The topic a frame of this type for this device is published on."""
    return downlink_topic(device_id) if msg_type & DOWNLINK_BIT else uplink_topic(device_id)


# --- header ---------------------------------------------------------------------------------------

class Header:
    """The 15 header bytes, unpacked. device_time is None when the sender's clock was unknown (0)."""

    def __init__(self, version, msg_type, device_id, key_id, seq, device_time):
        self.version = version
        self.msg_type = msg_type
        self.name = TYPE_NAMES[msg_type]
        self.device_id = device_id
        self.key_id = key_id
        self.seq = seq
        self.device_time = device_time or None

    @property
    def downlink(self):
        return bool(self.msg_type & DOWNLINK_BIT)

    def __repr__(self):
        return "<%s %s dev=%08x key=%d seq=%d time=%s>" % (
            type(self).__name__, self.name, self.device_id, self.key_id, self.seq, self.device_time)


class Frame(Header):
    """A verified, decoded frame: the header fields plus `body` (list) and `raw` (the bytes)."""

    def __init__(self, header, body, raw):
        Header.__init__(self, header.version, header.msg_type, header.device_id, header.key_id,
                        header.seq, header.device_time)
        self.body = body
        self.raw = raw


def peek(data, downlink=None):
    """Unpack the header after checking length, version, direction (when `downlink` is given),
    type code, and non-zero device id and seq (SPEC section 2 step 1). The MAC is NOT checked:
    use this only to find the key."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedFrame("frame must be bytes")
    n = len(data)
    if n < MIN_FRAME:
        raise MalformedFrame("frame shorter than 32 bytes")
    if n > MAX_FRAME:
        raise Oversize("frame longer than 256 bytes")
    version, msg_type, device_id, key_id, seq, t = struct.unpack_from(_HEADER_FMT, data, 0)
    if version != VERSION:
        raise UnsupportedVersion("version %d, expected 1" % version)
    if downlink is not None and bool(msg_type & DOWNLINK_BIT) != bool(downlink):
        raise WrongDirection("expected a %s frame" % ("downlink" if downlink else "uplink"))
    if msg_type not in TYPE_NAMES:
        raise UnknownType("message type 0x%02x" % msg_type)
    if device_id == 0:
        raise MalformedFrame("device id 0")
    if seq == 0:
        raise MalformedFrame("seq 0")
    return Header(version, msg_type, device_id, key_id, seq, t)


def _topic_bytes(topic):
    try:
        if isinstance(topic, str):
            return topic.encode("utf-8")
        if isinstance(topic, (bytes, bytearray, memoryview)):
            return bytes(topic)
    except UnicodeError:  # CPython: a str with lone surrogates
        pass
    raise TopicMismatch("topic must be text or bytes")


def _mac(k_dir, topic_b, signed):
    if len(topic_b) > 255:
        raise TopicMismatch("topic longer than 255 bytes")
    h = bytearray(1)
    h[0] = len(topic_b)
    return hmac_sha256(k_dir, bytes(h) + topic_b + bytes(signed))[:MAC_LEN]


def sign(k_dir, topic, unsigned):
    """`unsigned` (header + body) followed by its MAC for `topic`. No checks: for tools/vectors."""
    return bytes(unsigned) + _mac(k_dir, _topic_bytes(topic), unsigned)


def encode(k_dir, topic, msg_type, device_id, key_id, seq, device_time, body):
    """Build one frame. Refuses (FrameError) to build anything decode() would reject."""
    if msg_type not in TYPE_NAMES:
        raise UnknownType("message type %r" % (msg_type,))
    expected = topic_for(msg_type, device_id)  # also checks device_id
    if _topic_bytes(topic) != expected.encode("utf-8"):
        raise TopicMismatch("topic %r is not %r" % (topic, expected))
    if key_id is True or key_id is False or not isinstance(key_id, int) or not 0 <= key_id <= 255:
        raise MalformedFrame("key id must be 0..255")
    if seq is True or seq is False or not isinstance(seq, int) or not 0 < seq <= _U32:
        raise MalformedFrame("seq must be 1..2^32-1")
    if device_time is None:
        device_time = 0
    if device_time is True or device_time is False or not isinstance(device_time, int) or not 0 <= device_time <= _U32:
        raise MalformedFrame("time must be None or 0..2^32-1")
    validate_body(msg_type, body)
    b = cbor.dumps(body)
    if HEADER_LEN + len(b) + MAC_LEN > MAX_FRAME:
        raise Oversize("frame would be longer than 256 bytes")
    unsigned = struct.pack(_HEADER_FMT, VERSION, msg_type, device_id, key_id, seq, device_time) + b
    return sign(k_dir, expected, unsigned)


def decode(k_dir, topic, data, downlink, key_id=None):
    """Verify and decode one frame received on `topic` in the order of SPEC section 2:
    header (length, version, direction, type), key id, topic, MAC, then the body and its schema.
    `downlink` is True on a device (it accepts only downlinks), False on a gateway. With `key_id`
    (a device passes its own), a frame made with another key id raises UnknownKey."""
    h = peek(data, downlink)
    if key_id is not None and h.key_id != key_id:
        raise UnknownKey("frame made with key id %d, not %d" % (h.key_id, key_id))
    topic_b = _topic_bytes(topic)
    if topic_b != topic_for(h.msg_type, h.device_id).encode("utf-8"):
        raise TopicMismatch("frame for %08x received on another topic" % h.device_id)
    n = len(data)
    mv = memoryview(data)
    if not compare_digest(_mac(k_dir, topic_b, mv[: n - MAC_LEN]), mv[n - MAC_LEN :]):
        raise BadMac("MAC does not verify")
    body = cbor.loads(mv[HEADER_LEN : n - MAC_LEN])
    validate_body(h.msg_type, body)
    return Frame(h, body, bytes(data))
