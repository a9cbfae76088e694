"""Frames of SPEC.md sections 1-4 and 6: build, peek, verify and decode. MicroPython and CPython.

The device codec: the firmware imports it as `from protocol import frame`; the gateway may use
`encode` to build downlinks (it decodes uplinks with the stricter `protocol.strict`). Time and
sequence numbers are always passed in, so every result is reproducible.

    k_up, k_down = derive_keys(device_key)
    data = encode(k_up, uplink_topic(dev), UP_ALARM, dev, key_id, seq, now_s, [0])
    f = decode(k_down, topic, data, downlink=True)   # raises a protocol.errors.FrameError

HMAC and the key derivations are in protocol.crypto, the body schemas in protocol.schema (split
so that compiling each module from source fits a 64 KB heap); what the firmware uses of them is
re-exported here. Rejections are numbered lines of the error catalogue in protocol.errors
(`raise err(_E_...)`): no message strings in this module's heap on a board.
"""

import struct

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from protocol import cbor
from protocol.crypto import compare_digest, derive_keys, hmac_sha256, mqtt_password  # noqa: F401 (API)
from protocol.errors import err
from protocol.schema import lookup, validate_body  # noqa: F401 (validate_body: API)

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

# const(): private names vanish at compile time (no global, no qstr in a board's heap); a value
# over the small-int range is stored as a constant object.
_VERSION = const(1)
_MIN_FRAME = const(32)
_MAX_FRAME = const(256)
_HEADER_FMT = const(">BBIBII")
_U32 = const(0xFFFFFFFF)

# Lines of the error catalogue (protocol/errors.py) raised here.
_E_TYPE = const(24)
_E_ID_INT = const(27)
_E_ID_HEX = const(28)
_E_ID_ZERO = const(29)
_E_NOTFRAME = const(30)
_E_SHORT = const(31)
_E_LONG = const(32)
_E_VERSION = const(33)
_E_DIRECTION = const(34)
_E_TYPE_HEX = const(35)
_E_DEV0 = const(36)
_E_SEQ0 = const(37)
_E_TOPIC_TYPE = const(38)
_E_TOPIC_LONG = const(39)
_E_TOPIC_NOT = const(40)
_E_KEY_ID = const(41)
_E_SEQ = const(42)
_E_TIME = const(43)
_E_TOO_LONG = const(44)
_E_KEY = const(45)
_E_TOPIC = const(46)
_E_MAC = const(47)
_E_DEVICE = const(48)


# --- device ids and topics ------------------------------------------------------------------------

def device_id_text(device_id):
    """1..2^32-1 -> 8 lowercase hex digits; BadDeviceId otherwise."""
    if device_id is True or device_id is False or not isinstance(device_id, int) or not 0 < device_id <= _U32:
        raise err(_E_ID_INT)
    return "%08x" % device_id


def parse_device_id(text):
    """8 lowercase hex digits (not all zero) -> int; BadDeviceId otherwise."""
    try:
        value = int(text, 16)
    except Exception:  # not text, or not hex (ValueError, TypeError)
        value = -1
    # Formatting back and comparing refuses everything int() tolerates besides 8 lowercase hex
    # digits: upper case, signs, spaces, underscores, a 0x prefix, other lengths.
    if not isinstance(text, str) or value < 0 or "%08x" % value != text:
        raise err(_E_ID_HEX)
    if value == 0:
        raise err(_E_ID_ZERO)
    return value


def uplink_topic(device_id):
    return topic_for(UP_BOOT, device_id)


def downlink_topic(device_id):
    return topic_for(DOWN_ACK, device_id)


def topic_for(msg_type, device_id):
    """The topic a frame of this type for this device is published on."""
    return "fq/v1/%s/%s" % (device_id_text(device_id), "down" if msg_type & DOWNLINK_BIT else "up")


# --- frames ---------------------------------------------------------------------------------------

class Frame:
    """A frame's header: version, msg_type, name (of the type), device_id, key_id, seq, and
    device_time (None when the sender's clock was unknown: 0 on the wire). A frame from decode()
    (verified) also has `body` (list) and `raw` (the bytes); one from peek() has not. No methods,
    not even __repr__: each would cost ~100 bytes of a board's heap."""


