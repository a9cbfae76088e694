"""Enrolment bundles (gateway/bundle.py) against a real gateway database file and a real Mosquitto:
imported devices are registered and allowed on the broker; tampered, replayed, unknown-technician
and wrong-gateway bundles are refused with their named errors and change nothing."""

import base64
import json
import os

import pytest

from gateway.bundle import (BundleRefused, BundleStore, EnrolmentKey, ReplayedBundle, TamperedBundle,
                            UnknownTechnician, WrongGateway, import_bundle, make_bundle, open_bundle, seal_entry)
from gateway.enrolment import Enrolments
from gateway.keys import SigningKey
from gateway.registry import Registry
from tools.hostboard import key_fingerprint


@pytest.fixture
def gw(tmp_path):
    db, mk = str(tmp_path / "gw.db"), str(tmp_path / "master.key")
    reg = Registry(db, mk)
    for pid, level, parent in (("c", "county", None), ("t", "township", "c"), ("v", "village", "t"),
                               ("g", "grid", "v"), ("hh-1", "household", "g"), ("hh-2", "household", "g")):
        reg.add_place(pid, level, pid, parent)
    g = type("GW", (), {})()
    g.registry, g.store, g.enr = reg, BundleStore(db), Enrolments(db, mk)
    g.key = EnrolmentKey.load_or_create(tmp_path / "enrolment_x25519.pem")
    g.tech = SigningKey.generate()
    g.store.add_technician("zhang", g.tech.public.raw)
    yield g
    g.enr.close()
    g.store.close()
    reg.close()


def entries(gw, count=2, first=None, places=("hh-1", "hh-2")):
    first = first if first is not None else gw.enr.reserve(gw.tech.key_id, count)[0]
    out, keys = [], {}
    for i in range(count):
        key = os.urandom(32)
        meta = {"device_id": first + i, "key_id": 1, "role": "alarm_button", "place_id": places[i % len(places)],
                "power": "mains", "hwid": "hw-%d" % i, "fingerprint": key_fingerprint(key)}
        out.append(seal_entry(gw.key.public_raw, meta, key))
        keys[first + i] = key
    return out, keys


def test_import_registers_every_device_with_its_key(gw, project_broker, clients):
    ents, keys = entries(gw)
    data = make_bundle(ents, gw.tech, gw.key.key_id)
    for k in keys.values():
        assert k.hex().encode() not in data and base64.b64encode(k) not in data   # sealed, not in clear
    bundle, done = import_bundle(data, gw.key, gw.store, gw.registry, project_broker, gw.enr)
    assert sorted(done) == sorted((d, "added") for d in keys)
    for dev, key in keys.items():
        assert gw.registry.device_key(dev, 1) == key and gw.registry.device(dev).place_id in ("hh-1", "hh-2")
        assert gw.enr.history(dev)[0][1] == "enrolled"
    dev = min(keys)   # the broker took the credentials without a restart
    assert clients(project_broker.port, *project_broker.device_credentials(dev, keys[dev])).connect()
    with pytest.raises(ReplayedBundle, match="imported already"):
        import_bundle(data, gw.key, gw.store, gw.registry, project_broker, gw.enr)


def _doc(data):
    doc = json.loads(data)
    return doc, json.loads(base64.b64decode(doc["body"]))


def _rebuild(doc, body, sign_with=None):
    raw = json.dumps(body, separators=(",", ":")).encode()
    doc = dict(doc, body=base64.b64encode(raw).decode())
    if sign_with is not None:
        from gateway.bundle import _SIG_CONTEXT

        doc["signature"] = base64.b64encode(sign_with.sign(_SIG_CONTEXT + raw)).decode()
    return json.dumps(doc).encode()


