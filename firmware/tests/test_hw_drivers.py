"""FW-B drivers on the real MicroPython VM (64 KB heap, modules from the compiled board image):
button debounce and gestures, tamper, battery; LED patterns per state (single and RGB) and buzzer
patterns; the MFRC522 driver against a simulated chip (registers, FIFO, IRQ bits, ISO 14443-3
card) including 4/7/10-byte UID cascades and re-initialisation after a lock-up.

Each script prints PASS/FAIL per check and DONE n at the end; one subprocess per script."""

import os
import re

import pytest

from tools.flash import build_image
from tools.testing.micropython import run_micropython

MPY_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpy")


def run_checks(script, args=(), min_checks=1):
    """Run a hw_* script on MicroPython at 64 KB; fail with every FAIL line (or the crash)."""
    image = build_image("host")
    proc = run_micropython(os.path.join(MPY_DIR, script), heap="64k", args=list(args), timeout_s=90,
                           extra_paths=[image, MPY_DIR])
    out = proc.stdout
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    done = re.search(r"^DONE (\d+)$", out, re.M)
    assert done, "%s did not finish (rc %s):\n%s\n%s" % (script, proc.returncode, out[-3000:], proc.stderr[-2000:])
    assert not fails, "\n".join(fails)
    passes = [line for line in out.splitlines() if line.startswith("PASS")]
    assert len(passes) == int(done.group(1)) >= min_checks, out
    return out


@pytest.mark.timeout(120)
def test_button_tamper_battery_on_micropython():
    out = run_checks("hw_button.py", min_checks=20)
    for name in ("bounce_one_press", "brush_ignored", "tap_no_hold", "hold_timing", "triple_tap", "slow_poll_hold"):
        assert "PASS %s\n" % name in out


@pytest.mark.timeout(120)
def test_led_and_buzzer_patterns_on_micropython():
    out = run_checks("hw_patterns.py", min_checks=25)
    assert "PASS single_states_distinct\n" in out


@pytest.mark.timeout(120)
def test_mfrc522_driver_against_simulated_chip():
    out = run_checks("hw_mfrc522.py", min_checks=30)
    for name in ("uid4_frames", "uid7_frames", "uid10_frames", "lockup_recovered_same_call",
                 "glitch_recovered_within_check_every", "lockup_no_rst_raises"):
        assert "PASS %s\n" % name in out
