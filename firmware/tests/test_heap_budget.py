"""Issue 11, item 4: a role's live heap after boot may grow at most 2 KB over its recorded budget.

The figure is the one `fengqiao bench firmware` reports as live_after_boot, measured the same way
(tools.bench_firmware.boot_figure: the bench's unit with 200 events queued, booted in a 64 KB
heap with its code in ROMFS, read from the board's own "role up" line after a gc.collect()). The
budget is data, firmware/heap_budget.json, one entry per word size; after an intended change
(another module, a memory cut) re-record it with `fengqiao bench firmware --record-budget` (and
`--port32` for the 32-bit entry): firmware/LINK.md, "Heap budget".

The 32-bit case runs on the 32-bit Unix port when scripts/build-micropython32.sh has built it
(build/micropython32/, about 2 minutes, not part of make test); otherwise it is skipped and says
so in the skip reason.
"""

import os
import subprocess

import pytest

from tools.bench_firmware import (BUDGET_FILE, BUDGET_SLACK_BYTES, Port, boot_figure, budget_for, load_budget,
                                  over_budget, port_key)
from tools.testing.procs import REPO_ROOT

ROLES = ("alarm", "checkin")
BUILD32 = os.path.join(REPO_ROOT, "scripts", "build-micropython32.sh")
BIN32 = os.path.join(REPO_ROOT, "build", "micropython32", "micropython")


def _port32():
    """The cached 32-bit build, or pytest.skip with why and how to get it."""
    how = "run scripts/build-micropython32.sh (about 2 min; gcc-multilib) to check the 32-bit budget too"
    if not os.access(BIN32, os.X_OK):
        pytest.skip("32-bit Unix port not built (%s missing): %s" % (os.path.relpath(BIN32, REPO_ROOT), how))
    stamp = subprocess.run(["bash", BUILD32, "--stamp"], capture_output=True, text=True, timeout=30, check=True)
    with open(os.path.join(os.path.dirname(BIN32), "stamp")) as f:
        if f.read().strip() != stamp.stdout.strip():
            pytest.skip("32-bit Unix port in build/micropython32/ is out of date with its sources: " + how)
    return Port(BIN32)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("bits", [64, 32])
def test_live_after_boot_within_the_recorded_budget(bits, tmp_path):
    port = Port() if bits == 64 else _port32()
    if not port.romfs:
        pytest.skip("code runs as .mpy files here (FENGQIAO_ROMFS=0 or no micropython_run): the budget is "
                    "for code in ROMFS, as the boards and the bench run it")
    entry = budget_for(load_budget(), port)
    measured = {role: boot_figure(role, str(tmp_path / role), port) for role in ROLES}
    over = over_budget(measured, entry)
    assert not over, (
        "live heap after boot over the budget in %s on %s (%s): %s. Find what grew (firmware/LINK.md, "
        "Heap budget: who owns how many bytes); if the growth is intended, re-record the budget with "
        "`fengqiao bench firmware --record-budget%s` and commit the file with the change."
        % (os.path.relpath(BUDGET_FILE, REPO_ROOT), port_key(port), port.describe(),
           "; ".join("%s %d B, budget %d B + %d B" % (role, m, b, BUDGET_SLACK_BYTES) for role, m, b in over),
           "" if bits == 64 else " --port32"))
