# Runs every test vector through the device codec ON MICROPYTHON (also valid on CPython).
# Usage: micropython -X heapsize=64k protocol/tests/mpy_vectors.py protocol/vectors
# Prints one line per vector: "PASS <file> <id>" or "FAIL <file> <id> <why>", then
# "SUMMARY pass=<n> fail=<n> mem_free_min=<bytes>". Reads the files line by line (64 KB heap).
import gc
import json
import sys
from binascii import hexlify, unhexlify

from protocol import cbor, frame
from protocol.errors import FrameError

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
    got, f = _outcome(lambda: frame.decode(k, v["topic"], data, downlink))
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


def main(folder):
    passed = failed = 0
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
