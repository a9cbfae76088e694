"""Generate protocol/vectors/*.txt: the test vectors of SPEC.md, valid and invalid.

    .venv/bin/python -m protocol.gen_vectors            # rewrite the files
    .venv/bin/python -m protocol.gen_vectors --check    # exit 1 if the files are out of date

Frames are built here from the SPEC alone, with the standard library (`hmac`, `struct`) and
`cbor2` (canonical mode), not with the device codec or the strict decoder, so that both of those
are checked against an implementation they do not share code with. Everything is fixed (keys,
times, sequence numbers, the date below), so regenerating gives identical bytes; a test checks it.

File format (read by protocol/tests/mpy_vectors.py on MicroPython line by line, to fit a 64 KB
heap): lines starting with `#` are the provenance header; every other line is one JSON object.
"""

import argparse
import hashlib
import hmac
import json
import os
import struct
import sys

import cbor2

GENERATED = "2026-11-22"  # change by hand when the vectors change on purpose
REGISTRY_GENERATED = "2026-12-07"   # registry.txt (issue 13), added later
VECTORS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors")

# TEST KEYS ONLY: derived from public strings, never provisioned onto a real device.
KEY_A = hashlib.sha256(b"fengqiao test vector key A").digest()
KEY_B = hashlib.sha256(b"fengqiao test vector key B").digest()
DEV_A = 0x0000002A
DEV_B = 0x1234ABCD
T0 = 1763780000  # 2025-11-22T02:53:20Z

CODES = {"boot": 0x01, "heartbeat": 0x02, "alarm": 0x03, "alarm_cancel": 0x04, "checkin": 0x05,
         "tamper": 0x06, "battery_low": 0x07, "ack": 0x81, "siren": 0x82, "config": 0x83}


def k_dir(device_key, direction):
    return hmac.new(device_key, b"fengqiao/v1/" + direction.encode(), hashlib.sha256).digest()


def topic_of(device_id, direction):
    return "fq/v1/%08x/%s" % (device_id, direction)


def mac(key, topic, unsigned):
    t = topic.encode()
    return hmac.new(key, bytes([len(t)]) + t + unsigned, hashlib.sha256).digest()[:16]


def build(code, body_bytes, device_id=DEV_A, key_id=1, seq=7, time_s=T0, version=1, device_key=KEY_A,
          sign_topic=None, sign_direction=None):
    """Header + body + MAC. The MAC uses the direction of `code` and its topic unless overridden."""
    direction = "down" if code & 0x80 else "up"
    unsigned = struct.pack(">BBIBII", version, code, device_id, key_id, seq, time_s) + body_bytes
    key = k_dir(device_key, sign_direction or direction)
    return unsigned + mac(key, sign_topic or topic_of(device_id, direction), unsigned)


def enc(value):
    return cbor2.dumps(value, canonical=True)


def frame_vector(vid, expect, code, body, note, receiver=None, topic=None, data=None, receiver_id=None, **kw):
    """One frame vector. `body` is a value (encoded canonically) or raw bytes (used as they are).
    `receiver_id`: the device id whose key the receiver holds (default: the frame's device id)."""
    direction = "down" if code & 0x80 else "up"
    device_id = kw.get("device_id", DEV_A)
    if data is None:
        body_bytes = enc(body)
        data = build(code, body_bytes, **kw)
    v = {
        "id": vid,
        "expect": expect,
        "receiver": receiver or ("device" if direction == "down" else "gateway"),
        "device_key": kw.get("device_key", KEY_A).hex(),
        "key_id": kw.get("key_id", 1),
        "receiver_id": receiver_id or device_id,
        "topic": topic or topic_of(device_id, direction),
        "frame": data.hex(),
        "note": note,
    }
    if expect == "ok":
        t = kw.get("time_s", T0)
        v.update(type=code, device_id=device_id, seq=kw.get("seq", 7), time=t or None, body=body_bytes.hex())
    return v


