"""The provisioning console over a real pseudo-terminal: a host board (MicroPython, 64 KB heap)
with its stdin/stdout on the slave of a pty, joined back to back with a second pty whose
/dev/pts path the tool opens with pyserial (tools.hostboard.NullModem, like `socat pty pty`)."""

import json
import os
import time
import zlib

import pytest
import serial

from tools.hostboard import HostBoard, NullModem, key_fingerprint
from tools.serialconsole import DeviceError, SerialConsole, decode, encode
from tools.testing.deploy_rig import outbox_seqs

CFG = {"device_id": 0x1234, "key_id": 2, "key": "5a" * 32, "role": "checkin", "checkpoint_id": 9,
       "broker_host": "127.0.0.1", "broker_port": 18883, "wifi_ssid": "village", "wifi_password": "s3cret"}


@pytest.fixture
def board(tmp_path):
    nm = NullModem()
    hb = HostBoard(tmp_path / "flash", entry="boards/host_console_main.py", console=nm.board_fd)
    hb.start()
    hb.port = nm.port
    yield hb
    hb.stop()
    nm.close()


def raw_exchange(port, payload, n_lines, timeout_s=5):
    """Write raw bytes to the unit; return the next n_lines lines it sends back."""
    with serial.Serial(port, 115200, timeout=0.05) as ser:
        ser.write(payload)
        ser.flush()
        buf = b""
        deadline = time.monotonic() + timeout_s
        while buf.count(b"\n") < n_lines and time.monotonic() < deadline:
            buf += ser.read(4096)
    return buf.split(b"\n")[:n_lines]


@pytest.mark.timeout(60)
def test_identify_write_read_back_refuse_and_reset(board):
    with SerialConsole(board.port) as con:
        info = con.identify()
        assert (info["product"], info["proto"], info["board"], info["provisioned"]) == ("fengqiao", 1, "host", False)
        assert info["hwid"] == board.ping()["hwid"]
        fp = con.write_config(CFG)
        assert fp == key_fingerprint(bytes.fromhex(CFG["key"]))
        back = con.read_config()
        assert "key" not in back and back["key_fingerprint"] == fp
        # The Wi-Fi password is a secret too: only its fingerprint comes back.
        assert "wifi_password" not in back and "s3cret" not in json.dumps(back)
        assert back["wifi_password_fingerprint"] == key_fingerprint(b"s3cret")
        assert (back["device_id"], back["role"], back["checkpoint_id"], back["wifi_ssid"]) == (0x1234, "checkin", 9, "village")
        # Refused re-provision: the stored identity is untouched.
        with pytest.raises(DeviceError) as exc:
            con.write_config(dict(CFG, device_id=0x9999, key="00" * 32))
        assert exc.value.code == "already_provisioned"
        assert con.read_config()["device_id"] == 0x1234
        info = con.identify()
        assert (info["provisioned"], info["device_id"], info["pending_reboot"]) == (True, 0x1234, True)
        # Factory reset only with this unit's hardware id.
        with pytest.raises(DeviceError) as exc:
            con.request("factory_reset")
        assert exc.value.code == "confirm_required"
        with pytest.raises(DeviceError):
            con.factory_reset("host-000000000000")
        assert con.identify()["provisioned"] is True
        con.factory_reset(info["hwid"])
        assert con.identify()["provisioned"] is False
        with pytest.raises(DeviceError) as exc:
            con.read_config()
        assert exc.value.code == "not_provisioned"
    assert not os.path.exists(os.path.join(board.flash_dir, "data", "identity.cfg"))


