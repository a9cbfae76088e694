"""Every vector in protocol/vectors/ through the device codec (CPython and the real MicroPython
VM) and the strict decoder, each giving exactly the expected result or error name."""

import re

import pytest

from protocol import cbor, frame, gen_vectors, schema, strict
from protocol.errors import FrameError, RevokedDevice, UnknownDevice, UnknownKey
from protocol.tests.vectors import VECTORS_DIR, cbor_vectors, frame_vectors, registry_vectors
from tools.testing.micropython import run_micropython

FRAMES = frame_vectors()
CBOR = cbor_vectors()
REGISTRY = registry_vectors()


def _name(fn):
    try:
        return "ok", fn()
    except FrameError as exc:
        return type(exc).__name__, None


def test_vector_files_are_what_the_generator_writes():
    for name, content in gen_vectors.render().items():
        with open("%s/%s" % (VECTORS_DIR, name)) as f:
            assert f.read() == content, "%s is stale: run python -m protocol.gen_vectors" % name


def test_vectors_cover_every_type_and_error():
    valid_types = {v["type"] for v in FRAMES if v["expect"] == "ok"}
    assert valid_types == {c for c in range(256) if schema.lookup(c)}
    errors = {v["expect"] for v in FRAMES} | {v["expect"] for v in CBOR}
    assert errors == {"ok", "BadMac", "MalformedFrame", "NonCanonical", "Oversize", "UnsupportedVersion",
                      "WrongDirection", "UnknownType", "TopicMismatch", "BadBody", "UnknownKey", "UnknownDevice"}


@pytest.mark.parametrize("v", FRAMES, ids=[v["id"] for v in FRAMES])
def test_frame_vector_device_codec(v):
    k_up, k_down = frame.derive_keys(bytes.fromhex(v["device_key"]))
    downlink = v["receiver"] == "device"
    data = bytes.fromhex(v["frame"])
    got, f = _name(lambda: frame.decode(k_down if downlink else k_up, v["topic"], data, downlink, key_id=v["key_id"],
                                        device_id=v["receiver_id"]))
    assert got == v["expect"], v["note"]
    if got == "ok":
        assert (f.msg_type, f.device_id, f.key_id, f.seq, f.device_time) == (v["type"], v["device_id"], v["key_id"], v["seq"], v["time"])
        assert cbor.dumps(f.body).hex() == v["body"]
        assert f.raw == data
        again = frame.encode(k_down if downlink else k_up, v["topic"], f.msg_type, f.device_id, f.key_id, f.seq,
                             f.device_time, f.body)
        assert again == data


@pytest.mark.parametrize("v", FRAMES, ids=[v["id"] for v in FRAMES])
def test_frame_vector_strict_decoder(v):
    key = bytes.fromhex(v["device_key"])

    def lookup(device_id, key_id):
        if device_id != v["receiver_id"]:
            raise UnknownDevice("no device %08x" % device_id)
        if key_id != v["key_id"]:
            raise UnknownKey("no key %d" % key_id)
        return key

    decode = strict.decode_downlink if v["receiver"] == "device" else strict.decode_uplink
    data = bytes.fromhex(v["frame"])
    got, f = _name(lambda: decode(data, v["topic"], lookup))
    assert got == v["expect"], v["note"]
    if got == "ok":
        assert (f.msg_type, f.device_id, f.key_id, f.seq, f.device_time) == (v["type"], v["device_id"], v["key_id"], v["seq"], v["time"])
        assert f.raw == data and f.topic == v["topic"]
        assert f.name == schema.lookup(f.msg_type)[0]
        assert list(f.fields.values()) == f.body
    # parse_unverified (syntax only, no MAC) agrees on syntax errors and passes authentic frames;
    # a frame whose MAC field is misaligned (cut or extended) may also fail its body syntax
    got_u, _ = _name(lambda: strict.parse_unverified(data, downlink=v["receiver"] == "device"))
    if v["expect"] in ("ok", "BadBody"):
        assert got_u == "ok"
    elif v["expect"] in ("BadMac", "TopicMismatch", "UnknownKey", "UnknownDevice"):
        assert got_u in (("ok", "MalformedFrame") if v["id"] in ("bad-mac-truncated-1", "bad-mac-trailing-after-mac") else ("ok",))
    else:
        assert got_u == v["expect"]


