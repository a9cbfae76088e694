"""The verify pipeline over values: every rejection named, duplicates vs replays, gaps, skew, acks."""

import pytest

from gateway.clock import ManualClock
from gateway.pipeline import (DUPLICATE, NEW, REJECTED, WINDOW, DownlinkSigner, Incoming, SeqState, SeqWindow,
                              TokenBuckets, process_batch)
from gateway.registry import Registry
from gateway.store import EventStore
from protocol import frame, strict

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
DEV, DEV2, REVOKED = 0x2A, 0x2B, 0x2C
NOW = 1_767_225_600


def uplink(seq, device_id=DEV, key=KEY, msg_type=frame.UP_ALARM, body=(0,), topic=None, t=NOW - 2):
    k_up, _ = frame.derive_keys(key)
    topic = topic or frame.uplink_topic(device_id)
    real_topic = frame.uplink_topic(device_id)
    data = frame.encode(k_up, real_topic, msg_type, device_id, 1, seq, t, list(body))
    if topic != real_topic:  # re-MAC for the topic it is published on (a frame for DEV sent on DEV2's topic)
        data = frame.sign(k_up, topic, data[:-16])
    return Incoming(topic, data)


@pytest.fixture
def env(tmp_path):
    clock = ManualClock(NOW)
    reg = Registry(tmp_path / "g.db", tmp_path / "master.key", clock)
    reg.add_place("c", "county", "C")
    reg.add_device(DEV, "alarm_button", "c", key=KEY)
    reg.add_device(DEV2, "alarm_button", None, key=OTHER_KEY)
    reg.add_device(REVOKED, "alarm_button", None, key=KEY)
    reg.revoke_device(REVOKED)
    store = EventStore(tmp_path / "g.db", clock)
    yield reg, store
    store.close()
    reg.close()


def run(env, items, seqs=None):
    reg, store = env
    seqs = seqs or SeqState(store.seq_windows())
    outs = process_batch(items, reg.device_key, lambda d: reg.device(d).place_id, seqs,
                         lambda d, k, s: store.find_device_event(d, k, s) is not None, NOW)
    store.append_device_events([o.new for o in outs if o.status == NEW])
    return outs


def test_valid_frames_become_events_with_place_gap_and_skew(env):
    outs = run(env, [uplink(1), uplink(5, t=NOW + 30), uplink(1, device_id=DEV2, key=OTHER_KEY, t=0)])
    assert [o.status for o in outs] == [NEW, NEW, NEW]
    assert outs[0].new.place_id == "c" and outs[0].new.kind == "alarm" and outs[0].new.body == [0]
    assert outs[1].gap == 3 and outs[1].skew_s == 30
    assert outs[2].skew_s is None and outs[2].new.device_time is None
    assert env[1].count() == 3


def test_each_rejection_has_its_reason(env):
    good = uplink(1)
    forged = Incoming(good.topic, good.payload[:-1] + bytes([good.payload[-1] ^ 1]))
    wrong_key = uplink(2, key=OTHER_KEY)
    k_up, _ = frame.derive_keys(KEY)
    wrong_topic = uplink(3, topic=frame.uplink_topic(DEV2))  # DEV's frame on DEV2's topic
    unknown = uplink(1, device_id=0x99)
    revoked = uplink(1, device_id=REVOKED)
    short = Incoming(good.topic, b"\x01\x03" + bytes(20))
    oversize = Incoming(good.topic, b"\x01" * 300)
    bad_version = Incoming(good.topic, b"\x02" + good.payload[1:])
    downlink = Incoming(good.topic, bytes([1, 0x81]) + good.payload[2:])
    unknown_type = Incoming(good.topic, bytes([1, 0x09]) + good.payload[2:])
    # alarm body [0] encoded with a 1-byte argument: canonical scanners must refuse it
    unsigned = good.payload[:15] + b"\x81\x18\x00"
    non_canonical = Incoming(good.topic, frame.sign(k_up, good.topic, unsigned))
    bad_body = Incoming(good.topic, frame.sign(k_up, good.topic, good.payload[:15] + b"\x81\x09"))
    trailing = Incoming(good.topic, frame.sign(k_up, good.topic, good.payload[:15] + b"\x81\x00\x00"))
    outs = run(env, [forged, wrong_key, wrong_topic, unknown, revoked, short, oversize, bad_version, downlink,
                     unknown_type, non_canonical, bad_body, trailing])
    assert [o.reason for o in outs] == [
        "BadMac", "BadMac", "TopicMismatch", "UnknownDevice", "RevokedDevice", "MalformedFrame", "Oversize",
        "UnsupportedVersion", "WrongDirection", "UnknownType", "NonCanonical", "BadBody", "MalformedFrame"]
    assert all(o.status == REJECTED for o in outs)
    assert env[1].count() == 0


