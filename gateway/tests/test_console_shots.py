"""`fengqiao console screenshots DIR` writes the README's pictures: phone (360 px) and desk (1366 px)
PNGs of a sample township, in Debian's chromium (English board only here, to keep it short)."""

import os
import struct
import subprocess
import sys

import pytest

from tools.testing.procs import REPO_ROOT

pytest.importorskip("playwright.sync_api")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_screenshots_command_writes_phone_and_desk_pngs(tmp_path):
    out = tmp_path / "shots"
    r = subprocess.run([sys.executable, "-m", "tools.cli", "console", "screenshots", str(out), "--lang", "en"],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=100)
    assert r.returncode == 0, r.stdout + r.stderr
    written = r.stdout.split()
    assert sorted(os.path.basename(p) for p in written) == ["console-board-desk.en.png", "console-board-phone.en.png"]
    for path in written:
        with open(path, "rb") as f:
            head = f.read(24)
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", head[16:24])
        assert width == (360 if "phone" in path else 1366) and height >= 600