def valid_frames():
    V = []
    add = V.append
    add(frame_vector("boot-power-on", "ok", 0x01, [0, 10203], "boot after power-on, fw 1.2.3", time_s=0, seq=1))
    add(frame_vector("boot-watchdog", "ok", 0x01, [2, 65535], "watchdog reset, fw 6.55.35 (largest fw)"))
    add(frame_vector("heartbeat-typical", "ok", 0x02, [3712, 86400, 0, -67, 10203], "typical heartbeat"))
    add(frame_vector("heartbeat-worst", "ok", 0x02, [65535, 0xFFFFFFFF, 65535, -128, 65535],
                     "largest heartbeat: 48 bytes", seq=0xFFFFFFFF, time_s=0xFFFFFFFF))
    add(frame_vector("heartbeat-no-rssi", "ok", 0x02, [5000, 12, 3, None, 100], "wired link: rssi null"))
    for kind, name in enumerate(("emergency", "fire", "medical", "intrusion")):
        add(frame_vector("alarm-%s" % name, "ok", 0x03, [kind], "alarm kind %d (%s)" % (kind, name), seq=100 + kind))
    add(frame_vector("alarm-clock-unknown", "ok", 0x03, [0], "device time 0 = unknown", time_s=0))
    add(frame_vector("alarm-device-b", "ok", 0x03, [1], "another device, key id 0", device_id=DEV_B, key_id=0,
                     device_key=KEY_B, seq=1))
    add(frame_vector("alarm-cancel", "ok", 0x04, [103], "cancel the alarm with seq 103", seq=104))
    for n in (4, 7, 10):
        add(frame_vector("checkin-uid%d" % n, "ok", 0x05, [65535, bytes(range(0xA0, 0xA0 + n))],
                         "check-in, %d-byte UID, largest checkpoint id" % n))
    add(frame_vector("checkin-small", "ok", 0x05, [3, b"\x04\x11\x22\x33"], "check-in at checkpoint 3"))
    add(frame_vector("tamper-open", "ok", 0x06, [True], "case opened"))
    add(frame_vector("tamper-closed", "ok", 0x06, [False], "case closed again"))
    add(frame_vector("battery-low", "ok", 0x07, [3300], "battery crossed the low threshold"))
    for stage in range(5):
        add(frame_vector("ack-stage%d" % stage, "ok", 0x81, [103, stage, T0 + 5], "ack of seq 103, stage %d" % stage,
                         seq=10 + stage))
    add(frame_vector("siren-on", "ok", 0x82, [True, 1, 120], "neighbour alarm siren for 120 s"))
    add(frame_vector("siren-off", "ok", 0x82, [False, 0, 0], "siren off"))
    add(frame_vector("config-all", "ok", 0x83, [{1: 300, 2: 60, 3: 800, 4: 3300}], "all four known settings"))
    add(frame_vector("config-empty", "ok", 0x83, [{}], "no settings"))
    add(frame_vector("config-unknown-key", "ok", 0x83, [{1: 60, 99: 5}], "unknown key 99: accepted, ignored by devices"))
    # SPEC section 4: the gateway writes an ack's header time equal to its gateway_time; a receiver
    # takes the time from the body and does not compare the two (ack-stage* differ by 5 s).
    add(frame_vector("ack-gateway-form", "ok", 0x81, [7, 0, T0 + 9], "ack as the gateway builds it: header time = "
                     "gateway_time", seq=20, time_s=T0 + 9))
    add(frame_vector("ack-header-time-0", "ok", 0x81, [7, 0, T0 + 9], "ack with header time 0: accepted, the "
                     "device's clock comes from gateway_time", seq=21, time_s=0))
    # SPEC section 4, key rotation: the downlink seq continues across key ids; a frame with any
    # seq under the receiver's key id is accepted by the codec (the Replay rule is the device's).
    add(frame_vector("ack-new-key-id", "ok", 0x81, [1, 0, T0], "device 1234abcd rotated from key id 0 to 1: an ack "
                     "of its seq 1 under key id 1, the downlink seq continued (1001)",
                     device_id=DEV_B, key_id=1, device_key=KEY_B, seq=1001))
    return V


