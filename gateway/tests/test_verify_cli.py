"""`fengqiao verify`: a clean dump passes; a modified, removed or reordered envelope fails with a reason."""

import json
import os
import subprocess
import sys

import pytest

from gateway import envelope
from gateway.clock import ManualClock
from gateway.events import NewDeviceEvent
from gateway.keys import SigningKey
from gateway.store import EventStore
from protocol import frame as pframe
from tools.cli import main as cli_main
from tools.testing.procs import REPO_ROOT

T0 = 1_767_225_600
KEYS = {0x2A: bytes(range(32)), 0x2B: bytes(range(1, 33))}


def _event(device_id, seq, good_mac=True):
    k_up, _ = pframe.derive_keys(KEYS[device_id])
    topic = pframe.uplink_topic(device_id)
    data = pframe.encode(k_up, topic, pframe.UP_CHECKIN, device_id, 1, seq, T0, [7, b"\x01\x02\x03\x04"])
    if not good_mac:
        data = data[:-1] + bytes([data[-1] ^ 1])
    return NewDeviceEvent("checkin", device_id, 1, seq, [7, b"\x01\x02\x03\x04"], data, topic, T0, "cp-7")


def make_dump(tmp_path, n=12, batch=4, bad_mac_seq=None):
    """Signed envelope lines as the forwarder publishes them: batches of `batch`, last one signed."""
    key = SigningKey.load_or_create(tmp_path / "gw.pem")
    store = EventStore(tmp_path / "g.db", ManualClock(T0 + 1))
    for seq in range(1, n + 1):
        if seq % 5 == 0:
            store.append_gateway_event("patrol_missed_checkpoint", {"checkpoint": 7, "seq": seq}, place_id="cp-7")
        else:
            dev = 0x2A if seq % 2 else 0x2B
            store.append_device_events([_event(dev, seq, good_mac=seq != bad_mac_seq)])
    events = store.events_after(0, 1000)
    store.close()
    lines = []
    for i in range(0, len(events), batch):
        envs = envelope.sign_batch([envelope.build(e, "tw1") for e in events[i:i + batch]], key)
        lines.extend(envelope.dumps(e) for e in envs)
    pub = tmp_path / "gw.pub"
    pub.write_text(key.public_pem())
    dkeys = tmp_path / "devices.txt"
    dkeys.write_text("# device keys\n0000002a %s\n0000002b 1 %s\n" % (KEYS[0x2A].hex(), KEYS[0x2B].hex()))
    return lines, str(pub), str(dkeys)


def _verify(tmp_path, lines, pub, *extra):
    path = tmp_path / "dump.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return cli_main(["verify", str(path), "--pubkey", pub] + list(extra))


def test_clean_dump_passes_with_macs(tmp_path, capsys):
    lines, pub, dkeys = make_dump(tmp_path)
    assert _verify(tmp_path, lines, pub, "--device-keys", dkeys) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "12 envelope(s)" in out and "10 device MAC(s) verified" in out
    assert "3 signature(s) verified" in out


def test_modified_envelope_is_caught(tmp_path, capsys):
    lines, pub, _ = make_dump(tmp_path)
    env = json.loads(lines[5])
    env["place_id"] = "somewhere-else"
    lines[5] = json.dumps(env)
    assert _verify(tmp_path, lines, pub) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "tw1:6" in out and "BadHash" in out


def test_modified_and_rehashed_envelope_is_caught(tmp_path, capsys):
    lines, pub, _ = make_dump(tmp_path)
    env = envelope.loads(lines[3])  # the signed last one of the first batch
    env["received_at_us"] += 60_000_000
    env["skew_s"] += 60
    env["hash"] = envelope.chain_hash(bytes.fromhex(env["prev_hash"]), envelope.record_of(env)).hex()
    lines[3] = envelope.dumps(env)
    assert _verify(tmp_path, lines, pub) == 1
    out = capsys.readouterr().out
    assert "BadSignature" in out and "chain broken" in out and "events 1..4 not covered" in out


