"""Fuzzing in `make test`: random and mutated frames; only protocol errors may come out of the
strict decoder and of the device codec (on CPython). The long run is `fengqiao bench fuzz`."""


import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from protocol import frame, fuzz, schema, strict
from protocol.errors import FrameError, MalformedFrame, TopicMismatch
from protocol.tests.vectors import frame_vectors

SEEDS = [(bytes.fromhex(v["frame"]), v["topic"], v["receiver"] == "device", bytes.fromhex(v["device_key"]))
         for v in frame_vectors()]


def _outcome(fn):
    try:
        fn()
        return "ok"
    except FrameError as exc:
        return type(exc).__name__


def _only_frame_errors(data, topic, downlink, key):
    """Only FrameError comes out of any entry point, and the device codec and the strict decoder
    (independent implementations, same check order) give the same outcome for the same bytes."""
    k_up, k_down = frame.derive_keys(key)
    lookup = lambda d, k: key  # noqa: E731
    strict_decode = strict.decode_downlink if downlink else strict.decode_uplink
    device = _outcome(lambda: frame.decode(k_down if downlink else k_up, topic, data, downlink))
    gateway = _outcome(lambda: strict_decode(data, topic, lookup))
    assert device == gateway, (data.hex(), topic, downlink)
    _outcome(lambda: strict.parse_unverified(data, downlink=None))
    _outcome(lambda: frame.peek(data))


@st.composite
def mutated_vector(draw):
    data, topic, downlink, key = draw(st.sampled_from(SEEDS))
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(b)))
        op = draw(st.integers(0, 3))
        if op == 0 and i < len(b):
            b[i] = draw(st.integers(0, 255))
        elif op == 1:
            b[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == 2:
            del b[i : i + draw(st.integers(1, 4))]
        else:
            del b[i:]
    if draw(st.booleans()) and len(b) > 31:  # re-sign so the mutation reaches the body parser
        k_up, k_down = frame.derive_keys(key)
        b = bytearray(frame.sign(k_down if downlink else k_up, topic, b[:-16]))
    return bytes(b), topic, downlink, key


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.binary(max_size=300), st.booleans())
def test_random_bytes_raise_only_frame_errors(data, downlink):
    _only_frame_errors(data, "fq/v1/0000002a/%s" % ("down" if downlink else "up"), downlink, bytes(32))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated_vector())
def test_mutated_vectors_raise_only_frame_errors(case):
    _only_frame_errors(*case)


def test_bench_fuzz_generator_20k_cases_clean():
    # the same generator as `fengqiao bench fuzz`, a short deterministic run
    outcomes = set()
    for data, topic, downlink, _ in fuzz.cases(seed=7, n=20_000):
        outcomes.add(fuzz.run_case(data, topic, downlink))
    # the generator reaches every stage of the decoder, including accepted frames
    assert outcomes >= {"ok", "BadMac", "BadBody", "MalformedFrame", "NonCanonical", "TopicMismatch",
                        "UnknownKey", "UnknownType", "UnsupportedVersion", "WrongDirection", "Oversize"}


@pytest.mark.parametrize("bad", [None, "text", 12, [1, 2]])
def test_non_bytes_frame_is_a_named_error(bad):
    with pytest.raises(MalformedFrame):
        strict.decode_uplink(bad, "fq/v1/0000002a/up", lambda d, k: bytes(32))
    with pytest.raises(MalformedFrame):
        frame.decode(bytes(32), "fq/v1/0000002a/up", bad, downlink=False)


@pytest.mark.parametrize("topic", [None, 42, "fq/v1/0000002a/up\ud800", b"\xff"])
def test_odd_topic_is_a_named_error(topic):
    data = bytes.fromhex(next(v for v in frame_vectors() if v["id"] == "alarm-fire")["frame"])
    with pytest.raises(TopicMismatch):
        strict.decode_uplink(data, topic, lambda d, k: bytes(32))
    with pytest.raises(TopicMismatch):
        frame.decode(bytes(32), topic, data, downlink=False)