def test_tampered_bundles_are_refused_and_change_nothing(gw):
    ents, keys = entries(gw)
    data = make_bundle(ents, gw.tech, gw.key.key_id)
    doc, body = _doc(data)
    moved = json.loads(json.dumps(body))
    moved["devices"][0]["meta"]["place_id"] = "hh-2"               # a device moved to another household
    swapped = json.loads(json.dumps(body))                           # two devices' sealed keys swapped
    for f in ("epk", "nonce", "ct"):
        swapped["devices"][0][f], swapped["devices"][1][f] = swapped["devices"][1][f], swapped["devices"][0][f]
    flipped = bytearray(base64.b64decode(doc["body"]))
    flipped[len(flipped) // 2] ^= 1
    cases = {
        "a changed place, signature kept": _rebuild(doc, moved),
        "one bit of the body": json.dumps(dict(doc, body=base64.b64encode(bytes(flipped)).decode())).encode(),
        "swapped keys, re-signed by the technician": _rebuild(doc, swapped, sign_with=gw.tech),
        "signature of another message": json.dumps(dict(doc, signature=base64.b64encode(b"\0" * 64).decode())).encode(),
        "not JSON": data[:40],
        "not base64": json.dumps(dict(doc, body="%%%")).encode(),
    }
    for what, bad in cases.items():
        with pytest.raises(TamperedBundle):
            import_bundle(bad, gw.key, gw.store, gw.registry, None, gw.enr)
        assert all(gw.registry.device(d) is None for d in keys), what
    # the genuine file still imports afterwards (a refused one is not recorded as imported)
    assert len(import_bundle(data, gw.key, gw.store, gw.registry, None, gw.enr)[1]) == 2


def test_unknown_technician_and_wrong_gateway(gw):
    stranger = SigningKey.generate()
    ents, keys = entries(gw)
    with pytest.raises(UnknownTechnician, match="technician key %s" % stranger.key_id):
        open_bundle(make_bundle(ents, stranger, gw.key.key_id), gw.key, gw.store)
    doc, body = _doc(make_bundle(ents, gw.tech, gw.key.key_id))
    body["technician"] = stranger.key_id                               # re-signed by someone else
    with pytest.raises(UnknownTechnician):
        open_bundle(_rebuild(doc, body, sign_with=stranger), gw.key, gw.store)
    gw.store.remove_technician("zhang")
    with pytest.raises(UnknownTechnician):
        open_bundle(make_bundle(ents, gw.tech, gw.key.key_id), gw.key, gw.store)
    gw.store.add_technician("zhang", gw.tech.public.raw)
    other = EnrolmentKey.generate()
    ents2, _ = entries(gw, first=min(keys))
    sealed_elsewhere = [seal_entry(other.public_raw, e["meta"], os.urandom(32)) for e in ents2]
    with pytest.raises(WrongGateway, match="this gateway's is %s" % gw.key.key_id):
        open_bundle(make_bundle(sealed_elsewhere, gw.tech, other.key_id), gw.key, gw.store)
    with pytest.raises(TamperedBundle, match="does not decrypt"):   # addressed to us, sealed to another key
        open_bundle(make_bundle(sealed_elsewhere, gw.tech, gw.key.key_id), gw.key, gw.store)


def test_ids_not_reserved_for_the_technician_are_refused(gw):
    ents, _ = entries(gw, first=0x7000)
    with pytest.raises(BundleRefused, match="device 00007000 was not reserved"):
        import_bundle(make_bundle(ents, gw.tech, gw.key.key_id), gw.key, gw.store, gw.registry, None, gw.enr)
    assert gw.registry.device(0x7000) is None
    first, last = gw.enr.reserve(gw.tech.key_id, 5)
    assert (first, last) == (0x100, 0x104)   # ids come from the gateway (0x100 up), not typed
    assert gw.enr.reserve(gw.tech.key_id, 1) == (0x105, 0x105)


def test_enrolment_key_file_is_private(tmp_path):
    path = tmp_path / "k.pem"
    k1 = EnrolmentKey.load_or_create(path)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert EnrolmentKey.load_or_create(path).key_id == k1.key_id
    os.chmod(path, 0o644)
    from gateway.bundle import BundleError

    with pytest.raises(BundleError, match="readable by others"):
        EnrolmentKey.load_or_create(path)