def registry_lookup(registry):
    """The key lookup a gateway makes over registry.txt's `registry` (SPEC section 2 step 2)."""
    devices = {d["device_id"]: d for d in registry}

    def lookup(device_id, key_id):
        d = devices.get(device_id)
        if d is None:
            raise UnknownDevice("device %08x is not registered" % device_id)
        if d["status"] != "active":
            raise RevokedDevice("device %08x is revoked" % device_id)
        keys = dict((k, bytes.fromhex(h)) for k, h in d["keys"])
        if key_id not in keys:
            raise UnknownKey("device %08x has no key %d" % (device_id, key_id))
        return keys[key_id]

    return lookup


@pytest.mark.parametrize("v", REGISTRY, ids=[v["id"] for v in REGISTRY])
def test_registry_vector_strict_decoder(v):
    """The strict decoder over a lookup of the vector's registry. Roles are the pipeline's check
    (after the body), so a RoleMismatch vector decodes here; gateway/tests/test_pipeline.py runs
    every one of these through the real registry and pipeline, roles included."""
    data = bytes.fromhex(v["frame"])
    got, f = _name(lambda: strict.decode_uplink(data, v["topic"], registry_lookup(v["registry"])))
    assert got == ("ok" if v["expect"] == "RoleMismatch" else v["expect"]), v["note"]
    if got == "ok":
        assert (f.msg_type, f.device_id, f.key_id, f.seq) == (v["type"], v["device_id"], v["key_id"], v["seq"])


def test_registry_vectors_cover_their_rules():
    assert {v["expect"] for v in REGISTRY} == {"ok", "BadMac", "UnknownKey", "UnknownDevice", "RevokedDevice",
                                              "RoleMismatch"}
    # every uplink type from each role
    roles = {(v["type"], next(d["role"] for d in v["registry"] if d["device_id"] == v.get("device_id", 0)))
             for v in REGISTRY if v["id"].startswith("role-") and v["expect"] == "ok"}
    assert {t for t, _ in roles} >= {c for c in range(1, 8) if c != 5} and (5, "checkpoint") in roles


@pytest.mark.parametrize("v", CBOR, ids=[v["id"] for v in CBOR])
def test_cbor_vector_both_decoders(v):
    data = bytes.fromhex(v["cbor"])
    got, value = _name(lambda: cbor.loads(data))
    assert got == v["expect"], v["note"]
    if got == "ok":
        assert cbor.dumps(value) == data
    got_strict, value_strict = _name(lambda: strict._decode_body(data))
    assert got_strict == v["expect"], v["note"]
    if got == "ok":
        assert value_strict == value


@pytest.mark.timeout(120)
def test_every_vector_on_micropython():
    proc = run_micropython("protocol/tests/mpy_vectors.py", heap="64k", args=[VECTORS_DIR], timeout_s=100)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    failures = [line for line in lines if line.startswith("FAIL")]
    assert not failures, "\n".join(failures)
    passed = {tuple(line.split()[1:3]) for line in lines if line.startswith("PASS")}
    expected = {("frames_valid.txt", v["id"]) for v in gen_vectors.valid_frames()}
    expected |= {("frames_invalid.txt", v["id"]) for v in gen_vectors.invalid_frames()}
    expected |= {("cbor.txt", v["id"]) for v in CBOR}
    selftests = {p for p in passed if p[0] == "selftest"}
    assert len(selftests) == 10, selftests
    assert passed - selftests == expected
    summary = re.search(r"SUMMARY pass=(\d+) fail=0", proc.stdout)
    assert summary and int(summary.group(1)) == len(expected) + len(selftests)


def test_spec_worked_example_matches_the_vector_and_the_codec():
    import os

    with open(os.path.join(os.path.dirname(VECTORS_DIR), "SPEC.md")) as f:
        spec = f.read()
    example = spec[spec.index("### Worked example"):spec.index("## 3. Message types")]
    values = {}
    for line in example.splitlines():
        if "=" in line:
            name, _, rest = line.strip().partition("=")
            values[name.strip()] = rest.split("(")[0].replace(" ", "")
    key = bytes.fromhex(values["device_key"])
    k_up, k_down = frame.derive_keys(key)
    assert values["K_up"] == k_up.hex() and values["K_down"] == k_down.hex()
    assert values["mqtt_password"] == frame.mqtt_password(key)
    vector = next(v for v in FRAMES if v["id"] == "alarm-fire")
    assert values["frame"] == vector["frame"] and vector["device_key"] == key.hex()
    assert frame.encode(k_up, "fq/v1/0000002a/up", frame.UP_ALARM, 0x2A, 1, 101, 1763780000, [1]).hex() == values["frame"]
