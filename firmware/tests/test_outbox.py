"""Outbox and sequence counter, on the MicroPython VM (suite: mpy/app_outbox.py)."""

import os
import re

import pytest

SCRIPT = "app_outbox.py"


def mpy_test_names(script):
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpy", script)) as f:
        return re.findall(r"^def (test_\w+)", f.read(), re.M)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", mpy_test_names(SCRIPT))
def test_outbox_on_micropython(name, mpy_suite):
    results = mpy_suite(SCRIPT)
    assert "__crash__" not in results, results["__crash__"]
    assert results.get(name) == "PASS", "%s: %s\n%s" % (name, results.get(name), results["__output__"])
