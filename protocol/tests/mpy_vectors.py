# Runs every test vector through the device codec ON MICROPYTHON (also valid on CPython).
# Usage: micropython -X heapsize=64k protocol/tests/mpy_vectors.py protocol/vectors
# Prints one line per vector: "PASS <file> <id>" or "FAIL <file> <id> <why>", then
# "SUMMARY pass=<n> fail=<n> mem_free_min=<bytes>". Reads the files line by line (64 KB heap).
import gc

gc.collect()  # free this script's parse tree before compiling the codec (64 KB heap)
import json  # noqa: E402
import sys  # noqa: E402
from binascii import hexlify, unhexlify  # noqa: E402

from protocol import cbor, frame  # noqa: E402
from protocol.errors import FrameError  # noqa: E402

_min_free = [1 << 30]


def _note_heap():
    free = gc.mem_free() if hasattr(gc, "mem_free") else 0
    if free < _min_free[0]:
        _min_free[0] = free


def _outcome(fn):
    try:
        return "ok", fn()
    except FrameError as e:
        return type(e).__name__, None
    except Exception as e:  # a crash is a failure of the vector, reported, not hidden
        return "CRASH %s: %s" % (type(e).__name__, e), None


def check_frame(v):
    key = unhexlify(v["device_key"])
    k_up, k_down = frame.derive_keys(key)
    downlink = v["receiver"] == "device"
    k = k_down if downlink else k_up
    data = unhexlify(v["frame"])
    got, f = _outcome(lambda: frame.decode(k, v["topic"], data, downlink, v["key_id"], v["receiver_id"]))
    _note_heap()
    if got != v["expect"]:
        return "expected %s, got %s" % (v["expect"], got)
    if got != "ok":
        return None
    fields = (f.msg_type, f.device_id, f.key_id, f.seq, f.device_time)
    want = (v["type"], v["device_id"], v["key_id"], v["seq"], v["time"])
    if fields != want:
        return "header %r != %r" % (fields, want)
    body = hexlify(cbor.dumps(f.body)).decode()
    if body != v["body"]:
        return "body re-encodes to %s, not %s" % (body, v["body"])
    again = frame.encode(k, v["topic"], f.msg_type, f.device_id, f.key_id, f.seq, f.device_time, f.body)
    if again != data:
        return "frame.encode does not reproduce the frame"
    return None


def check_cbor(v):
    data = unhexlify(v["cbor"])
    got, value = _outcome(lambda: cbor.loads(data))
    if got != v["expect"]:
        return "expected %s, got %s" % (v["expect"], got)
    if got == "ok" and cbor.dumps(value) != data:
        return "does not re-encode to the same bytes"
    return None


def _raises(name, fn):
    got, _ = _outcome(fn)
    return None if got == name else "expected %s, got %s" % (name, got)


# Runtime-specific behaviour the vectors cannot show: bool is not an int on MicroPython, ints
# are arbitrary precision on the Unix port, no hmac module.
SELFTESTS = (
    ("bool-is-not-int", lambda: None if (cbor.dumps(True), cbor.dumps(1), cbor.dumps([False, 0])) == (b"\xf5", b"\x01", b"\x82\xf4\x00") else "bool/int mixed up"),
    ("bool-rejected-as-uint", lambda: _raises("BadBody", lambda: frame.validate_body(frame.UP_ALARM, [True]))),
    ("bool-map-key-rejected", lambda: _raises("BadBody", lambda: cbor.dumps({True: 1}))),
    ("u64-max-round-trip", lambda: None if cbor.loads(cbor.dumps(0xFFFFFFFFFFFFFFFF)) == 0xFFFFFFFFFFFFFFFF else "u64"),
    ("neg-u64-round-trip", lambda: None if cbor.loads(cbor.dumps(-0xFFFFFFFFFFFFFFFF - 1)) == -0xFFFFFFFFFFFFFFFF - 1 else "-2^64"),
    ("above-u64-refused", lambda: _raises("BadBody", lambda: cbor.dumps(0x10000000000000000))),
    ("hmac-rfc4231-case2", lambda: None if hexlify(frame.hmac_sha256(b"Jefe", b"what do ya want for nothing?")).decode()
        == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843" else "hmac"),
    ("parse-device-id", lambda: None if frame.parse_device_id("0000002a") == 42 else "parse"),
    ("parse-device-id-upper", lambda: _raises("BadDeviceId", lambda: frame.parse_device_id("0000002A"))),
    ("invalid-utf8-refused", lambda: _raises("MalformedFrame", lambda: cbor.loads(b"\x63\xed\xa0\x80"))),
)


def main(folder):
    passed = failed = 0
    for name, test in SELFTESTS:
        why = test()
        if why is None:
            passed += 1
            print("PASS selftest %s" % name)
        else:
            failed += 1
            print("FAIL selftest %s %s" % (name, why))
    for name, check in (("frames_valid.txt", check_frame), ("frames_invalid.txt", check_frame), ("cbor.txt", check_cbor)):
        with open(folder + "/" + name) as f:
            for line in f:
                if line.startswith("#") or not line.strip():
                    continue
                v = json.loads(line)
                why = check(v)
                if why is None:
                    passed += 1
                    print("PASS %s %s" % (name, v["id"]))
                else:
                    failed += 1
                    print("FAIL %s %s %s" % (name, v["id"], why))
                v = None
                gc.collect()
    print("SUMMARY pass=%d fail=%d mem_free_min=%d" % (passed, failed, _min_free[0]))


main(sys.argv[1] if len(sys.argv) > 1 else "protocol/vectors")