def invalid_frames():
    V = []
    add = V.append
    alarm = build(0x03, enc([0]))
    ack = build(0x81, enc([7, 0, T0]))
    up, down = topic_of(DEV_A, "up"), topic_of(DEV_A, "down")

    def inv(vid, expect, data, note, receiver="gateway", topic=None, receiver_id=None):
        add(frame_vector(vid, expect, 0x03 if receiver == "gateway" else 0x81, None, note, receiver=receiver,
                         topic=topic or (up if receiver == "gateway" else down), data=data, receiver_id=receiver_id))

    flipped = bytearray(alarm)
    flipped[-1] ^= 0x01
    inv("bad-mac-bit", "BadMac", bytes(flipped), "last MAC bit flipped")
    changed = bytearray(alarm)
    changed[10] ^= 0x01
    inv("bad-mac-header-changed", "BadMac", bytes(changed), "seq changed after signing")
    inv("bad-mac-wrong-key", "BadMac", build(0x03, enc([0]), device_key=KEY_B), "signed with another device's key")
    inv("bad-mac-reflected", "BadMac", build(0x03, enc([0]), sign_direction="down"),
        "uplink signed with K_down (a reflected direction key)")
    inv("bad-mac-other-topic", "BadMac", build(0x03, enc([0]), sign_topic=topic_of(DEV_B, "up")),
        "MAC computed over another topic, received on its own topic")
    inv("bad-mac-truncated-1", "BadMac", alarm[:-1], "last byte cut: the MAC field is then misaligned")
    inv("bad-mac-trailing-after-mac", "BadMac", alarm + b"\x00", "a byte appended after the MAC")
    inv("truncated-31", "MalformedFrame", alarm[:31], "31 bytes: below the 32-byte minimum")
    inv("empty", "MalformedFrame", b"", "zero bytes")
    inv("truncated-body", "MalformedFrame", build(0x05, bytes.fromhex("820c47010203")),
        "body CBOR cut inside the UID (MAC valid)")
    inv("trailing-bytes-in-body", "MalformedFrame", build(0x03, enc([0]) + b"\x00"),
        "an extra CBOR item after the body array (MAC valid)")
    inv("version-0", "UnsupportedVersion", build(0x03, enc([0]), version=0), "version byte 0")
    inv("version-2", "UnsupportedVersion", build(0x03, enc([0]), version=2), "version byte 2")
    inv("non-shortest-int", "NonCanonical", build(0x03, bytes.fromhex("811801")),
        "alarm kind 1 written as 0x18 0x01")
    inv("non-shortest-array", "NonCanonical", build(0x03, bytes.fromhex("980101")), "array length 1 written as 0x98 0x01")
    inv("non-shortest-uint32", "NonCanonical", build(0x04, bytes.fromhex("811a0000ffff")),
        "alarm_seq 65535 written with 4 bytes")
    inv("config-keys-descending", "NonCanonical", build(0x83, bytes.fromhex("81a2041901f4011901f4")),
        "map keys 4 then 1", receiver="device")
    inv("config-duplicate-key", "MalformedFrame", build(0x83, bytes.fromhex("81a2011901f4011901f4")),
        "map key 1 twice", receiver="device")
    inv("float-in-body", "MalformedFrame", build(0x07, bytes.fromhex("81f9423c")), "battery as a half float")
    inv("tag-in-body", "MalformedFrame", build(0x07, bytes.fromhex("81c24101")), "battery as a tagged bignum")
    inv("indefinite-array", "MalformedFrame", build(0x03, bytes.fromhex("9f00ff")), "indefinite-length array")
    inv("undefined-in-body", "MalformedFrame", build(0x02, bytes.fromhex("85190e7f0000f71901")),
        "rssi as undefined (0xf7)")
    pad = struct.pack(">BBIBII", 1, 0x83, DEV_A, 1, 7, T0) + bytes(257 - 15 - 16) + bytes(16)
    inv("oversize-257", "Oversize", pad, "257 bytes (valid header, zero padding)", receiver="device")
    inv("config-17-pairs", "MalformedFrame",
        build(0x83, bytes.fromhex("81b1") + b"".join(bytes([k]) + bytes.fromhex("1a ffffffff") for k in range(17))),
        "a config map of 17 pairs (limit 16)", receiver="device")
    inv("wrong-topic-other-device", "TopicMismatch", alarm, "received on another device's uplink topic",
        topic=topic_of(DEV_B, "up"))
    inv("wrong-topic-downlink", "TopicMismatch", alarm, "uplink received on the device's own downlink topic",
        topic=down)
    inv("wrong-topic-device", "TopicMismatch", ack, "downlink received on another device's downlink topic",
        receiver="device", topic=topic_of(DEV_B, "down"))
    inv("uplink-as-downlink", "WrongDirection", alarm, "an uplink presented to a device (as a downlink)",
        receiver="device", topic=up)
    inv("downlink-as-uplink", "WrongDirection", ack, "a downlink presented to the gateway (as an uplink)",
        receiver="gateway", topic=down)
    inv("unknown-type-up", "UnknownType", build(0x08, enc([0])), "uplink code 0x08")
    inv("unknown-type-up-0", "UnknownType", build(0x00, enc([0])), "uplink code 0x00")
    inv("unknown-type-down", "UnknownType", build(0x84, enc([0])), "downlink code 0x84", receiver="device")
    inv("unknown-key-id", "UnknownKey", build(0x03, enc([0]), key_id=2),
        "made with key id 2 (receiver has only key id 1)")
    inv("unknown-key-id-down", "UnknownKey", build(0x81, enc([7, 0, T0]), key_id=0),
        "downlink made with key id 0 (device has key id 1)", receiver="device")
    # SPEC section 2 step 2: a device compares the addressee with its own device id (before the
    # topic and the MAC), the gateway finds no key for a device it does not know.
    inv("downlink-other-device", "UnknownDevice", build(0x81, enc([7, 0, T0]), device_id=DEV_B),
        "an ack for device 1234abcd on its own topic, MAC by device 0000002a's key, received by device 0000002a",
        receiver="device", topic=topic_of(DEV_B, "down"), receiver_id=DEV_A)
    inv("downlink-other-device-own-topic", "UnknownDevice", build(0x81, enc([7, 0, T0]), device_id=DEV_B),
        "an ack for device 1234abcd received on device 0000002a's topic: the addressee is checked before the topic",
        receiver="device", topic=down, receiver_id=DEV_A)
    inv("uplink-unknown-device", "UnknownDevice", build(0x03, enc([0]), device_id=DEV_B),
        "an alarm from device 1234abcd, which the gateway does not know (it holds only 0000002a)",
        topic=topic_of(DEV_B, "up"), receiver_id=DEV_A)
    inv("zero-device-id", "MalformedFrame", build(0x03, enc([0]), device_id=0), "device id 0")
    inv("zero-seq", "MalformedFrame", build(0x03, enc([0]), seq=0), "seq 0")
    for vid, code, body, note in (
        ("bad-body-alarm-kind", 0x03, [4], "alarm kind 4 undefined"),
        ("bad-body-alarm-len", 0x03, [0, 1], "alarm body with 2 elements"),
        ("bad-body-not-array", 0x03, 0, "body is an integer, not an array"),
        ("bad-body-checkin-uid5", 0x05, [1, b"\x01\x02\x03\x04\x05"], "UID of 5 bytes"),
        ("bad-body-checkin-uid-text", 0x05, [1, "abcd"], "UID as text"),
        ("bad-body-checkpoint-big", 0x05, [65536, b"\x01\x02\x03\x04"], "checkpoint id 65536"),
        ("bad-body-heartbeat-short", 0x02, [3700, 1, 0, -60], "heartbeat with 4 elements"),
        ("bad-body-rssi-range", 0x02, [3700, 1, 0, -129, 1], "rssi -129"),
        ("bad-body-tamper-int", 0x06, [1], "tamper flag as integer 1"),
        ("bad-body-cancel-zero", 0x04, [0], "alarm_seq 0"),
        ("bad-body-negative-mv", 0x07, [-1], "battery -1 mV"),
        ("bad-body-boot-fw", 0x01, [0, 65536], "fw 65536"),
        ("bad-body-ack-stage", 0x81, [7, 5, T0], "ack stage 5 undefined"),
        ("bad-body-siren-pattern", 0x82, [True, 4, 10], "siren pattern 4 undefined"),
        ("bad-body-config-text", 0x83, [{1: "60"}], "config value as text"),
        ("bad-body-config-not-map", 0x83, [[1, 60]], "config settings as an array"),
    ):
        inv(vid, "BadBody", build(code, enc(body)), note, receiver="device" if code & 0x80 else "gateway")
    return V


