"""Envelopes (SPEC section 10): built from stored events, signed per batch, every field covered."""

import json

import pytest

from gateway import envelope
from gateway.clock import ManualClock
from gateway.events import NewDeviceEvent
from gateway.keys import KeyFileError, SigningKey, load_public_key
from gateway.store import EventStore
from protocol import frame as pframe

DEVICE_KEY = bytes(range(32))
K_UP, _ = pframe.derive_keys(DEVICE_KEY)
T0 = 1_767_225_600


def _alarm(seq, device_id=0x2A, device_time=T0):
    topic = pframe.uplink_topic(device_id)
    data = pframe.encode(K_UP, topic, pframe.UP_ALARM, device_id, 1, seq, device_time, [1])
    return NewDeviceEvent("alarm", device_id, 1, seq, [1], data, topic, device_time or None, "v1-h3")


@pytest.fixture
def events(tmp_path):
    clock = ManualClock(T0 + 2.25)
    store = EventStore(tmp_path / "g.db", clock)
    out = store.append_device_events([_alarm(1), _alarm(2, device_time=0)])
    out.append(store.append_gateway_event("device_offline", {"silent_s": 95, "note": "村口"}, device_id=0x2A,
                                          place_id="v1-h3"))
    store.close()
    return out


def test_build_carries_the_record_and_verifies(events):
    key = SigningKey.generate()
    envs = [envelope.build(e, "tw1") for e in events]
    envelope.sign_batch(envs, key)
    first, second, gw = envs
    assert first["id"] == "tw1:1" and first["frame"] == events[0].frame.hex() and first["skew_s"] == 2
    assert first["verification"] == "verified" and first["body_json"] is None
    assert second["device_time"] is None and second["skew_s"] is None
    assert gw["verification"] == "gateway" and json.loads(gw["body_json"]) == {"silent_s": 95, "note": "村口"}
    assert first["sig"] is None and second["sig"] is None and gw["sig_key"] == key.key_id
    for env in envs:
        parsed = envelope.loads(envelope.dumps(env))
        assert parsed == env
        envelope.check_envelope(parsed)
    envelope.check_signature(gw, key.public)
    envelope.check_device_mac(first, DEVICE_KEY)
    assert envelope.verify_envelopes([envelope.dumps(e) for e in envs], key.public, {0x2A: DEVICE_KEY}).ok


@pytest.mark.parametrize("field,value", [
    ("kind", "checkin"), ("place_id", "v2-h9"), ("received_at_us", 1), ("device_id", 0x2B), ("seq", 9),
    ("topic", "fq/v1/0000002b/up"), ("actor", "p1"), ("prev_hash", "11" * 32), ("hash", "22" * 32),
])
def test_any_changed_field_is_caught(events, field, value):
    key = SigningKey.generate()
    env = envelope.sign(envelope.build(events[0], "tw1"), key)
    env[field] = value
    with pytest.raises(envelope.EnvelopeError):
        envelope.check_envelope(env)
        envelope.check_signature(env, key.public)


def test_changed_frame_byte_and_body_are_caught(events):
    env = envelope.build(events[0], "tw1")
    raw = bytearray(bytes.fromhex(env["frame"]))
    raw[15 + 1] ^= 0x01  # alarm kind 1 -> 0
    env["frame"] = raw.hex()
    with pytest.raises(envelope.BadHash):
        envelope.check_envelope(env)
    gw = envelope.build(events[2], "tw1")
    gw["body_json"] = '{"note":"村口","silent_s":5}'
    with pytest.raises(envelope.BadHash):
        envelope.check_envelope(gw)


def test_rehashed_forgery_fails_the_signature(events):
    key = SigningKey.generate()
    env = envelope.sign(envelope.build(events[2], "tw1"), key)
    env["body_json"] = '{"silent_s":5}'
    env["hash"] = envelope.chain_hash(bytes.fromhex(env["prev_hash"]), envelope.record_of(env)).hex()
    envelope.check_envelope(env)  # self-consistent now ...
    with pytest.raises(envelope.BadSignature):
        envelope.check_signature(env, key.public)  # ... but not what the gateway signed
    with pytest.raises(envelope.BadSignature, match="not by the given key"):
        envelope.check_signature(env, SigningKey.generate().public)


def test_wrong_device_key_is_bad_device_mac(events):
    env = envelope.build(events[0], "tw1")
    with pytest.raises(envelope.BadDeviceMac, match="BadMac"):
        envelope.check_device_mac(env, bytes(32))


@pytest.mark.parametrize("line,match", [
    ("not json", "not JSON"), ("[1]", "not a JSON object"), ('{"v":1}', "missing field"),
])
def test_malformed_lines(line, match):
    with pytest.raises(envelope.MalformedEnvelope, match=match):
        envelope.loads(line)