@pytest.mark.timeout(60)
def test_malformed_input_gets_error_replies_and_never_crashes(board):
    good = encode({"id": 77, "cmd": "identify"})
    body = b'{"id": 5, "cmd": "identify"}'
    cases = [
        (b"hello there\n", "bad_frame"),
        (b"FQ1 " + body + b"\n", "bad_frame"),
        (b"FQ1 " + body + b" 00000000\n", "bad_crc"),
        (good.replace(b"identify", b"identifx"), "bad_crc"),
        (b"FQ1 {oops %08x\n" % zlib.crc32(b"{oops"), "bad_json"),
        (b"FQ1 [1, 2] %08x\n" % zlib.crc32(b"[1, 2]"), "bad_request"),
        (encode({"id": 6, "cmd": "rm_rf"}), "unknown_cmd"),
        (encode({"id": 7, "cmd": "write_config", "cfg": "not an object"}), "invalid_config"),
        (encode({"id": 8, "cmd": "write_config", "cfg": dict(CFG, key="xyz")}), "invalid_config"),
        (b"\x00\x01\x02\xff\xfe\x1b[A\n", "bad_frame"),
        (b"FQ1 " + b"A" * 6000 + b"\n", "too_long"),
    ]
    payload = b"".join(c for c, _ in cases) + b"\n\n" + good
    lines = raw_exchange(board.port, payload, len(cases) + 1)
    replies = [decode(line) for line in lines]
    assert [r.get("error") for r in replies[:-1]] == [code for _, code in cases]
    assert all(r["ok"] is False for r in replies[:-1])
    assert replies[-1]["id"] == 77 and replies[-1]["ok"] is True
    # Still alive and unchanged: control socket answers, unit unprovisioned.
    assert board.alive and board.ping()["ok"]
    assert not os.path.exists(os.path.join(board.flash_dir, "data", "identity.cfg"))


@pytest.mark.timeout(60)
def test_selftest_drives_led_buzzer_and_reads_reader(board):
    board.card("04a1b2c3d4e5f6")
    with SerialConsole(board.port) as con:
        res = con.selftest()
    assert res["pass"] is True and res["reader"] == "ok" and res["reader_version"] == "0x92"
    assert res["card"] == "04a1b2c3d4e5f6"
    assert res["button"] is False and "rssi" in res and res["rssi"] is None  # a host board: no Wi-Fi
    colours = [v for _, v in board.led_history()]
    assert colours == [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1), (0, 0, 0)]
    assert [v for _, v in board.buzzer_history()] == [1, 0]
    # Two cards at once: the reader reports none rather than a mixed-up UID.
    board.card("04a1b2c3d4e5f6", uid2="08112233")
    with SerialConsole(board.port) as con:
        res = con.selftest()
    assert res["reader"] == "ok" and res["card"] is None
    assert board.state()["card"] == "04a1b2c3d4e5f6"
    # A locked-up reader is re-initialised by the self-test (RST pulse) and reported healthy.
    board.reader_fault("lockup")
    with SerialConsole(board.port) as con:
        res = con.selftest()
    assert res["reader"] == "ok" and board.state()["reader_reinits"] == 0  # self_check re-inits directly
    board.press()
    with SerialConsole(board.port) as con:
        assert con.selftest()["button"] is True  # held now (stuck, for `device check`)
    board.release()


@pytest.mark.timeout(60)
def test_cooked_tty_with_echo_still_works(tmp_path):
    """The board's tty left in cooked mode (echo on, CR/LF translation), as a careless setup or a
    terminal program would leave it: the tool skips its echoed requests, the unit does not answer
    echoed replies, provisioning still works."""
    with NullModem(board_raw=False) as nm:
        hb = HostBoard(tmp_path / "flash", entry="boards/host_console_main.py", console=nm.board_fd)
        hb.start()
        try:
            with SerialConsole(nm.port) as con:
                assert con.identify()["provisioned"] is False
                assert con.write_config(CFG) == key_fingerprint(bytes.fromhex(CFG["key"]))
                assert con.read_config()["device_id"] == 0x1234
            assert hb.alive
        finally:
            hb.stop()


@pytest.mark.timeout(60)
def test_retry_after_damaged_request_does_not_double_write(board):
    """A request the unit could not read (noise) is answered with id null and sent again; the
    client takes the reply to any copy, so write_config lands once and reports success."""
    with SerialConsole(board.port) as con:
        con._write(b"FQ1 {garbled by noise}\n")  # the unit answers bad_crc/bad_frame with id null
        fp = con.write_config(CFG)
        assert fp == key_fingerprint(bytes.fromhex(CFG["key"]))
        assert con.read_config()["device_id"] == 0x1234


@pytest.mark.timeout(60)
def test_console_on_the_application_entry_point(tmp_path):
    """main.py (the application's entry point) serves the same console on an unprovisioned unit."""
    with NullModem() as nm:
        hb = HostBoard(tmp_path / "flash", console=nm.board_fd)
        hb.start()
        try:
            with SerialConsole(nm.port) as con:
                info = con.identify()
                assert info["provisioned"] is False and info["hwid"] == hb.ping()["hwid"]
                assert con.write_config(CFG) == key_fingerprint(bytes.fromhex(CFG["key"]))
        finally:
            hb.stop()
    with open(os.path.join(str(tmp_path / "flash"), "data", "identity.cfg"), "rb") as f:
        line = f.read().split(b"\n")[0]
    assert json.loads(line)["device_id"] == 0x1234