def test_a_role_mismatch_is_named_not_stored_and_roles_come_from_the_registry(env):
    """SPEC section 3, roles: a check-in from an alarm button (or an alarm from a check-in point) is
    authentic but refused: RoleMismatch, before the sequence rule, so it takes no seq."""
    reg, store = env
    reg.add_device(0x31, "checkpoint", None, key=KEY)
    checkin = dict(msg_type=frame.UP_CHECKIN, body=(7, b"\x01\x02\x03\x04"))
    outs = run(env, [uplink(1, **checkin), uplink(2), uplink(1, device_id=0x31, **checkin),
                     uplink(2, device_id=0x31), uplink(3, device_id=0x31, msg_type=frame.UP_HEARTBEAT,
                                                      body=(3700, 5, 0, None, 1))])
    assert [(o.status, o.reason) for o in outs] == [(REJECTED, "RoleMismatch"), (NEW, None), (NEW, None),
                                                    (REJECTED, "RoleMismatch"), (NEW, None)]
    assert "checkin from device 0000002a" in outs[0].detail and outs[0].seq == 1
    assert store.count() == 3
    # an explicit role_of wins; a plain-function key lookup without one checks no roles
    outs = process_batch([uplink(9, **checkin)], lambda d, k: KEY, lambda d: None, SeqState(), lambda *a: False, NOW,
                         role_of=lambda d: "alarm_button")
    assert outs[0].reason == "RoleMismatch"
    outs = process_batch([uplink(9, **checkin)], lambda d, k: KEY, lambda d: None, SeqState(), lambda *a: False, NOW)
    assert outs[0].status == NEW


def test_duplicate_is_reacked_not_stored_and_a_late_frame_inside_the_window_is_new(env):
    run(env, [uplink(1), uplink(3)])
    outs = run(env, [uplink(3), uplink(2), uplink(4), uplink(4), uplink(2)])
    assert [(o.status, o.reason) for o in outs] == [(DUPLICATE, None), (NEW, None), (NEW, None), (DUPLICATE, None),
                                                    (DUPLICATE, None)]
    assert outs[1].late and not outs[2].late
    assert env[1].count() == 4
    assert sorted(e.seq for e in env[1].events_after(0)) == [1, 2, 3, 4]


def test_the_issue_14_sequence_broker_lost_6_to_10_then_11_stored(env):
    """seq 1-5 acked; the broker lost 6-10; 11 stored; the resent 6-10 are stored, not refused."""
    run(env, [uplink(s) for s in range(1, 6)])
    run(env, [uplink(11)])
    outs = run(env, [uplink(s) for s in range(6, 12)])
    assert [o.status for o in outs] == [NEW] * 5 + [DUPLICATE]
    assert sorted(e.seq for e in env[1].events_after(0)) == list(range(1, 12))


def test_below_the_window_a_never_stored_seq_is_a_named_replay_and_a_stored_one_a_duplicate(env):
    top = 1 + WINDOW + 10
    run(env, [uplink(1), uplink(top)])
    edge = top - WINDOW + 1                               # the oldest number the window still holds
    outs = run(env, [uplink(1), uplink(2), uplink(top - WINDOW), uplink(edge)])
    assert [(o.status, o.reason) for o in outs] == [(DUPLICATE, None), (REJECTED, "OutsideReplayWindow"),
                                                    (REJECTED, "OutsideReplayWindow"), (NEW, None)]
    from protocol.errors import Replay
    from gateway.pipeline import OutsideReplayWindow
    assert issubclass(OutsideReplayWindow, Replay)        # `except Replay` still catches it


def test_the_window_survives_a_restart_and_a_failed_commit_leaves_it_unchanged(env, tmp_path):
    reg, store = env
    run(env, [uplink(1), uplink(5), uplink(3)])
    assert store.seq_windows() == {(DEV, 1): SeqWindow(5, 0b10101)}
    reopened = EventStore(tmp_path / "g.db", ManualClock(NOW))
    assert reopened.seq_windows() == {(DEV, 1): SeqWindow(5, 0b10101)}
    reopened.close()
    seqs = SeqState(store.seq_windows())
    outs = process_batch([uplink(4)], reg.device_key, lambda d: None, seqs, lambda d, k, s: False, NOW)
    assert outs[0].status == NEW and seqs.windows[(DEV, 1)] == SeqWindow(5, 0b10111)
    assert store.seq_windows()[(DEV, 1)] == SeqWindow(5, 0b10101)   # not committed: the store's copy is intact


def test_seq_window_bitmap_edges():
    w = SeqWindow()
    w.mark(1)
    assert (w.top, w.bits) == (1, 1)
    w.mark(1 + WINDOW)                  # shifts the old top exactly out of the window
    assert (w.top, w.bits) == (1 + WINDOW, 1) and w.has(1) is None and w.has(2) is False
    w.mark(2)
    assert w.has(2) is True and w.bits == 1 | 1 << (WINDOW - 1)
    w.mark(10 * WINDOW)                 # a jump larger than the window clears it
    assert (w.top, w.bits) == (10 * WINDOW, 1)
    assert w.bits < 1 << WINDOW