# The gateway's registry for registry.txt: the rules of SPEC that depend on what the gateway holds
# about a device, not on the frame alone (section 2 step 2: unknown / revoked device, key ids;
# section 4: key rotation; section 3: roles). Keys are listed oldest first, as the registry issues
# them (each rotation: the previous key id + 1); the last one is the current key id.
KEY_A2 = hashlib.sha256(b"fengqiao test vector key A, rotated").digest()
KEY_C = hashlib.sha256(b"fengqiao test vector key C").digest()
KEY_C2 = hashlib.sha256(b"fengqiao test vector key C, rotated").digest()
DEV_C = 0x0000BEEF
REGISTRY = [
    {"device_id": DEV_A, "role": "alarm_button", "status": "active", "keys": [[1, KEY_A.hex()], [2, KEY_A2.hex()]]},
    {"device_id": DEV_B, "role": "checkpoint", "status": "active", "keys": [[0, KEY_B.hex()]]},
    {"device_id": DEV_C, "role": "alarm_button", "status": "revoked", "keys": [[1, KEY_C.hex()], [2, KEY_C2.hex()]]},
]
# SPEC section 3 "Roles": what each role sends (a test checks gateway/pipeline.py ROLE_TYPES against it)
ROLE_SENDS = {"alarm_button": ("boot", "heartbeat", "alarm", "alarm_cancel", "tamper", "battery_low"),
              "checkpoint": ("boot", "heartbeat", "checkin", "tamper", "battery_low")}