@pytest.mark.timeout(90)
@pytest.mark.parametrize("role", ["alarm", "checkin"])
def test_console_on_a_running_role_refuses_reprovision(tmp_path, role):
    """A provisioned unit running its role (main.py, broker unreachable) still answers the console:
    identify and read-back work, a new identity is refused, with no MemoryError, in a 64 KB heap
    (the goal; both roles pass `fengqiao bench firmware` at 64 KB). The console imports its
    request handling and the identity for each request and drops them after the reply
    (console/__init__.py), so this is where that transient heap is exercised beside a running
    role; by then the free heap is in pieces of at most ~1 KB. The scenario is the bench's
    (tools.bench_firmware.console_beside_role), so that `fengqiao bench firmware --repeat 200
    --console-test --busy 2` runs exactly this test 200 times per role on a loaded machine."""
    from tools.bench_firmware import ScenarioFailed, console_beside_role

    try:
        console_beside_role(role, str(tmp_path / "unit"), 64)
    except ScenarioFailed as exc:
        pytest.fail(str(exc))
    assert read_device_id(tmp_path / "unit" / "flash") == 0x1234


@pytest.mark.timeout(90)
def test_selftest_on_a_running_alarm_button_leaves_its_heap_as_it_was(tmp_path):
    """An alarm button has no card reader: its self-test reports the reader absent without
    probing. (It used to build the host board's simulated reader and its driver for good: ~4 KB of
    a running 64 KB heap, and the next console request met MemoryError; issue 11.) The live heap
    after the session is within 1 KB of the heap before it."""
    from tools.hostboard import provision_dir
    from tools.testing.procs import free_port

    flash = tmp_path / "flash"
    provision_dir(flash, dict(CFG, role="alarm", broker_port=free_port()))
    with NullModem() as nm:
        hb = HostBoard(flash, console=nm.board_fd, heap="64k")
        hb.start()
        try:
            with SerialConsole(nm.port) as con:
                con.identify()  # the console's own first-use allocations, before the figure
                before = hb.request("mem", collect=True)["alloc"]
                for _ in range(3):
                    res = con.selftest()
                    assert res["reader"] == "absent" and "reader_version" not in res and res["pass"] is True
                after = hb.request("mem", collect=True)["alloc"]
            assert after - before < 1024, (before, after)
            assert "MemoryError" not in hb.log_tail(1 << 20), hb.log_tail(2000)
        finally:
            hb.stop()


def read_device_id(flash):
    with open(os.path.join(str(flash), "data", "identity.cfg"), "rb") as f:
        return json.loads(f.read().split(b"\n")[0])["device_id"]


class LoseReplies:
    """A noisy cable from the unit: drops whole reply lines that contain `needle` (the first
    `count` of them) and flips a byte in the first line containing `flip`."""

    def __init__(self, needle=b"", count=0, flip=None):
        self.needle, self.count, self.flip = needle, count, flip
        self.buf = b""

    def __call__(self, data):
        self.buf += data
        out = b""
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            if self.count and self.needle and self.needle in line:
                self.count -= 1
                continue
            if self.flip and self.flip in line:
                line = line.replace(self.flip, self.flip[:-1] + bytes([self.flip[-1] ^ 1]), 1)
                self.flip = None
            out += line + b"\n"
        return out


@pytest.mark.timeout(60)
def test_lost_and_damaged_replies(tmp_path):
    """The reply to write_config is lost: the resent copy finds the unit provisioned with our key
    and write_config still succeeds. A damaged identify reply (CRC fails) is asked again."""
    noise = LoseReplies(needle=b'"key_fingerprint"', count=1, flip=b'"product"')
    with NullModem(from_board=noise) as nm:
        hb = HostBoard(tmp_path / "flash", entry="boards/host_console_main.py", console=nm.board_fd)
        hb.start()
        try:
            with SerialConsole(nm.port, timeout_s=1.5) as con:
                assert con.identify()["product"] == "fengqiao"
                assert con.last_attempts >= 2  # the damaged reply was asked for again
                assert con.write_config(CFG) == key_fingerprint(bytes.fromhex(CFG["key"]))
        finally:
            hb.stop()
    assert read_device_id(tmp_path / "flash") == 0x1234
    assert noise.count == 0 and noise.flip is None  # both faults really happened