def test_removed_envelope_is_caught(tmp_path, capsys):
    lines, pub, _ = make_dump(tmp_path)
    del lines[6]
    assert _verify(tmp_path, lines, pub) == 1
    out = capsys.readouterr().out
    assert "missing event 7 between tw1:6 and tw1:8" in out
    assert "events 5..6 not covered" in out  # their signature was on event 8, beyond the gap


def test_removed_last_of_dump_is_reported_as_unsigned_tail(tmp_path, capsys):
    lines, pub, _ = make_dump(tmp_path)
    assert _verify(tmp_path, lines[:-1], pub) == 1
    assert "events 9..11 not covered by a valid signature" in capsys.readouterr().out


def test_reordered_envelopes_are_caught(tmp_path, capsys):
    lines, pub, _ = make_dump(tmp_path)
    lines[2], lines[3] = lines[3], lines[2]
    assert _verify(tmp_path, lines, pub) == 1
    out = capsys.readouterr().out
    assert "out of order" in out


def test_duplicate_is_ignored_but_conflicting_copy_is_not(tmp_path, capsys):
    lines, pub, _ = make_dump(tmp_path)
    assert _verify(tmp_path, lines[:4] + lines[2:4] + lines[4:], pub) == 0
    assert "2 duplicate(s) ignored" in capsys.readouterr().out
    env = json.loads(lines[1])
    env["actor"] = "x"
    assert _verify(tmp_path, lines + [json.dumps(env)], pub) == 1
    assert "received twice with different content" in capsys.readouterr().out


def test_bad_device_mac_signed_by_gateway_is_caught_with_device_keys(tmp_path, capsys):
    lines, pub, dkeys = make_dump(tmp_path, bad_mac_seq=3)
    assert _verify(tmp_path, lines, pub) == 0  # without device keys nothing can tell
    capsys.readouterr()
    assert _verify(tmp_path, lines, pub, "--device-keys", dkeys) == 1
    out = capsys.readouterr().out
    assert "tw1:3" in out and "BadDeviceMac" in out and "BadMac" in out


def test_wrong_public_key_and_garbage_line(tmp_path, capsys):
    lines, _pub, _ = make_dump(tmp_path)
    other = tmp_path / "other.pub"
    other.write_text(SigningKey.generate().public.raw.hex())
    assert _verify(tmp_path, lines + ["{oops"], str(other)) == 1
    out = capsys.readouterr().out
    assert "not by the given key" in out and "line 13: malformed envelope" in out


def test_empty_dump_and_bad_key_file_fail_clearly(tmp_path, capsys):
    _lines, pub, _ = make_dump(tmp_path, n=2)
    assert _verify(tmp_path, [], pub) == 1
    assert "no envelopes to verify" in capsys.readouterr().out
    assert cli_main(["verify", str(tmp_path / "dump.jsonl"), "--pubkey", str(tmp_path / "nope.pub")]) == 1
    assert "cannot read public key" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_command_line_exit_status_and_show(tmp_path):
    lines, pub, dkeys = make_dump(tmp_path, n=3, batch=1)
    path = tmp_path / "dump.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    argv = [sys.executable, "-m", "tools.cli", "verify", str(path), "--pubkey", pub, "--device-keys", dkeys, "--show"]
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    ok = subprocess.run(argv, capture_output=True, text=True, timeout=50, cwd=REPO_ROOT, env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "envelope tw1:1" in ok.stdout and "signature  ed25519" in ok.stdout
    path.write_text("".join(line + "\n" for line in lines[1:]))
    bad = subprocess.run(argv, capture_output=True, text=True, timeout=50, cwd=REPO_ROOT, env=env)
    assert bad.returncode == 1 and "starts at event 2, expected event 1" in bad.stdout
    partial = subprocess.run(argv + ["--from-event", "2"], capture_output=True, text=True, timeout=50,
                             cwd=REPO_ROOT, env=env)
    assert partial.returncode == 0, partial.stdout