def test_malformed_field_types(events):
    env = envelope.build(events[0], "tw1")
    for field, value in (("event_id", "1"), ("seq", True), ("hash", "zz" * 32), ("prev_hash", "00"), ("v", 2)):
        bad = dict(env, **{field: value})
        with pytest.raises(envelope.MalformedEnvelope):
            envelope.loads(json.dumps(bad))


def test_frame_header_must_match_fields(events):
    env = envelope.build(events[0], "tw1")
    other = envelope.build(events[1], "tw1")
    env["frame"] = other["frame"]
    with pytest.raises(envelope.InconsistentEnvelope, match="frame header"):
        envelope.check_envelope(env)


def test_render_shows_the_path(events):
    key = SigningKey.generate()
    env = envelope.sign(envelope.build(events[0], "tw1"), key)
    text = envelope.render(env)
    for part in ("tw1:1", "0000002a", "seq 1", "kind=1 (fire)", "fq/v1/0000002a/up", "MAC (key 1)",
                 "skew +2 s", "v1-h3", "2026-01-01 00:00:02.250 UTC", key.key_id):
        assert part in text, part
    gw_text = envelope.render(envelope.build(events[2], "tw1"))
    assert "device_offline" in gw_text and "silent_s" in gw_text and "covered by the next signed" in gw_text


def test_signing_key_file_is_created_0600_and_reloaded(tmp_path):
    path = tmp_path / "keys" / "gw.pem"
    key = SigningKey.load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = SigningKey.load_or_create(path)
    assert again.key_id == key.key_id
    assert load_public_key(key.public_pem()).raw == key.public.raw
    assert load_public_key(key.public.raw.hex()).key_id == key.key_id
    pub = tmp_path / "gw.pub"
    pub.write_text(key.public_pem())
    assert load_public_key(str(pub)).key_id == key.key_id
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="readable by others"):
        SigningKey.load_or_create(path)
    bad = tmp_path / "bad.pem"
    bad.write_text("hello")
    bad.chmod(0o600)
    with pytest.raises(KeyFileError, match="not an unencrypted PEM"):
        SigningKey.load_or_create(bad)


def _spec_example():
    """The example envelope of SPEC section 10.4, joined from the document itself."""
    import os
    import re

    from tools.testing.procs import REPO_ROOT

    with open(os.path.join(REPO_ROOT, "protocol", "SPEC.md"), encoding="utf-8") as f:
        text = f.read()
    part = text[text.index("## 10. Upstream envelope"):]
    start = part.index('    {"v":1')
    block = part[start:part.index("\n\n", start)]
    env_text = "".join(line.strip() for line in block.splitlines())
    hexes = dict(re.findall(r"(record|sig_input)\s+=\s+([0-9a-f\s]+?)(?=\n\s*\n|\n\s+sig_input|\Z)", part[start:]))
    return env_text, {k: "".join(v.split()) for k, v in hexes.items()}


def test_spec_example_verifies_and_matches_the_code():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    env_text, hexes = _spec_example()
    env = envelope.loads(env_text)
    key = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes(32)))
    assert key.public.raw.hex() == "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"
    envelope.check_envelope(env)
    envelope.check_signature(env, key.public)
    envelope.check_device_mac(env, bytes(range(32)))
    assert envelope.record_of(env).hex() == hexes["record"]
    assert envelope.signature_input(env["gateway"], env["event_id"], bytes.fromhex(env["hash"])).hex() == hexes["sig_input"]
    assert envelope.sign(dict(env), key)["sig"] == env["sig"]  # Ed25519 is deterministic


def test_exception_tree_is_exported():
    names = {"MalformedEnvelope", "InconsistentEnvelope", "BadHash", "BadSignature", "BadDeviceMac"}
    assert names <= set(envelope.__all__)
    for name in names:
        cls = getattr(envelope, name)
        assert issubclass(cls, envelope.EnvelopeError) and issubclass(cls, ValueError)
        assert name in envelope.__doc__
    for name in envelope.__all__:
        assert hasattr(envelope, name), name


def test_a_resend_cut_into_other_batches_is_a_duplicate_not_a_fork(events):
    """After an outage the upstream cuts its batches anew: event 1 went unsigned in the batch
    [1, 2, 3] and comes back signed as the last of the batch [1]. That is a redelivery."""
    key = SigningKey.generate()
    first_try = envelope.sign_batch([envelope.build(e, "tw1") for e in events], key)
    resent = envelope.sign(envelope.build(events[0], "tw1"), key)
    assert first_try[0]["sig"] is None and resent["sig"] is not None
    assert envelope.envelope_digest(first_try[0]) == envelope.envelope_digest(resent)
    lines = [envelope.dumps(e) for e in first_try[:1] + [resent] + first_try[1:]]
    report = envelope.verify_envelopes(lines, key.public, {0x2A: DEVICE_KEY})
    assert report.ok, report.problems
    assert report.duplicates == 1
    changed = dict(resent, received_at_us=resent["received_at_us"] + 1)
    assert envelope.envelope_digest(changed) != envelope.envelope_digest(resent)