@pytest.mark.timeout(60)
def test_write_config_nonce_answers_a_repeat_and_clears_leftovers(board):
    """A write_config copy with the nonce of one that landed is answered from the stored identity
    (`repeat`), one with another nonce is refused; a fresh identity first removes what a factory
    reset cut short left in data/ (an old outbox), so it is never sent under the new one."""
    data = os.path.join(str(board.flash_dir), "data")
    os.makedirs(data, exist_ok=True)
    with open(os.path.join(data, "outbox.log"), "wb") as f:
        f.write(b"\xfa an erased identity's records")
    fp = key_fingerprint(bytes.fromhex(CFG["key"]))
    with SerialConsole(board.port) as con:
        first = con.request("write_config", cfg=CFG, nonce="n-1")
        assert first["key_fingerprint"] == fp and "repeat" not in first
        again = con.request("write_config", cfg=dict(CFG, key="00" * 32), nonce="n-1")
        assert again["key_fingerprint"] == fp and again["repeat"] is True   # not applied twice
        with pytest.raises(DeviceError) as exc:
            con.request("write_config", cfg=CFG, nonce="n-2")
        assert exc.value.code == "already_provisioned"
        with pytest.raises(DeviceError) as exc:
            con.request("write_config", cfg=CFG, nonce=7)
        assert exc.value.code == "bad_request"
        assert con.read_config()["nonce"] == "n-1"   # not a secret: it says which request wrote it
    assert os.listdir(data) == ["identity.cfg"]


def rekey_fields(cfg):
    return {"device_id": cfg["device_id"], "key_id": cfg["key_id"], "key": cfg["key"]}


@pytest.mark.timeout(90)
def test_rekey_replaces_the_identity_in_one_step_and_keeps_the_outbox(tmp_path):
    """rekey on a running alarm unit (broker unreachable, an alarm waiting in its outbox): refused
    for another device id or the same key id; else the new key and key id in one rename, data/
    kept, the unit resets; after the reset the alarm is still waiting, a new press is numbered
    above it (no clash with the outbox), and a repeat of the request (same nonce) is answered
    from what landed."""
    from tools.hostboard import provision_dir
    from tools.testing.procs import free_port, wait_for

    flash = tmp_path / "flash"
    provision_dir(flash, dict(CFG, role="alarm", checkpoint_id=None, broker_port=free_port()))
    new = dict(CFG, role="alarm", checkpoint_id=None, key_id=3, key="7e" * 32)
    with NullModem() as nm:
        hb = HostBoard(flash, console=nm.board_fd, heap="64k")
        hb.start()
        try:
            hb.hold(1300)
            wait_for(lambda: os.path.exists(os.path.join(str(flash), "data", "outbox.log")) and outbox_seqs(flash),
                     15, "the alarm stored in the outbox")
            waiting = outbox_seqs(flash)
            with SerialConsole(nm.port, timeout_s=2) as con:
                for bad in (dict(new, device_id=0x4321), dict(new, key_id=2), dict(new, key="5a")):
                    with pytest.raises(DeviceError) as exc:
                        con.request("rekey", nonce="r-0", **rekey_fields(bad))
                    assert exc.value.code == "invalid_config", exc.value.detail
                reply = con.request("rekey", nonce="r-1", **rekey_fields(new))
                assert reply["key_fingerprint"] == key_fingerprint(b"\x7e" * 32) and reply["rebooting"] is True
            assert hb.wait_exit(10) == 3
            with open(os.path.join(str(flash), "data", "identity.cfg"), "rb") as f:
                stored = json.loads(f.read().split(b"\n")[0])
            assert (stored["key_id"], stored["prev_key_id"], stored["prev_key"]) == (3, 2, "5a" * 32)
            assert stored["prev_below"] > max(waiting) and outbox_seqs(flash) == waiting
            hb.restart()
            with SerialConsole(nm.port, timeout_s=2) as con:
                again = con.request("rekey", nonce="r-1", **rekey_fields(dict(new, key="00" * 32)))
                assert again["repeat"] is True and again["key_fingerprint"] == reply["key_fingerprint"]
                back = con.read_config()
                assert back["key_id"] == 3 and back["prev_key_fingerprint"] == key_fingerprint(b"\x5a" * 32)
                assert "prev_key" not in back and "5a" * 32 not in json.dumps(back)
            hb.hold(1300)
            wait_for(lambda: len(outbox_seqs(flash)) > len(waiting), 15, "the second alarm stored")
            seqs = outbox_seqs(flash)
            assert seqs[:len(waiting)] == waiting and min(seqs[len(waiting):]) >= stored["prev_below"]
            log = hb.log_tail(1 << 20)
            assert hb.alive and "MemoryError" not in log and "ValueError" not in log, log[-3000:]
        finally:
            hb.stop()


