"""Shared by the firmware tests (FW-A and FW-B): run MicroPython-side suites once per module."""

import os
import re

import pytest

from tools.testing.micropython import run_micropython

MPY_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpy")


@pytest.fixture(scope="module")
def mpy_suite(tmp_path_factory):
    """mpy_suite(script) -> {name: "PASS" | "FAIL ..."}: runs the suite once per module."""
    cache = {}

    def run(script, heap="128k", timeout_s=120, args=()):
        if script not in cache:
            scratch = tmp_path_factory.mktemp(script.replace(".py", ""))
            proc = run_micropython(os.path.join(MPY_DIR, script), heap=heap, timeout_s=timeout_s,
                                   args=[str(scratch)] + list(args), extra_paths=[MPY_DIR])
            results = {}
            for line in proc.stdout.splitlines():
                m = re.match(r"(PASS|FAIL) (test_\w+):?(.*)", line)
                if m:
                    results[m.group(2)] = m.group(1) + m.group(3)
            if not re.search(r"^DONE \d+$", proc.stdout, re.M):
                results["__crash__"] = "suite did not finish (rc %s):\n%s\n%s" % (
                    proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
            results["__output__"] = proc.stdout[-4000:] + proc.stderr[-2000:]
            cache[script] = results
        return cache[script]

    return run
