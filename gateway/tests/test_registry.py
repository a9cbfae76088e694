"""Registry: place tree, devices, keys wrapped at rest, revocation seen across processes, downlink seq."""

import os
import sqlite3
import stat

import pytest

from gateway.registry import DOWNLINK_BLOCK, Registry, RegistryError, RevokedDevice, UnknownDevice
from protocol.errors import UnknownKey


@pytest.fixture
def reg(tmp_path):
    r = Registry(tmp_path / "g.db", tmp_path / "master.key")
    r.add_place("c1", "county", "County")
    r.add_place("t1", "township", "Township", "c1")
    r.add_place("v1", "village", "Village", "t1")
    r.add_place("g1", "grid", "Grid 1", "v1")
    r.add_place("h1", "household", "House 1", "g1")
    yield r
    r.close()


def test_place_levels_enforced(reg):
    with pytest.raises(RegistryError, match="household belongs to a grid"):
        reg.add_place("h2", "household", "x", "v1")
    with pytest.raises(RegistryError):
        reg.add_place("x", "planet", "x")
    assert [p.place_id for p in reg.place_path("h1")] == ["c1", "t1", "v1", "g1", "h1"]


def test_keys_wrapped_at_rest(reg, tmp_path):
    key = bytes(range(32))
    assert reg.add_device(0x2A, "alarm_button", "h1", key=key) == key
    assert reg.device_key(0x2A, 1) == key
    assert stat.S_IMODE(os.stat(tmp_path / "master.key").st_mode) == 0o600
    with open(tmp_path / "g.db", "rb") as f:
        assert key not in f.read()
    db = sqlite3.connect(tmp_path / "g.db")
    (wrapped,) = db.execute("SELECT wrapped FROM device_keys").fetchone()
    assert key not in wrapped and len(wrapped) == 48
    db.close()
    # another gateway's master key cannot unwrap it
    other = Registry(tmp_path / "g.db", tmp_path / "other.key")
    with pytest.raises(RegistryError, match="does not unwrap"):
        other.device_key(0x2A, 1)
    other.close()


def test_lookup_errors_and_revocation_across_connections(reg, tmp_path):
    reg.add_device(0x2A, "alarm_button", "h1")
    with pytest.raises(UnknownDevice):
        reg.device_key(0x99, 1)
    with pytest.raises(UnknownKey):
        reg.device_key(0x2A, 7)
    reg.device_key(0x2A, 1)  # now cached
    cli = Registry(tmp_path / "g.db", tmp_path / "master.key")  # e.g. `fengqiao gateway device revoke`
    cli.revoke_device(0x2A)
    cli.close()
    assert reg.refresh_if_changed() is True
    with pytest.raises(RevokedDevice):
        reg.device_key(0x2A, 1)
    assert reg.device(0x2A).status == "revoked"


def test_rotate_key_keeps_old_key_for_frames_in_outboxes(reg):
    k1 = reg.add_device(0x2A, "checkpoint", "h1")
    key_id, k2 = reg.rotate_key(0x2A)
    assert key_id == 2 and k2 != k1
    assert reg.device(0x2A).key_id == 2
    assert reg.device_key(0x2A, 1) == k1 and reg.device_key(0x2A, 2) == k2


def test_downlink_seq_continues_across_a_key_rotation_and_revocation_ends_every_key_id(reg):
    """SPEC section 4, key rotation: the downlink count is per device, not per key id; the old key id
    stays valid until the device is revoked, which ends all of them (RevokedDevice, an UnknownKey)."""
    from protocol.errors import UnknownKey

    reg.add_device(0x2A, "alarm_button", "h1")
    before = [reg.next_downlink_seq(0x2A) for _ in range(3)]
    reg.rotate_key(0x2A)
    assert [reg.next_downlink_seq(0x2A) for _ in range(2)] == [before[-1] + 1, before[-1] + 2]
    reg.revoke_device(0x2A)
    for key_id in (1, 2):
        with pytest.raises(RevokedDevice) as info:
            reg.device_key(0x2A, key_id)
        assert isinstance(info.value, UnknownKey)


def test_downlink_seq_increases_across_restart(reg, tmp_path):
    reg.add_device(0x2A, "alarm_button", "h1")
    seqs = [reg.next_downlink_seq(0x2A) for _ in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    reg.close()
    again = Registry(tmp_path / "g.db", tmp_path / "master.key")
    assert again.next_downlink_seq(0x2A) == DOWNLINK_BLOCK + 1
    again.close()


def test_master_key_permissions_checked(tmp_path):
    path = tmp_path / "m.key"
    Registry(tmp_path / "a.db", path).close()
    os.chmod(path, 0o644)
    with pytest.raises(RegistryError, match="chmod 600"):
        Registry(tmp_path / "a.db", path)


def test_event_store_commits_do_not_flush_the_key_cache(reg, tmp_path):
    from gateway.clock import ManualClock
    from gateway.events import NewDeviceEvent
    from gateway.store import EventStore

    reg.add_device(0x2A, "alarm_button", "h1")
    reg.device_key(0x2A, 1)
    assert reg.refresh_if_changed() is False
    store = EventStore(tmp_path / "g.db", ManualClock())
    store.append_device_events([NewDeviceEvent("alarm", 0x2A, 1, 1, [0], b"f", "t", None)])
    assert reg.refresh_if_changed() is False
    store.close()


def test_sqlite_registry_implements_the_interface():
    from gateway.registry import RegistryInterface

    wanted = {n for n in vars(RegistryInterface) if not n.startswith("_")}
    assert wanted and all(callable(getattr(Registry, n, None)) for n in wanted)
