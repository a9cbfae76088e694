"""protocol.cbor (the device codec) against cbor2 both ways, and against the strict decoder's own
subset scan on arbitrary bytes, with hypothesis."""

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import cbor, strict
from protocol.errors import FrameError

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.integers(-300, 300)
    | st.binary(max_size=64)
    | st.text(max_size=16).filter(lambda s: len(s.encode()) <= 64)
)


def _level(depth):
    """Values whose containers nest at most 4 deep (the top-level item is level `depth`)."""
    if depth > 4:
        return _leaves
    inner = _level(depth + 1)
    return _leaves | st.lists(inner, max_size=16) | st.dictionaries(st.integers(0, 2**64 - 1), inner, max_size=16)


values = _level(1)


def typed(v):
    """A comparable form that keeps bool apart from int (True == 1 in Python)."""
    if isinstance(v, list):
        return ("list", [typed(x) for x in v])
    if isinstance(v, dict):
        return ("dict", sorted((k, typed(x)) for k, x in v.items()))
    return (type(v).__name__, v)


@SETTINGS
@given(values)
def test_ours_dumps_equals_cbor2_canonical_and_cbor2_reads_it(v):
    ours = cbor.dumps(v)
    assert ours == cbor2.dumps(v, canonical=True)
    assert typed(cbor2.loads(ours)) == typed(v)


@SETTINGS
@given(values)
def test_ours_loads_what_cbor2_canonical_writes(v):
    assert typed(cbor.loads(cbor2.dumps(v, canonical=True))) == typed(v)


def _outcome(fn, data):
    try:
        return "ok", typed(fn(data))
    except FrameError as exc:
        return type(exc).__name__, None


@st.composite
def mutated(draw):
    b = bytearray(cbor2.dumps(draw(values), canonical=True))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(b)))
        op = draw(st.integers(0, 2))
        if op == 0 and i < len(b):
            b[i] = draw(st.integers(0, 255))
        elif op == 1:
            b[i:i] = bytes([draw(st.integers(0, 255))])
        else:
            del b[i : i + 1]
    return bytes(b)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.binary(max_size=40) | mutated())
def test_device_codec_and_strict_scan_agree_on_any_bytes(data):
    # same error name (first fault in byte order) or the same value; nothing but FrameError
    assert _outcome(cbor.loads, data) == _outcome(strict._decode_body, data)
