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
        +-- BadDeviceId         device id text is not 8 lowercase hex digits, or is zero

No asserts and no other exception types: decoding untrusted bytes raises only these.
"""

__all__ = (
    "FrameError",
    "MalformedFrame",
    "NonCanonical",
    "Oversize",
    "UnsupportedVersion",
    "WrongDirection",
    "UnknownType",
    "TopicMismatch",
    "BadMac",
    "BadBody",
    "Replay",
    "UnknownKey",
    "BadDeviceId",
)


class FrameError(ValueError):
    """Base class: a frame (or a protocol value) was rejected."""


class MalformedFrame(FrameError):
    """Too short, not well-formed CBOR, outside the subset or its limits, trailing bytes."""


class NonCanonical(MalformedFrame):
    """Within the CBOR subset but not canonical: a longer-than-shortest argument or unsorted keys."""


class Oversize(FrameError):
    """Longer than the 256-byte frame limit."""


class UnsupportedVersion(FrameError):
    """Version byte other than 0x01."""


class WrongDirection(FrameError):
    """Uplink presented to a device, or downlink presented to the gateway."""


class UnknownType(FrameError):
    """Message code not defined in protocol version 1."""


class TopicMismatch(FrameError):
    """Frame received on a topic that is not its device's topic for its direction."""


class BadMac(FrameError):
    """MAC does not match."""


class BadBody(FrameError):
    """Body is well-formed CBOR but not the layout (or value ranges) of its message type."""


class Replay(FrameError):
    """Sequence number not greater than the highest accepted and not a stored duplicate."""


class UnknownKey(FrameError):
    """No device key known for this (device id, key id)."""


class BadDeviceId(FrameError):
    """Device id text not 8 lowercase hex digits, or a device id of zero / over 32 bits."""