SAMPLE_BODIES = {"boot": [0, 10203], "heartbeat": [3712, 86400, 0, -67, 10203], "alarm": [0], "alarm_cancel": [5],
                 "checkin": [3, b"\x04\x11\x22\x33"], "tamper": [True], "battery_low": [3300]}


def registry_vectors():
    """Uplinks judged against REGISTRY: the expected outcome is "ok" (stored) or the error name."""
    V = []

    def add(vid, expect, code, body, note, **kw):
        v = frame_vector(vid, "ok" if expect == "RoleMismatch" else expect, code, body, note, **kw)
        v["expect"] = expect   # a RoleMismatch frame is authentic: its header and body are given too
        del v["receiver_id"]   # the receiver is the gateway holding REGISTRY, not one key
        v["registry"] = REGISTRY
        V.append(v)

    alarm, cancel = CODES["alarm"], CODES["alarm_cancel"]
    # SPEC section 4, key rotation: every key id of an active device stays valid for uplinks, each
    # in its own number space (a frame still in an outbox, or queued at the broker, under the old one)
    add("rotation-old-key-id", "ok", alarm, [0], "device 0000002a rotated from key id 1 to 2: an alarm still "
        "signed with key id 1 (resent from its outbox) is stored", key_id=1, seq=250)
    add("rotation-current-key-id", "ok", alarm, [0], "the same device under its current key id 2, a number "
        "space of its own (seq 1 again is not a replay of key id 1's seq 1)", key_id=2, device_key=KEY_A2, seq=1)
    add("rotation-old-key-id-new-key", "BadMac", alarm, [0], "key id 1 in the header but MAC made with key id 2's "
        "key: key ids are not interchangeable", key_id=1, device_key=KEY_A2, seq=251)
    add("rotation-key-id-never-issued", "UnknownKey", alarm, [0], "key id 3: the registry has issued only 1 and 2",
        key_id=3, device_key=KEY_A2, seq=2)
    # SPEC section 2 step 2: unknown and revoked devices (subclasses of UnknownKey), before the MAC
    add("unregistered-device", "UnknownDevice", alarm, [0], "device 0badcafe is not in the registry",
        device_id=0x0BADCAFE, key_id=1, seq=1)
    add("revoked-device-current-key", "RevokedDevice", alarm, [0], "device 0000beef is revoked: its current key "
        "id 2 no longer verifies", device_id=DEV_C, key_id=2, device_key=KEY_C2, seq=9)
    add("revoked-device-old-key", "RevokedDevice", alarm, [0], "revocation ends every key id, the old one too",
        device_id=DEV_C, key_id=1, device_key=KEY_C, seq=9)
    # SPEC section 3 "Roles": every uplink type from each role
    for dev, key, key_id, role in ((DEV_A, KEY_A2, 2, "alarm_button"), (DEV_B, KEY_B, 0, "checkpoint")):
        for seq, name in enumerate(("boot", "heartbeat", "alarm", "alarm_cancel", "checkin", "tamper",
                                    "battery_low"), 10):
            ok = name in ROLE_SENDS[role]
            add("role-%s-from-%s" % (name.replace("_", "-"), role.replace("_", "-")), "ok" if ok else "RoleMismatch", CODES[name],
                SAMPLE_BODIES[name], "%s from a device whose role is %s: %s" % (
                    name, role, "stored" if ok else "authentic but refused, not stored, not acknowledged"),
                device_id=dev, key_id=key_id, device_key=key, seq=seq)
    return V