def peek(data, downlink=None):
    """The header (a Frame without body) after checking length, version, direction (when
    `downlink` is given), type code, and non-zero device id and seq (SPEC section 2 step 1).
    The MAC is NOT checked: use this only to find the key."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise err(_E_NOTFRAME)
    n = len(data)
    if n < _MIN_FRAME:
        raise err(_E_SHORT)
    if n > _MAX_FRAME:
        raise err(_E_LONG)
    version, msg_type, device_id, key_id, seq, t = struct.unpack_from(_HEADER_FMT, data, 0)
    if version != _VERSION:
        raise err(_E_VERSION, version)
    if downlink is not None and bool(msg_type & DOWNLINK_BIT) != bool(downlink):
        raise err(_E_DIRECTION, "downlink" if downlink else "uplink")
    entry = lookup(msg_type)
    if entry is None:
        raise err(_E_TYPE_HEX, msg_type)
    if device_id == 0:
        raise err(_E_DEV0)
    if seq == 0:
        raise err(_E_SEQ0)
    f = Frame()
    f.version = version
    f.msg_type = msg_type
    f.name = entry[0]
    f.device_id = device_id
    f.key_id = key_id
    f.seq = seq
    f.device_time = t or None
    return f


def _topic_bytes(topic):
    try:
        if isinstance(topic, str):
            return topic.encode()
        if isinstance(topic, (bytes, bytearray, memoryview)):
            return bytes(topic)
    except UnicodeError:  # CPython: a str with lone surrogates
        pass
    raise err(_E_TOPIC_TYPE)


def sign(k_dir, topic, unsigned):
    """`unsigned` (header + body) followed by its MAC for `topic`. No checks: for tools/vectors."""
    t = _topic_bytes(topic)
    if len(t) > 255:
        raise err(_E_TOPIC_LONG)
    unsigned = bytes(unsigned)
    return unsigned + hmac_sha256(k_dir, bytes((len(t),)) + t + unsigned)[:MAC_LEN]


def encode(k_dir, topic, msg_type, device_id, key_id, seq, device_time, body):
    """Build one frame. Refuses (FrameError) to build anything decode() would reject."""
    if lookup(msg_type) is None:
        raise err(_E_TYPE, (msg_type,))
    expected = topic_for(msg_type, device_id)  # also checks device_id
    if _topic_bytes(topic) != expected.encode():
        raise err(_E_TOPIC_NOT, (topic, expected))
    if key_id is True or key_id is False or not isinstance(key_id, int) or not 0 <= key_id <= 255:
        raise err(_E_KEY_ID)
    if seq is True or seq is False or not isinstance(seq, int) or not 0 < seq <= _U32:
        raise err(_E_SEQ)
    if device_time is None:
        device_time = 0
    if device_time is True or device_time is False or not isinstance(device_time, int) or not 0 <= device_time <= _U32:
        raise err(_E_TIME)
    validate_body(msg_type, body)
    b = cbor.dumps(body)
    if HEADER_LEN + len(b) + MAC_LEN > _MAX_FRAME:
        raise err(_E_TOO_LONG)
    return sign(k_dir, expected, struct.pack(_HEADER_FMT, _VERSION, msg_type, device_id, key_id, seq, device_time) + b)


def decode(k_dir, topic, data, downlink, key_id=None, device_id=None):
    """Verify and decode one frame received on `topic` in the order of SPEC section 2:
    header (length, version, direction, type), device id and key id, topic, MAC, then the body
    and its schema. `downlink` is True on a device (it accepts only downlinks), False on a
    gateway. A device passes its own `device_id` and `key_id` (SPEC section 2 step 2): a frame
    addressed to another device id raises UnknownDevice, one made with another key id
    UnknownKey."""
    f = peek(data, downlink)
    if device_id is not None and f.device_id != device_id:
        raise err(_E_DEVICE, (f.device_id, device_id))
    if key_id is not None and f.key_id != key_id:
        raise err(_E_KEY, (f.key_id, key_id))
    topic_b = _topic_bytes(topic)
    if topic_b != topic_for(f.msg_type, f.device_id).encode():
        raise err(_E_TOPIC, f.device_id)
    n = len(data) - MAC_LEN
    mv = memoryview(data)
    if not compare_digest(sign(k_dir, topic_b, mv[:n])[n:], mv[n:]):
        raise err(_E_MAC)
    f.body = cbor.loads(mv[HEADER_LEN:n])
    validate_body(f.msg_type, f.body)
    f.raw = bytes(data)
    return f
