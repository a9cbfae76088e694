"""tools/bench_firmware.py: the VM choice (--micropython, the 32-bit build), the heap budget file
and the --budget check end to end on the real VM. The bench's figures are not asserted here
(benches print them; firmware/tests/test_app_memory.py and test_heap_budget.py hold the bounds)."""

import json
import os
import re
import subprocess
import sys

import pytest

from tools.bench_firmware import (BUDGET_SLACK_BYTES, BudgetError, Port, budget_for, load_budget, over_budget,
                                  record_budget)
from tools.errors import CliError
from tools.testing.procs import REPO_ROOT

BUILD32 = os.path.join(REPO_ROOT, "scripts", "build-micropython32.sh")
BIN32 = os.path.join(REPO_ROOT, "build", "micropython32", "micropython")


def _cli(*args, timeout_s=60):
    return subprocess.run([sys.executable, "-m", "tools.cli", "bench", "firmware"] + list(args),
                          capture_output=True, text=True, timeout=timeout_s, cwd=REPO_ROOT)


def test_default_port_is_the_64bit_package_with_code_in_romfs():
    port = Port()
    assert port.word_bits == 64 and port.romfs and port.mode_label() == "romfs"
    assert "unix-64bit" in port.describe()


def test_micropython_path_that_is_not_a_program_is_refused(tmp_path):
    with pytest.raises(CliError, match="not an executable file"):
        Port(str(tmp_path / "nope"))
    text = tmp_path / "micropython"
    text.write_text("not a program\n")
    text.chmod(0o755)
    with pytest.raises(CliError, match="does not run MicroPython code"):
        Port(str(text))


def test_over_budget_only_above_the_slack():
    entry = {"alarm": 40000, "checkin": 42000}
    assert over_budget({"alarm": 40000 + BUDGET_SLACK_BYTES, "checkin": 30000}, entry) == []
    assert over_budget({"alarm": 40001 + BUDGET_SLACK_BYTES, "checkin": 42000}, entry) == [
        ("alarm", 40001 + BUDGET_SLACK_BYTES, 40000)]


def test_record_budget_keeps_the_other_ports_entry(tmp_path):
    path = str(tmp_path / "budget.json")
    port = Port()
    with pytest.raises(BudgetError, match="no heap budget recorded"):
        load_budget(path)
    with open(path, "w") as f:
        json.dump({"ports": {"unix-32bit": {"alarm": 1, "checkin": 2, "code": "romfs"}}}, f)
    with pytest.raises(BudgetError, match="no budget for unix-64bit"):
        budget_for(load_budget(path), port, path)
    record_budget({"alarm": 46000, "checkin": 49000}, port, path, when="2026-12-07")
    doc = load_budget(path)
    assert doc["ports"]["unix-32bit"] == {"alarm": 1, "checkin": 2, "code": "romfs"}
    entry = budget_for(doc, port, path)
    assert (entry["alarm"], entry["checkin"], entry["code"], entry["recorded"]) == (46000, 49000, "romfs", "2026-12-07")
    assert doc["slack_bytes"] == BUDGET_SLACK_BYTES
    with open(path, "w") as f:
        f.write("{")
    with pytest.raises(BudgetError, match="not JSON"):
        load_budget(path)


@pytest.mark.timeout(60)
def test_budget_check_fails_when_a_role_grew_more_than_the_slack(tmp_path):
    """--record-budget then --budget on the real VM; a budget 3 KB below what the unit uses fails."""
    path = str(tmp_path / "budget.json")
    done = _cli("--record-budget", "--budget-file", path, "--json")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])["live_after_boot"]
    assert set(measured) == {"alarm", "checkin"} and all(20000 < v < 64 * 1024 for v in measured.values())
    done = _cli("--budget", "--budget-file", path, "--role", "alarm")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert re.search(r"alarm: live after boot \d+ B on unix-64bit, budget %d B" % measured["alarm"], done.stdout)
    doc = load_budget(path)
    doc["ports"]["unix-64bit"]["alarm"] -= BUDGET_SLACK_BYTES + 1024
    with open(path, "w") as f:
        json.dump(doc, f)
    done = _cli("--budget", "--budget-file", path, "--role", "alarm")
    assert done.returncode == 1 and "heap budget exceeded: alarm" in done.stderr, done.stdout + done.stderr


def test_build_script_cache_key_covers_its_inputs():
    stamp = subprocess.run(["bash", BUILD32, "--stamp"], capture_output=True, text=True, timeout=30)
    assert stamp.returncode == 0 and re.fullmatch(r"[0-9a-f]{64}", stamp.stdout.strip()), stamp.stderr
    usage = subprocess.run(["bash", BUILD32, "--bogus"], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_32bit_build_runs_the_firmware_from_romfs():
    """The cached 32-bit build (scripts/build-micropython32.sh) is what the bench expects of it."""
    if not os.access(BIN32, os.X_OK):
        pytest.skip("32-bit Unix port not built (build/micropython32/micropython missing): run "
                    "scripts/build-micropython32.sh (about 2 min; gcc-multilib) to test it")
    port = Port(BIN32)
    assert (port.word_bits, port.mode, port.tls, port.version) == (32, "fqrom", False, "1.28.0")
    # bytes-find-int.patch: firmware/boards/host.py relies on bytes.find(int), as 1.29 accepts it
    probe = subprocess.run([BIN32, "-c", "print(b'ab\\ncd'.find(10), bytearray(b'x\\n').rfind(10))"],
                           capture_output=True, text=True, timeout=30)
    assert probe.stdout.split() == ["2", "1"], probe.stderr
    done = _cli("--micropython", BIN32, "--tls", "--role", "alarm", "--heap-kb", "64")
    assert done.returncode == 1 and "has no TLS module" in done.stderr, done.stderr


@pytest.mark.timeout(120)
def test_scenario_with_a_console_session_during_the_sends():
    """The bench's scenario with its console session (identify, read_config, selftest over the pty
    while queued events go out), small: 20 events, one session, a heap with room (96 KB), so this
    checks the bench's machinery, not the firmware's margin (that is the bench's figure)."""
    done = _cli("--role", "checkin", "--heap-kb", "96", "--events", "20", "--console-sessions", "1", "--json",
                timeout_s=110)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    checkin = result["checkin"]
    assert (result["word_bits"], checkin["heap_kb"], checkin["console_sessions"]) == (64, 96, 1)
    assert checkin["frames"] >= 22  # 20 queued + boot + the check-in after the reconnect
    assert 0 < checkin["code_bytes"] < checkin["live_after_boot"] < checkin["live_peak"] <= checkin["alloc_peak"]


@pytest.mark.timeout(60)
def test_modules_split_the_live_heap_after_boot():
    """--modules: the role's modules (imported one by one, qstr pool pre-grown), the pool's blocks
    and the start-up's data add up to the live heap after boot."""
    done = _cli("--modules", "--role", "alarm", "--json")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    alarm = json.loads(done.stdout.strip().splitlines()[-1])["alarm"]
    modules = alarm["modules"]
    assert {"outbox", "link", "mqtt", "app.runtime", "alarm_button", "drivers.button"} <= set(modules)
    assert all(b > 0 for b in modules.values()), modules
    assert alarm["qstr_pool_blocks"] > 0 and alarm["data_after_boot"] > 0
    assert sum(modules.values()) + alarm["qstr_pool_blocks"] + alarm["data_after_boot"] == alarm["live_after_boot"]