def cbor_vectors():
    """Body-level vectors: one CBOR item each, for cbor.loads and the strict scan."""
    ok = [0, 23, 24, 255, 256, 65535, 65536, 0xFFFFFFFF, 0x100000000, 2**64 - 1, -1, -24, -25, -256, -257,
          -(2**64), b"", bytes(64), "", "a", "\u00fc\u6c34\U0001f600", "x" * 64, [], list(range(16)), {},
          {0: 0, 23: 1, 24: 2, 255: 3, 256: 4, 2**64 - 1: 5}, [[[[]]]], [[[{1: None}]]], [True, False, None]]
    V = [{"id": "ok-%d" % i, "cbor": enc(v).hex(), "expect": "ok", "note": repr(v)[:60]} for i, v in enumerate(ok)]
    bad = [
        ("", "MalformedFrame", "empty"),
        ("1801", "NonCanonical", "1 with a 1-byte argument"),
        ("190017", "NonCanonical", "23 with a 2-byte argument"),
        ("1900ff", "NonCanonical", "255 with a 2-byte argument"),
        ("1a0000ffff", "NonCanonical", "65535 with a 4-byte argument"),
        ("1b00000000ffffffff", "NonCanonical", "2^32-1 with an 8-byte argument"),
        ("3800", "NonCanonical", "-1 with a 1-byte argument"),
        ("5801ff", "NonCanonical", "byte string length 1 in 1 byte"),
        ("780161", "NonCanonical", "text length 1 in 1 byte"),
        ("9800", "NonCanonical", "empty array, length in 1 byte"),
        ("b800", "NonCanonical", "empty map, length in 1 byte"),
        ("a2020001 00", "NonCanonical", "map keys 2, 1"),
        ("a2010001 00", "MalformedFrame", "duplicate map key 1"),
        ("a1180100", "NonCanonical", "map key 1 with a 1-byte argument"),
        ("a1610000", "MalformedFrame", "text map key"),
        ("a12000", "MalformedFrame", "negative map key"),
        ("0000", "MalformedFrame", "trailing byte"),
        ("18", "MalformedFrame", "argument missing"),
        ("19ff", "MalformedFrame", "argument truncated"),
        ("43 0102", "MalformedFrame", "byte string truncated"),
        ("82 01", "MalformedFrame", "array truncated"),
        ("a1 01", "MalformedFrame", "map value missing"),
        ("1c", "MalformedFrame", "reserved additional info 28"),
        ("1f", "MalformedFrame", "additional info 31 on a uint"),
        ("5f4101ff", "MalformedFrame", "indefinite byte string"),
        ("7f6161ff", "MalformedFrame", "indefinite text string"),
        ("9fff", "MalformedFrame", "indefinite array"),
        ("bfff", "MalformedFrame", "indefinite map"),
        ("ff", "MalformedFrame", "lone break"),
        ("f7", "MalformedFrame", "undefined"),
        ("f0", "MalformedFrame", "simple value 16"),
        ("f818", "MalformedFrame", "simple value 24 (1-byte form)"),
        ("f93c00", "MalformedFrame", "half float 1.0"),
        ("fa3f800000", "MalformedFrame", "single float 1.0"),
        ("fb3ff0000000000000", "MalformedFrame", "double float 1.0"),
        ("f90000", "MalformedFrame", "half float 0.0 (not NonCanonical: floats are outside the subset)"),
        ("c1 00", "MalformedFrame", "tag 1 (epoch time)"),
        ("c249 010000000000000000", "MalformedFrame", "tag 2 bignum 2^64"),
        ("d8 1c 81 d8 1d 00", "MalformedFrame", "shared-reference tags (would make a cycle)"),
        ("62 c328", "MalformedFrame", "invalid UTF-8 (bad continuation)"),
        ("62 c081", "MalformedFrame", "overlong UTF-8"),
        ("63 eda080", "MalformedFrame", "UTF-8 surrogate U+D800"),
        ("64 f4908080", "MalformedFrame", "UTF-8 above U+10FFFF"),
        ("61 80", "MalformedFrame", "lone UTF-8 continuation byte"),
        ("62 e282", "MalformedFrame", "UTF-8 sequence cut at the string end"),
        ("5841" + "00" * 65, "MalformedFrame", "byte string of 65 bytes"),
        ("7841" + "61" * 65, "MalformedFrame", "text of 65 bytes"),
        ("91" + "00" * 17, "MalformedFrame", "array of 17 items"),
        ("b1" + "".join("%02x00" % k for k in range(17)), "MalformedFrame", "map of 17 pairs"),
        ("8181818180", "MalformedFrame", "containers nested 5 deep"),
        ("818181a100 80", "MalformedFrame", "map at level 4 holding an array at level 5"),
        ("1a0000ff", "MalformedFrame", "4-byte argument cut"),
        # SPEC section 5: a map key's major type is checked at its initial byte, before its argument
        ("a1380000", "MalformedFrame", "negative map key with a non-shortest argument: the key type comes first"),
        ("a17801610000", "MalformedFrame", "text map key with a non-shortest length: the key type comes first"),
        ("a1f9000000", "MalformedFrame", "half-float map key"),
        ("a1c10000", "MalformedFrame", "tagged map key"),
        ("a11c00", "MalformedFrame", "uint map key with reserved additional info 28"),
        ("a20100180000", "NonCanonical", "map key 0 with a 1-byte argument after key 1: shortest form before order"),
    ]
    V += [{"id": "bad-%d" % i, "cbor": h.replace(" ", ""), "expect": e, "note": n} for i, (h, e, n) in enumerate(bad)]
    return V


