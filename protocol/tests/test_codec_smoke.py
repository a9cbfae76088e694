"""Smoke tests of the device codec on CPython: round trips, the HMAC, and a few named rejections."""

import hashlib
import hmac

import pytest

from protocol import cbor, frame
from protocol.errors import (BadBody, BadDeviceId, BadMac, FrameError, MalformedFrame, NonCanonical, TopicMismatch,
                             WrongDirection)

KEY = bytes(range(32))


def test_hmac_matches_stdlib():
    for key in (b"", b"k", bytes(64), bytes(range(100))):
        for msg in (b"", b"abc", bytes(300)):
            assert frame.hmac_sha256(key, msg) == hmac.new(key, msg, hashlib.sha256).digest()


def test_compare_digest():
    assert frame.compare_digest(b"abc", bytearray(b"abc"))
    assert not frame.compare_digest(b"abc", b"abd")
    assert not frame.compare_digest(b"abc", b"ab")


def test_alarm_round_trip_and_size():
    k_up, k_down = frame.derive_keys(KEY)
    topic = frame.uplink_topic(42)
    data = frame.encode(k_up, topic, frame.UP_ALARM, 42, 1, 7, 1700000000, [1])
    assert len(data) == 33
    f = frame.decode(k_up, topic, data, downlink=False)
    assert (f.name, f.body, f.seq, f.device_time, f.device_id, f.key_id) == ("alarm", [1], 7, 1700000000, 42, 1)
    with pytest.raises(BadMac):
        frame.decode(k_down, topic, data, downlink=False)
    with pytest.raises(WrongDirection):
        frame.decode(k_up, topic, data, downlink=True)
    with pytest.raises(TopicMismatch):
        frame.decode(k_up, frame.uplink_topic(43), data, downlink=False)


def test_encode_refuses_invalid_body():
    k_up, _ = frame.derive_keys(KEY)
    with pytest.raises(BadBody):
        frame.encode(k_up, frame.uplink_topic(1), frame.UP_ALARM, 1, 0, 1, 0, [9])
    with pytest.raises(BadBody):
        frame.encode(k_up, frame.uplink_topic(1), frame.UP_CHECKIN, 1, 0, 1, 0, [1, b"12345"])


@pytest.mark.parametrize(
    "data, exc",
    [(b"\x18\x05", NonCanonical), (b"\x01\x00", MalformedFrame), (b"\xf9\x00\x00", MalformedFrame),
     (b"\xa2\x02\x00\x01\x00", NonCanonical), (b"\xa2\x01\x00\x01\x00", MalformedFrame),
     (b"\x62\xed\xa0", MalformedFrame), (b"\x81\x81\x81\x81\x81\x00", MalformedFrame)],
)
def test_cbor_rejections(data, exc):
    with pytest.raises(FrameError) as info:
        cbor.loads(data)
    assert type(info.value) is exc


def test_cbor_round_trip():
    for v in [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, -1, -24, -25, -(2**64),
              b"", "h\u00e9", [1, [2, [3, [4]]]], {3: 1, 1: [None, True, False]}]:
        assert cbor.loads(cbor.dumps(v)) == v


def test_cbor_loads_refuses_non_bytes_and_dumps_refuses_outside_the_subset():
    with pytest.raises(MalformedFrame):
        cbor.loads("81 00")
    for bad in (1.5, 2**64, -(2**64) - 1, {"a": 1}, {True: 1}, {-1: 0}, b"x" * 65, "x" * 65, [0] * 17,
                [[[[[]]]]], object(), "\ud800"):
        with pytest.raises(BadBody):
            cbor.dumps(bad)


def test_device_id_text_and_topics():
    assert frame.device_id_text(42) == "0000002a" and frame.parse_device_id("0000002a") == 42
    assert frame.uplink_topic(0xFFFFFFFF) == "fq/v1/ffffffff/up" and frame.downlink_topic(1) == "fq/v1/00000001/down"
    for bad in ("0000002A", "2a", "00000000", "0000002g", " 0000002a", 42):
        with pytest.raises(BadDeviceId):
            frame.parse_device_id(bad)
    for bad in (0, -1, 2**32, True, "1"):
        with pytest.raises(BadDeviceId):
            frame.device_id_text(bad)


def test_peek_reads_the_header_without_the_key():
    k_up, _ = frame.derive_keys(KEY)
    data = frame.encode(k_up, frame.uplink_topic(7), frame.UP_TAMPER, 7, 3, 9, None, [True])
    h = frame.peek(data)
    assert (h.version, h.msg_type, h.name, h.device_id, h.key_id, h.seq, h.device_time) == (1, 6, "tamper", 7, 3, 9, None)
    with pytest.raises(WrongDirection):
        frame.peek(data, downlink=True)
