"""identity.py and the console's framing/commands on the MicroPython VM (64 KB heap), and the
identity file format shared with tools.hostboard.provision_dir (CPython writes, device reads)."""

import hashlib
import os
import re

import pytest

from tools.flash import build_image
from tools.hostboard import encode_identity, key_fingerprint, provision_dir
from tools.testing.micropython import run_micropython, run_micropython_code

MPY_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpy")


@pytest.mark.timeout(120)
def test_identity_and_console_on_micropython(tmp_path):
    """In a 64 KB heap with the code in ROMFS, as a board runs it. The console imports its
    request handling and the identity modules for each request (console/__init__.py): from
    ROMFS that costs their objects; as plain .mpy files (no micropython_run here) their bytecode
    too, so that fallback gets 96 KB."""
    import subprocess

    from tools.hostboard import image_run_argv, romfs_available

    # The suite is imported (compiled as it is read), not run as a script: a script outside the
    # image is read into one string first (tools/romfs_launch.py), 10 KB of the 64.
    runner = tmp_path / "run_hw_identity.py"
    runner.write_text("import sys\nsys.path.append(%r)\nimport hw_identity\n" % MPY_DIR)
    argv, env, cwd = image_run_argv(runner, [str(tmp_path / "scratch")],
                                    heap="64k" if romfs_available() else "96k")
    os.mkdir(tmp_path / "scratch")
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=90)
    out = proc.stdout
    assert re.search(r"^DONE (\d+)$", out, re.M), out[-3000:] + proc.stderr[-2000:]
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert not fails, "\n".join(fails)
    assert len(re.findall(r"^PASS ", out, re.M)) >= 70
    # The device's fingerprint of bytes(range(32)) is the CPython one (first 8 bytes of SHA-256).
    fp = re.search(r"^FP ([0-9a-f]+)$", out, re.M).group(1)
    assert fp == hashlib.sha256(bytes(range(32))).hexdigest()[:16] == key_fingerprint(bytes(range(32)))


@pytest.mark.timeout(60)
def test_provision_dir_is_read_by_the_device(tmp_path):
    key = os.urandom(32)
    cfg = {"device_id": 0x2A, "key_id": 3, "key": key, "role": "checkin", "checkpoint_id": 17,
           "broker_host": "127.0.0.1", "broker_port": 18830, "settings": {"checkin_repeat_s": 60}}
    fp = provision_dir(tmp_path, cfg)
    assert fp == key_fingerprint(key)
    code = (
        "import identity\n"
        "c = identity.load(%r)\n"
        "print(c['device_id'], c['key_id'], c['role'], c['checkpoint_id'], c['broker_port'],"
        " c['settings']['checkin_repeat_s'], c['settings']['hold_ms'], identity.fingerprint(c['key']))\n"
    ) % str(tmp_path)
    proc = run_micropython_code(code, heap="64k", extra_paths=[build_image("host")])
    assert proc.stdout.split() == ["42", "3", "checkin", "17", "18830", "60", "1000", fp], proc.stdout + proc.stderr


def test_identity_file_format_is_crc_protected():
    raw = encode_identity({"device_id": 1, "key": b"\x01" * 32, "role": "alarm"})
    line, crc, end = raw.split(b"\n")
    import zlib

    assert end == b"" and crc == b"%08x" % zlib.crc32(line)


@pytest.mark.timeout(60)
def test_crc_valid_file_with_bad_fields_is_corrupt_not_misread(tmp_path):
    import json
    import zlib

    cases = {"role": {"role": "siren"}, "key": {"key": "abcd"}, "device_id": {"device_id": "42"},
             "missing": {"broker_port": None}, "version": {"v": 2}}
    good = json.loads(encode_identity({"device_id": 1, "key": b"\x02" * 32, "role": "alarm"}).split(b"\n")[0])
    for name, change in cases.items():
        doc = dict(good, **change)
        doc = {k: v for k, v in doc.items() if v is not None}
        line = json.dumps(doc).encode()
        d = tmp_path / name / "data"
        d.mkdir(parents=True)
        (d / "identity.cfg").write_bytes(line + b"\n%08x\n" % zlib.crc32(line))
    code = "import identity\nfor n in %r:\n" % sorted(cases) + (
        "    try:\n"
        "        identity.load(%r + '/' + n)\n"
        "        print('LOADED', n)\n"
        "    except identity.IdentityError as e:\n"
        "        print(e.args[0].upper(), n)\n") % str(tmp_path)
    proc = run_micropython_code(code, heap="64k", extra_paths=[build_image("host")])
    assert sorted(proc.stdout.split("\n")[:-1]) == sorted("CORRUPT_CONFIG %s" % n for n in cases), proc.stdout + proc.stderr