HEADER = """# Fengqiao protocol v1 test vectors: {what}
# Generator: protocol/gen_vectors.py (frames built from SPEC.md with Python's hmac/struct and
#   cbor2 canonical encoding; independent of protocol/frame.py and protocol/strict.py)
# Generated: {date}. Deterministic: fixed keys, times and sequence numbers.
# Keys: TEST KEYS ONLY (SHA-256 of public strings), never used on a real device.
# Format: lines starting with '#' are comments; every other line is one JSON object.
{fields}"""

FRAME_FIELDS = """# Fields: id; expect ("ok" or the exact protocol.errors name); receiver ("gateway": decode as an
#   uplink with K_up; "device": decode as a downlink with K_down); device_key (hex, 32 bytes);
#   key_id; topic (the topic the frame was received on); frame (hex); note. When expect is "ok":
#   type, device_id, seq, time (null = 0 on the wire), body (hex of the exact body bytes).
#   receiver_id and key_id: the one (device id, key id) whose key the receiver holds. The device
#   codec gets the direction key, receiver_id and key_id (a frame for another device id is
#   UnknownDevice, another key id UnknownKey, SPEC section 2 step 2); the strict decoder gets a
#   key lookup that raises UnknownDevice for any other device id, UnknownKey for any other key
#   id, and returns device_key otherwise.
"""
REGISTRY_FIELDS = """# Fields: as in frames_valid.txt (all uplinks, receiver "gateway"), without receiver_id;
#   device_key is the key the frame was signed with; and
#   registry: the devices the gateway holds: device_id, role, status ("active" / "revoked") and keys
#   ([key_id, hex key], oldest first; the last is the current one). expect: "ok" (stored), or the
#   error name; type, device_id, seq, time and body are given for the authentic frames (expect "ok"
#   or "RoleMismatch"). Rules that need the registry, not one key: unknown / revoked device and key ids
#   (SPEC section 2 step 2), every key id valid after a rotation (section 4), roles (section 3).
#   The gateway checks these (its registry and pipeline, gateway/tests/test_pipeline.py; the strict
#   decoder with a lookup over `registry` in protocol/tests); a device codec has no registry.
"""
CBOR_FIELDS = """# Fields: id; cbor (hex of one body); expect ("ok" or the exact error name); note.
#   An "ok" item must decode and re-encode to the same bytes.
"""


