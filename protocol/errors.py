"""Named errors of the Fengqiao wire protocol (SPEC.md section 8). Runs on MicroPython and CPython.

Every rejection of a frame raises exactly one of these, so the gateway can count rejections by
reason and tests can expect an exact name. All of them subclass `ValueError`, so code that only
knows "bad input" can catch that.

    ValueError
    +-- FrameError              base of everything below
        +-- MalformedFrame      too short; not well-formed CBOR; outside the CBOR subset or its
        |   |                   limits; trailing bytes after the body; zero device id or seq
        |   +-- NonCanonical    in the subset but not shortest form, or map keys out of order
        +-- Oversize            frame longer than 256 bytes
        +-- UnsupportedVersion  byte 0 is not 0x01
        +-- WrongDirection      an uplink where a downlink is expected, or the reverse
        +-- UnknownType         message code not defined in this version
        +-- TopicMismatch       received on a topic other than the one for its device/direction
        +-- BadMac              MAC does not verify
        +-- BadBody             body is valid CBOR but not the layout of its message type
        +-- Replay              sequence number already used (stateful check, SPEC section 4)
        +-- UnknownKey          no key for this (device id, key id)
        |   +-- UnknownDevice   no such device: the gateway's registry does not know the device
        |   |                   id; a device: a downlink addressed to another device id
        |   +-- RevokedDevice   the gateway: the device is known but its credentials were revoked
        +-- BadDeviceId         device id text is not 8 lowercase hex digits, or is zero

No asserts and no other exception types: decoding untrusted bytes raises only these.

How the device codec raises them: `raise err(_E_TRUNC)` (or `err(code, args)` for a message
with % fields), a number into the catalogue _MESSAGES below, which holds each rejection's error
name and message. Same names, same messages on both runtimes; what differs is the classes:

- CPython (gateway, tools, the strict decoder): the full tree above, real classes in this module
  (made from _TREE when it is imported), importable by name: `from protocol.errors import BadMac`.
- MicroPython (a board): only FrameError and Replay are classes here (the firmware imports both;
  13 classes were 3.6 KB of a 64 KB heap). err() makes the named class when a rejection happens
  (`type(name, (FrameError,), {})`, garbage after the handler), so `type(e).__name__` is still the
  exact SPEC name and `except FrameError` still catches it; on a board every named error derives
  directly from FrameError (nothing there catches MalformedFrame apart from FrameError).
  The first rejection of each name interns that name as a qstr (~11 bytes, once).
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


class FrameError(ValueError):
    """Base class: a frame (or a protocol value) was rejected."""


class Replay(FrameError):
    """Sequence number not greater than the highest accepted and not a stored duplicate."""


# The rest of the tree: "name base docstring" per line, made into classes on CPython only.
# One string constant: on a board it costs ~40 bytes and none of the names becomes a qstr.
_TREE = const(
    "MalformedFrame FrameError Too short, not well-formed CBOR, outside the subset or its limits, trailing bytes.\n"
    "NonCanonical MalformedFrame Within the CBOR subset but not canonical: a longer-than-shortest argument or unsorted keys.\n"
    "Oversize FrameError Longer than the 256-byte frame limit.\n"
    "UnsupportedVersion FrameError Version byte other than 0x01.\n"
    "WrongDirection FrameError Uplink presented to a device, or downlink presented to the gateway.\n"
    "UnknownType FrameError Message code not defined in protocol version 1.\n"
    "TopicMismatch FrameError Frame received on a topic that is not its device's topic for its direction.\n"
    "BadMac FrameError MAC does not match.\n"
    "BadBody FrameError Body is well-formed CBOR but not the layout (or value ranges) of its message type.\n"
    "UnknownKey FrameError No device key known for this (device id, key id).\n"
    "UnknownDevice UnknownKey No such device: not registered, or a downlink for another device.\n"
    "RevokedDevice UnknownKey The device is registered but its credentials were revoked.\n"
    "BadDeviceId FrameError Device id text not 8 lowercase hex digits, or a device id of zero / over 32 bits."
)

# The catalogue of the device codec's rejections: line N is "TAG ErrorName message", raised by
# err(N); each module names the lines it raises as private constants `_E_<TAG> = const(N)`
# (protocol/tests/test_errors.py checks every such constant against its line). Messages with
# % fields take their values from err()'s second argument. Append new lines at the end.
_MESSAGES = const(
    "TRUNC MalformedFrame truncated\n"  # 0
    "NOTBYTES MalformedFrame CBOR input must be bytes\n"
    "TRAILING MalformedFrame trailing bytes after the CBOR item\n"
    "RESERVED MalformedFrame reserved or indefinite length\n"
    "LONGFORM NonCanonical integer or length not in shortest form\n"
    "SIMPLE MalformedFrame float, break or simple value outside the subset\n"  # 5
    "TAG MalformedFrame tags are outside the subset\n"
    "LONGSTR MalformedFrame string longer than 64 bytes\n"
    "DEEP MalformedFrame nested deeper than 4\n"
    "ITEMS MalformedFrame more than 16 items\n"
    "KEYTYPE MalformedFrame map key is not an unsigned integer\n"  # 10
    "DUPKEY MalformedFrame duplicate map key\n"
    "KEYORDER NonCanonical map keys not in ascending order\n"
    "UTF8 MalformedFrame invalid UTF-8 in text string\n"
    "ENC_BIG BadBody integer above 2^64-1\n"
    "ENC_SMALL BadBody integer below -2^64\n"  # 15
    "ENC_BYTES BadBody byte string longer than 64 bytes\n"
    "ENC_UTF8 BadBody text not encodable as UTF-8\n"
    "ENC_TEXT BadBody text longer than 64 bytes\n"
    "ENC_DEEP BadBody nested deeper than 4\n"
    "ENC_ARRAY BadBody array longer than 16 items\n"  # 20
    "ENC_MAP BadBody map longer than 16 pairs\n"
    "ENC_KEY BadBody map key is not an unsigned integer\n"
    "ENC_TYPE BadBody type %s is outside the CBOR subset\n"
    "TYPE UnknownType message type %r\n"
    "LAYOUT BadBody %s body must be an array of %d\n"  # 25
    "RANGE BadBody %s element %d out of range\n"
    "ID_INT BadDeviceId device id must be an integer 1..2^32-1\n"
    "ID_HEX BadDeviceId device id must be 8 lowercase hex digits\n"
    "ID_ZERO BadDeviceId device id 00000000 is reserved\n"
    "NOTFRAME MalformedFrame frame must be bytes\n"  # 30
    "SHORT MalformedFrame frame shorter than 32 bytes\n"
    "LONG Oversize frame longer than 256 bytes\n"
    "VERSION UnsupportedVersion version %d, expected 1\n"
    "DIRECTION WrongDirection expected a %s frame\n"
    "TYPE_HEX UnknownType message type 0x%02x\n"  # 35
    "DEV0 MalformedFrame device id 0\n"
    "SEQ0 MalformedFrame seq 0\n"
    "TOPIC_TYPE TopicMismatch topic must be text or bytes\n"
    "TOPIC_LONG TopicMismatch topic longer than 255 bytes\n"
    "TOPIC_NOT TopicMismatch topic %r is not %r\n"  # 40
    "KEY_ID MalformedFrame key id must be 0..255\n"
    "SEQ MalformedFrame seq must be 1..2^32-1\n"
    "TIME MalformedFrame time must be None or 0..2^32-1\n"
    "TOO_LONG Oversize frame would be longer than 256 bytes\n"
    "KEY UnknownKey frame made with key id %d, not %d\n"  # 45
    "TOPIC TopicMismatch frame for %08x received on another topic\n"
    "MAC BadMac MAC does not verify\n"
    "DEVICE UnknownDevice frame for device %08x, not %08x\n"
)


def err(code, args=None):
    """The exception for catalogue line `code` (its message % `args` when given), to raise."""
    i = 0
    for _ in range(code):
        i = _MESSAGES.index("\n", i) + 1
    tag, name, msg = _MESSAGES[i : _MESSAGES.index("\n", i)].split(" ", 2)
    if args is not None:
        msg = msg % args
    cls = globals().get(name)  # CPython: every class; a board: FrameError and Replay only
    if cls is None:
        cls = type(name, (FrameError,), {})
    return cls(msg)


try:
    import micropython  # noqa: F401 (a board: err() makes the named classes when needed)
except ImportError:  # CPython: the full tree, real classes with their docstrings

    def _cpython_tree():
        names = ["FrameError", "Replay"]
        for line in _TREE.split("\n"):
            name, base, doc = line.split(" ", 2)
            globals()[name] = type(name, (globals()[base],), {"__doc__": doc, "__module__": __name__})
            names.append(name)
        return tuple(names)

    __all__ = _cpython_tree()
