"""Clock, MQTT packets, uplink and downlink handling, alarm-button state machine -> LED state,
health events: on the MicroPython VM with a fake board and link (suite: mpy/app_runtime.py)."""

import os
import re

import pytest

SCRIPT = "app_runtime.py"


def mpy_test_names(script):
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpy", script)) as f:
        return re.findall(r"^def (test_\w+)", f.read(), re.M)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", mpy_test_names(SCRIPT))
def test_runtime_on_micropython(name, mpy_suite):
    results = mpy_suite(SCRIPT, heap="256k")
    assert "__crash__" not in results, results["__crash__"]
    assert results.get(name) == "PASS", "%s: %s\n%s" % (name, results.get(name), results["__output__"])