@pytest.mark.timeout(120)
def test_micropython_device_codec_fuzz_matches_cpython():
    """Mutated frames through the device codec on the real MicroPython VM (64 KB heap): nothing
    but FrameError, and for every case the same outcome as the strict decoder and as the device
    codec on CPython."""
    from protocol.tests.vectors import VECTORS_DIR
    from tools.testing.micropython import run_micropython

    n = 3000
    proc = run_micropython("protocol/tests/mpy_fuzz.py", heap="64k", args=[VECTORS_DIR, "11", str(n)], timeout_s=100)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "SUMMARY cases=%d crashes=0" % n, lines[-1]
    keys = {v["topic"]: bytes.fromhex(v["device_key"]) for v in frame_vectors() if v["expect"] == "ok"}
    seen = set()
    for line in lines[:-1]:
        _, data_hex, topic, down, outcome = line.split(" ")
        data, downlink, key = bytes.fromhex(data_hex), down == "1", keys[topic]
        k_up, k_down = frame.derive_keys(key)
        strict_decode = strict.decode_downlink if downlink else strict.decode_uplink
        assert _outcome(lambda: strict_decode(data, topic, lambda d, k: key)) == outcome, line
        assert _outcome(lambda: frame.decode(k_down if downlink else k_up, topic, data, downlink)) == outcome, line
        seen.add(outcome)
    assert len(lines) == n + 1
    assert {"ok", "BadMac", "MalformedFrame", "BadBody", "TopicMismatch"} <= seen


_FIELD = (st.integers(-(2**64), 2**64 - 1) | st.sampled_from([0, 1, 3, 4, 5, 255, 256, 65535, 65536, 2**32 - 1, 2**32, -1, -128, -129, 127, 128])
          | st.booleans() | st.none() | st.binary(max_size=11) | st.text(max_size=4)
          | st.dictionaries(st.integers(0, 2**33), st.integers(-1, 2**33) | st.text(max_size=2), max_size=3))


# near-boundary values for each schema letter (protocol/schema.py), so that many bodies are valid
_NEAR = {
    "B": st.integers(-1, 256), "H": st.integers(-1, 65536), "I": st.integers(-1, 2**32), "S": st.integers(0, 2**32),
    "b": st.booleans() | st.integers(0, 1), "r": st.none() | st.integers(-129, 128), "u": st.binary(min_size=3, max_size=11),
    "m": st.dictionaries(st.integers(0, 2**32), st.integers(-1, 2**32), max_size=4),
}


@st.composite
def typed_body(draw):
    code = draw(st.sampled_from([c for c in range(256) if schema.lookup(c)]))
    if draw(st.booleans()):
        letters = schema.lookup(code)[1]
        body = [draw(_NEAR[c] if c in _NEAR else st.integers(-1, int(c) + 1)) for c in letters]
    else:
        body = draw(st.lists(_FIELD, min_size=0, max_size=6))
    return code, body


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(typed_body(), st.integers(1, 2**32 - 1))
def test_body_schemas_agree_between_device_codec_and_strict_decoder(code_body, seq):
    """Random bodies (in and out of range, any CBOR type) signed as frames: both decoders accept
    the same ones, and an accepted frame round-trips through frame.encode."""
    import cbor2

    code, body = code_body
    key = bytes(range(32))
    k_up, k_down = frame.derive_keys(key)
    downlink = bool(code & 0x80)
    topic = frame.topic_for(code, 0x2A)
    unsigned = bytes([1, code, 0, 0, 0, 0x2A, 1]) + seq.to_bytes(4, "big") + bytes(4) + cbor2.dumps(body, canonical=True)
    if len(unsigned) + 16 > 256:
        return
    data = frame.sign(k_down if downlink else k_up, topic, unsigned)
    device = _outcome(lambda: frame.decode(k_down if downlink else k_up, topic, data, downlink))
    strict_decode = strict.decode_downlink if downlink else strict.decode_uplink
    assert device == _outcome(lambda: strict_decode(data, topic, lambda d, k: key))
    event(device)
    assert device in ("ok", "BadBody", "MalformedFrame", "NonCanonical")
    if device == "ok":
        assert frame.encode(k_down if downlink else k_up, topic, code, 0x2A, 1, seq, None, body) == data
