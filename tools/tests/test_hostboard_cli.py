"""`fengqiao hostboard ...` as a user runs it: the real command in its own processes, a real
daemon, a real host board (MicroPython Unix port) with its console on a real pty."""

import json
import os
import stat
import subprocess

import pytest

from tools.hostboard import HostBoard, provision_dir
from tools.testing.procs import REPO_ROOT, wait_for

FENGQIAO = os.path.join(REPO_ROOT, ".venv", "bin", "fengqiao")


@pytest.fixture
def fq(tmp_path):
    env = dict(os.environ, FENGQIAO_HOSTBOARDS=str(tmp_path / "boards"))

    def run(*argv, ok=True):
        proc = subprocess.run([FENGQIAO] + list(argv), capture_output=True, text=True, timeout=60, env=env,
                              cwd=str(tmp_path))
        if ok:
            assert proc.returncode == 0, (argv, proc.stdout, proc.stderr)
        return proc

    yield run
    run("hostboard", "stop", "--all", ok=False)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _state(tmp_path, name):
    with open(os.path.join(str(tmp_path / "boards"), name, "state.json"), encoding="utf-8") as f:
        return json.load(f)


def _status(fq, name):
    return json.loads(fq("hostboard", "status", "--name", name, "--json").stdout)


@pytest.mark.timeout(120)
def test_start_work_and_stop_two_host_boards(fq, tmp_path):
    proc = fq("hostboard", "status", ok=False)
    assert proc.returncode == 1 and "no host board is running" in proc.stderr and "hostboard start" in proc.stderr

    key = bytes(range(32))
    provision_dir(tmp_path / "alarm-flash", {"device_id": 0x51, "role": "alarm", "key": key, "broker_port": 9})
    provision_dir(tmp_path / "cp-flash", {"device_id": 0x52, "role": "checkin", "key": key, "broker_port": 9,
                                          "checkpoint_id": 7})
    out = fq("hostboard", "start", "--role", "alarm", "--name", "btn", "--flash", str(tmp_path / "alarm-flash")).stdout
    assert "console (pty)" in out and "control socket" in out
    fq("hostboard", "start", "--role", "checkin", "--name", "cp", "--flash", str(tmp_path / "cp-flash"))
    again = fq("hostboard", "start", "--role", "alarm", "--name", "btn", ok=False)
    assert again.returncode == 1 and "already running" in again.stderr
    which = fq("hostboard", "hold", ok=False)
    assert which.returncode == 1 and "say which with --name" in which.stderr

    btn, cp = _status(fq, "btn"), _status(fq, "cp")
    for st in (btn, cp):
        assert stat.S_ISCHR(os.stat(st["pty"]).st_mode)
        fd = os.open(st["pty"], os.O_RDWR | os.O_NOCTTY)
        try:
            assert os.isatty(fd)
        finally:
            os.close(fd)
        assert stat.S_ISSOCK(os.stat(st["control"]).st_mode)
    assert (btn["role"], cp["role"], btn["button"], btn["buzzer"]) == ("alarm", "checkin", 0, 0)
    assert fq("hostboard", "port", "--name", "cp").stdout.strip() == cp["pty"]
    assert "control socket" not in fq("hostboard", "list").stdout and "btn" in fq("hostboard", "list").stdout

    # Press and hold: the alarm is raised; with no broker (port 9) the LED says it is not getting through.
    fq("hostboard", "hold", "--name", "btn", "--ms", "1500")
    board = HostBoard.attach(btn["flash"], btn["control"])
    try:
        wait_for(lambda: any(rgb in ((1, 1, 0), (1, 0, 0)) for _t, rgb in board.led_history()), 10,
                 "the LED to show sending (amber) or failing (red) after the hold")
    finally:
        board.stop()  # only the client's connection: the daemon owns the board
    text = fq("hostboard", "status", "--name", "btn").stdout
    assert "LED" in text and "buzzer" in text and "button" in text
    assert "sending" in text or "not getting through" in text, text

    refused = fq("hostboard", "tap", "--name", "btn", "04a1b2c3", ok=False)
    assert refused.returncode == 1 and "no card reader" in refused.stderr

    # A card held to the reader: the unit beeps.
    reader = HostBoard.attach(cp["flash"], cp["control"])
    try:
        beeps = reader.request("buzzer", since=1 << 30)["count"]
        fq("hostboard", "tap", "--name", "cp", "04a1b2c3d4e5f6", "--ms", "400")
        wait_for(lambda: reader.request("buzzer", since=1 << 30)["count"] > beeps, 10, "a beep for the card")
    finally:
        reader.stop()
    fq("hostboard", "press", "--name", "cp", "--times", "3")

    # Flashing a host board powers it off and on with the current firmware, data kept.
    fq("flash", "--board", "host", "--hostboard", "cp")
    cp2 = _status(fq, "cp")
    assert cp2["pty"] == cp["pty"] and _status(fq, "cp")["reset_reason"] == 0
    assert _state(tmp_path, "cp")["starts"] == 2

    daemons = {n: _state(tmp_path, n) for n in ("btn", "cp")}
    fq("hostboard", "stop", "--name", "btn")
    assert not _alive(daemons["btn"]["pid"]) or wait_for(lambda: not _alive(daemons["btn"]["pid"]), 10, "daemon exit")
    assert not _alive(daemons["btn"]["board_pid"]) and _alive(daemons["cp"]["board_pid"])
    fq("hostboard", "stop", "--all")
    wait_for(lambda: not _alive(daemons["cp"]["board_pid"]) and not _alive(daemons["cp"]["pid"]), 10, "cp to stop")
    assert "no host board running" in fq("hostboard", "list").stdout
    assert os.path.exists(os.path.join(btn["flash"], "data", "identity.cfg"))  # the flash is kept


def test_fengqiao_help_says_how_to_start_a_host_board():
    """A technician without hardware finds the host board from `fengqiao --help` alone (issue 16)."""
    proc = subprocess.run([FENGQIAO, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "fengqiao hostboard start --role alarm" in text
    assert "hostboard start --role alarm|checkin (prints its pty); press | hold | tap | status | stop" in text
    assert "(run `fengqiao" not in text  # every command says what it does