def render():
    """{file name: text} of every vector file."""
    def text(what, fields, vectors, date=GENERATED):
        lines = [HEADER.format(what=what, date=date, fields=fields).rstrip("\n")]
        lines += [json.dumps(v, sort_keys=True) for v in vectors]
        return "\n".join(lines) + "\n"

    return {
        "frames_valid.txt": text("valid frames of every type, both directions", FRAME_FIELDS, valid_frames()),
        "frames_invalid.txt": text("invalid frames, each with the exact error", FRAME_FIELDS, invalid_frames()),
        "cbor.txt": text("CBOR subset bodies, valid and invalid", CBOR_FIELDS, cbor_vectors()),
        "registry.txt": text("uplinks judged against the gateway's registry", REGISTRY_FIELDS, registry_vectors(),
                             REGISTRY_GENERATED),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the files differ from what would be generated")
    args = parser.parse_args(argv)
    stale = []
    for name, content in render().items():
        path = os.path.join(VECTORS_DIR, name)
        old = open(path).read() if os.path.exists(path) else None
        if old != content:
            stale.append(name)
            if not args.check:
                with open(path, "w") as f:
                    f.write(content)
    if args.check and stale:
        print("out of date: %s (run python -m protocol.gen_vectors)" % ", ".join(stale), file=sys.stderr)
        return 1
    print("%s: %s" % ("stale" if args.check else "written", ", ".join(stale) or "all up to date"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