@pytest.mark.timeout(120)
def test_rekey_with_the_cable_pulled_mid_request_at_the_reply_and_mid_reply(tmp_path):
    """The cable pulled while a rekey is under way (half the request line reached the unit; the
    whole request and no reply; the unit's reply torn after 12 bytes): the unit holds its old
    identity or the new one, never neither, with its waiting alarm; once plugged back the same
    request (same nonce) finishes it, answered from what landed if it had. One unit, key ids 3..5."""
    from tools.hostboard import provision_dir
    from tools.serialconsole import ConsoleError
    from tools.testing.deploy_rig import CutAt, PowerOn
    from tools.testing.procs import free_port, wait_for

    flash = tmp_path / "flash"
    provision_dir(flash, dict(CFG, role="alarm", checkpoint_id=None, broker_port=free_port()))
    cut = CutAt()
    with NullModem(cable=cut) as nm:
        hb = HostBoard(flash, console=nm.board_fd, heap="64k")
        hb.start()
        power = PowerOn(hb)
        try:
            hb.hold(1300)
            wait_for(lambda: os.path.exists(os.path.join(str(flash), "data", "outbox.log")) and outbox_seqs(flash),
                     15, "the alarm stored in the outbox")
            waiting = outbox_seqs(flash)
            for key_id, mode in ((3, "mid-request"), (4, "request"), (5, "mid-reply")):
                new = dict(CFG, role="alarm", checkpoint_id=None, key_id=key_id, key="%02x" % key_id * 32)
                nonce = "cut-%d" % key_id
                with open(os.path.join(str(flash), "data", "identity.cfg"), "rb") as f:
                    before = json.loads(f.read().split(b"\n")[0])
                # the unit is up and has answered everything sent before (a copy of the last round's
                # request queued while it was resetting): no stale reply is taken for this round's
                with SerialConsole(nm.port, timeout_s=2) as con:
                    con.identify()
                resets = power.resets
                cut.arm(mode, 0)
                with SerialConsole(nm.port, timeout_s=0.3, retries=0) as con:
                    with pytest.raises(ConsoleError):
                        con.rekey(new, nonce=nonce, timeout_s=0.2)
                assert cut.dead.is_set()
                if mode != "mid-request":    # the unit acted: it resets, whatever became of its reply
                    wait_for(lambda: power.resets > resets, 10, "the unit reset after the rekey")
                with open(os.path.join(str(flash), "data", "identity.cfg"), "rb") as f:
                    now = json.loads(f.read().split(b"\n")[0])
                assert now["key_id"] == (before["key_id"] if mode == "mid-request" else key_id), (mode, now["key_id"])
                # the waiting records are kept either way (a reset adds its boot event)
                assert set(waiting) <= set(outbox_seqs(flash)), mode
                cut.mend()
                wait_for(lambda: hb.alive, 10, "the unit powered on")
                with SerialConsole(nm.port, timeout_s=2) as con:
                    fp = con.rekey(new, nonce=nonce, timeout_s=15)
                assert fp == key_fingerprint(bytes([key_id]) * 32)
                wait_for(lambda: hb.alive, 10, "the unit powered on")
                with open(os.path.join(str(flash), "data", "identity.cfg"), "rb") as f:
                    now = json.loads(f.read().split(b"\n")[0])
                assert (now["key_id"], now["nonce"], now["prev_key_id"]) == (key_id, nonce, before["key_id"]), mode
                assert set(waiting) <= set(outbox_seqs(flash)), mode
            log = hb.log_tail(1 << 20)
            assert "MemoryError" not in log and "ValueError" not in log, log[-3000:]
        finally:
            power.close()
            hb.stop()
