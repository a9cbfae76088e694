"""Running code on the real MicroPython VM (the Unix port) with a board-sized heap.

The device files are found through MICROPYPATH: `firmware/` (so `import outbox` works as on a
board, where those files sit at the root of the flash) and the repository root (so `import
protocol.cbor` works as on a board, where `protocol/` is copied as a package).
"""

import os
import subprocess

from tools.testing.procs import REPO_ROOT, find_program

FIRMWARE_DIR = os.path.join(REPO_ROOT, "firmware")
DEFAULT_HEAP = "64k"


class MicroPythonMissing(RuntimeError):
    """No MicroPython Unix port was found (run `make test`, which installs one)."""


def micropython_binary():
    """The MicroPython Unix port: $FENGQIAO_MICROPYTHON, else `micropython` on PATH / in .venv."""
    explicit = os.environ.get("FENGQIAO_MICROPYTHON")
    if explicit:
        return explicit
    path = find_program("micropython") or os.path.join(REPO_ROOT, ".venv", "bin", "micropython")
    if not os.access(path, os.X_OK):
        raise MicroPythonMissing("no `micropython` on PATH or in .venv/bin; run `make test` once")
    return path


def micropython_env(extra_paths=()):
    """Environment for a MicroPython process: MICROPYPATH with the device code first."""
    env = dict(os.environ)
    paths = list(extra_paths) + [FIRMWARE_DIR, REPO_ROOT, ".frozen"]
    env["MICROPYPATH"] = ":".join(paths)
    return env


def micropython_argv(script, heap=DEFAULT_HEAP, args=()):
    """argv to run `script` on MicroPython with a heap of `heap` (e.g. "64k")."""
    return [micropython_binary(), "-X", "heapsize=%s" % heap, script] + list(args)


def run_micropython(script, heap=DEFAULT_HEAP, args=(), stdin=None, timeout_s=60, extra_paths=(), cwd=None):
    """Run a script to completion; returns CompletedProcess with text stdout/stderr."""
    return subprocess.run(
        micropython_argv(script, heap, args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=micropython_env(extra_paths),
        cwd=cwd or REPO_ROOT,
    )


def run_micropython_code(code, heap=DEFAULT_HEAP, timeout_s=60, extra_paths=(), tmp_dir=None):
    """Run a snippet of source on MicroPython (written to a temporary file)."""
    import tempfile

    fd, path = tempfile.mkstemp(suffix=".py", dir=tmp_dir)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(code)
        return run_micropython(path, heap=heap, timeout_s=timeout_s, extra_paths=extra_paths)
    finally:
        os.unlink(path)