def test_garbage_never_escapes(env):
    import random

    rnd = random.Random(4)
    good = uplink(1).payload
    items = []
    for _ in range(2000):
        b = bytearray(good)
        for _ in range(rnd.randint(1, 4)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        items.append(Incoming(uplink(1).topic, bytes(b[: rnd.randint(0, len(b))] if rnd.random() < 0.3 else b)))
    outs = run(env, items)
    assert len(outs) == 2000
    assert all(o.reason != "InternalError" for o in outs)


def test_acks_verify_on_the_device_side(env):
    reg, _ = env
    signer = DownlinkSigner(reg.device_key)
    topic, data = signer.ack(DEV, 1, 7, acked_seq=5, stage=0, gateway_time=NOW)
    f = strict.decode_downlink(data, topic, lambda d, k: KEY)
    assert (f.name, f.seq, f.body) == ("ack", 7, [5, 0, NOW])
    k_down = frame.derive_keys(KEY)[1]
    assert frame.decode(k_down, topic, data, downlink=True).body == [5, 0, NOW]
    topic, data = signer.build(frame.DOWN_SIREN, DEV, 1, 8, NOW, [True, 1, 30])
    assert frame.decode(k_down, topic, data, downlink=True).body == [True, 1, 30]


def test_token_bucket_throttles_one_key_only():
    tb = TokenBuckets(rate_per_s=10, burst=5)
    allowed = sum(tb.allow("flood", 0.0) for _ in range(50))
    assert allowed == 5
    assert tb.allow("quiet", 0.0)
    assert tb.allow("flood", 0.2)  # 2 tokens back after 0.2 s


def test_ack_body_encoding_matches_canonical_cbor(env):
    reg, _ = env
    signer = DownlinkSigner(reg.device_key)
    for acked in (1, 23, 24, 255, 256, 65535, 65536, 0xFFFFFFFF):
        topic, data = signer.ack(DEV, 1, 9, acked_seq=acked, stage=4, gateway_time=NOW)
        assert frame.decode(frame.derive_keys(KEY)[1], topic, data, downlink=True).body == [acked, 4, NOW]


# -- protocol/vectors/registry.txt: the SPEC rules that depend on the registry -------------------

from protocol.tests.vectors import registry_vectors  # noqa: E402

REGISTRY_VECTORS = registry_vectors()


@pytest.fixture(scope="module")
def vector_registry(tmp_path_factory):
    """The gateway's real registry holding registry.txt's devices (every vector has the same ones):
    keys issued oldest first (add, then rotate_key), revoked ones revoked."""
    tmp = tmp_path_factory.mktemp("vectors")
    reg = Registry(tmp / "g.db", tmp / "master.key", ManualClock(NOW))
    for d in REGISTRY_VECTORS[0]["registry"]:
        (first, key), *later = d["keys"]
        reg.add_device(d["device_id"], d["role"], None, key=bytes.fromhex(key), key_id=first)
        for key_id, key in later:
            assert reg.rotate_key(d["device_id"], bytes.fromhex(key)) == (key_id, bytes.fromhex(key))
        if d["status"] == "revoked":
            reg.revoke_device(d["device_id"])
    yield reg
    reg.close()


@pytest.mark.parametrize("v", REGISTRY_VECTORS, ids=[v["id"] for v in REGISTRY_VECTORS])
def test_registry_vector_through_the_real_registry_and_pipeline(v, vector_registry):
    """Each vector of registry.txt: stored ("ok") or rejected with exactly its name, by the
    registry's key lookup (unknown / revoked device, key ids after a rotation) and the pipeline's
    role check, as the running gateway does it."""
    assert all(w["registry"] == v["registry"] for w in REGISTRY_VECTORS)
    (o,) = process_batch([Incoming(v["topic"], bytes.fromhex(v["frame"]))], vector_registry.device_key,
                         lambda d: None, SeqState(), lambda *a: False, NOW)
    assert ("ok" if o.status == NEW else o.reason) == v["expect"], (v["note"], o.detail)
    if o.status == NEW:
        assert (o.new.device_id, o.new.key_id, o.new.seq, o.new.frame.hex()) == (
            v["device_id"], v["key_id"], v["seq"], v["frame"])


def test_the_role_table_is_the_one_of_the_spec_and_the_vectors():
    from gateway.pipeline import ROLE_TYPES
    from protocol.gen_vectors import ROLE_SENDS

    assert ROLE_TYPES == {role: frozenset(names) for role, names in ROLE_SENDS.items()}
