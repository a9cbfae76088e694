"""`fengqiao provision` against a host board whose console is on a real pty (tools.hostboard.NullModem):
the CLI opens /dev/pts/N with pyserial exactly as it would open /dev/ttyUSB0."""

import os
import subprocess
import sys
import threading

import pytest

from tools.cli import main
from tools.hostboard import HostBoard, NullModem, key_fingerprint
from tools.testing.procs import REPO_ROOT


def read_identity(flash_dir):
    import json

    with open(os.path.join(flash_dir, "data", "identity.cfg"), "rb") as f:
        return json.loads(f.read().split(b"\n")[0])


@pytest.fixture
def unit(tmp_path):
    nm = NullModem()
    hb = HostBoard(tmp_path / "flash", entry="boards/host_console_main.py", console=nm.board_fd)
    hb.start()
    hb.port = nm.port
    yield hb
    hb.stop()
    nm.close()


def base_args(port, device="0000002a", *extra):
    return ["provision", "--port", port, "--device-id", device, "--broker-host", "127.0.0.1",
            "--broker-port", "18883", "--timeout-s", "5"] + list(extra)


@pytest.mark.timeout(90)
def test_provision_cli_over_pty_then_refuse_then_factory_reset(unit, tmp_path):
    key_out = tmp_path / "k1.hex"
    label = tmp_path / "label.txt"
    # The real command line, as a technician runs it (a separate process opening the pty).
    proc = subprocess.run([os.path.join(REPO_ROOT, ".venv", "bin", "fengqiao")]
                          + base_args(unit.port, "0000002a", "--role", "checkin", "--checkpoint-id", "12",
                                      "--setting", "checkin_repeat_s=120", "--pin", "button.pin=4",
                                      "--key-out", str(key_out), "--label-file", str(label), "--no-reboot"),
                          capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    stored = read_identity(unit.flash_dir)
    key_hex = stored["key"]
    assert key_out.read_text().strip() == key_hex and oct(os.stat(key_out).st_mode & 0o777) == "0o600"
    fp = key_fingerprint(bytes.fromhex(key_hex))
    assert "fingerprint %s" % fp in proc.stdout and "device   0000002a" in proc.stdout
    assert "patrol check-in point" in proc.stdout and "checkpoint 12" in proc.stdout
    assert key_hex not in proc.stdout + proc.stderr  # the key is never printed
    assert label.read_text().strip() in proc.stdout
    assert (stored["device_id"], stored["role"], stored["checkpoint_id"]) == (0x2A, "checkin", 12)
    assert stored["settings"]["checkin_repeat_s"] == 120 and stored["pins"] == {"button.pin": 4}
    assert len(set(bytes.fromhex(key_hex))) > 8  # random, not a constant

    # Refused re-provision: exit 1, a message that says what to do; the unit keeps its identity.
    with open(os.path.join(unit.flash_dir, "data", "outbox.bin"), "wb") as f:
        f.write(b"events of the old identity")
    rc = main(base_args(unit.port, "0000002b", "--role", "alarm", "--key-out", str(tmp_path / "k2.hex")))
    assert rc == 1
    assert read_identity(unit.flash_dir)["key"] == key_hex
    assert not (tmp_path / "k2.hex").exists()

    # With --factory-reset: erased (old data files too), re-provisioned with a new key, rebooted.
    rc = main(base_args(unit.port, "0000002b", "--role", "alarm", "--key-out", str(tmp_path / "k2.hex"),
                        "--factory-reset"))
    assert rc == 0
    stored2 = read_identity(unit.flash_dir)
    assert stored2["device_id"] == 0x2B and stored2["key"] != key_hex
    assert not os.path.exists(os.path.join(unit.flash_dir, "data", "outbox.bin"))
    assert unit.wait_exit(10) == 3  # the host board's reboot: exit status 3
    unit.restart()
    assert unit.state()["reset_reason"] == 4  # soft reset after the console's reboot


@pytest.mark.timeout(60)
def test_wifi_password_from_file_never_printed(unit, tmp_path, capsys):
    pw = tmp_path / "wifi.txt"
    pw.write_text("correct horse battery\n")
    rc = main(base_args(unit.port, "000000f1", "--role", "alarm", "--wifi-ssid", "village-office",
                        "--wifi-password-file", str(pw), "--key-out", str(tmp_path / "k"), "--no-reboot"))
    assert rc == 0
    captured = capsys.readouterr()
    assert "correct horse" not in captured.out + captured.err
    stored = read_identity(unit.flash_dir)
    assert (stored["wifi_ssid"], stored["wifi_password"]) == ("village-office", "correct horse battery")


def test_refusal_message(unit, tmp_path, capsys):
    assert main(base_args(unit.port, "00000001", "--role", "alarm", "--key-out", str(tmp_path / "a"), "--no-reboot")) == 0
    capsys.readouterr()
    assert main(base_args(unit.port, "00000002", "--role", "alarm", "--key-out", str(tmp_path / "b"))) == 1
    err = capsys.readouterr().err
    assert "already has an identity (device 00000001)" in err and "--factory-reset" in err


@pytest.mark.timeout(60)
def test_registers_with_gateway_registry(unit, tmp_path, capsys):
    from gateway.registry import Registry

    db, mk = str(tmp_path / "gw.db"), str(tmp_path / "master.key")
    rc = main(base_args(unit.port, "0000abcd", "--role", "alarm", "--gateway-db", db, "--master-key", mk,
                        "--no-reboot"))
    assert rc == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    reg = Registry(db, mk)
    try:
        dev = reg.device(0xABCD)
        assert (dev.role, dev.status, dev.key_id) == ("alarm_button", "active", 1)
        key = reg.device_key(0xABCD, 1)
    finally:
        reg.close()
    assert key.hex() == read_identity(unit.flash_dir)["key"]  # the unit and the gateway hold the same key
    assert key.hex() not in out and key_fingerprint(key) in out


@pytest.mark.timeout(60)
def test_known_device_id_refused_before_touching_the_unit(unit, tmp_path, capsys):
    from gateway.registry import Registry

    db, mk = str(tmp_path / "gw.db"), str(tmp_path / "master.key")
    reg = Registry(db, mk)
    reg.add_device(0x77, "alarm_button")
    reg.close()
    rc = main(base_args(unit.port, "00000077", "--role", "alarm", "--gateway-db", db, "--master-key", mk))
    assert rc == 1 and "already knows device 00000077" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(unit.flash_dir, "data", "identity.cfg"))


@pytest.fixture
def pty_port():
    """A real serial port (a pty) with nothing behind it: for errors found before the unit is asked."""
    with NullModem() as nm:
        yield nm.port


def test_absent_port_is_said_first(tmp_path, capsys):
    # Only --port given, every other required option missing: the port is what is reported.
    rc = main(["provision", "--port", "/dev/pts/98765"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "/dev/pts/98765 does not exist" in err and "plugged in" in err and "fengqiao hostboard port" in err
    rc = main(base_args("/dev/pts/98765", "0000002a", "--role", "alarm", "--key-out", str(tmp_path / "k")))
    assert rc == 1 and not (tmp_path / "k").exists()


def test_not_a_serial_port_is_said_first(tmp_path, capsys):
    plain = tmp_path / "notes.txt"
    plain.write_text("x")
    for port, what in ((str(plain), "it is a plain file"), (str(tmp_path), "it is a directory"),
                       ("/dev/null", "no tty")):
        assert main(["provision", "--port", port, "--role", "alarm"]) == 1
        err = capsys.readouterr().err
        assert "%s is not a serial port" % port in err and what in err, err
    assert main(base_args("/dev/null", "0000002a", "--role", "alarm", "--key-out", str(tmp_path / "k"))) == 1
    assert not (tmp_path / "k").exists()


def test_busy_port_is_said_before_the_gateway_is_touched(pty_port, tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               "fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(60)",
                               pty_port], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        db = tmp_path / "g.db"
        rc = main(base_args(pty_port, "0000002a", "--role", "alarm", "--gateway-db", str(db),
                            "--master-key", str(tmp_path / "m.key")))
        assert rc == 1
        err = capsys.readouterr().err
        assert "%s is busy" % pty_port in err and "(python" in err and "pid %d" % holder.pid in err, err
        assert not db.exists()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    # The lock went with the holder: the port is free again, and the next mistake is the next thing said.
    assert main(base_args(pty_port, "2a", "--role", "alarm", "--key-out", str(tmp_path / "k"))) == 1
    assert "--device-id" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a port only another group may open")
def test_no_permission_names_the_group(pty_port):
    """check_port (what `provision --port` runs first) in a forked child that is user nobody."""
    import grp

    from tools.serialconsole import PortError, check_port

    group = grp.getgrgid(20).gr_name  # dialout on Debian/Ubuntu
    os.chown(pty_port, 0, 20)
    os.chmod(pty_port, 0o660)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no exceptions may escape into pytest's own code
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                check_port(pty_port)
                msg = "no error"
            except PortError as exc:
                msg = "%s|%s" % (exc.reason, exc)
            os.write(w, msg.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        reason, _, text = f.read().partition("|")
    os.waitpid(pid, 0)
    assert reason == "no_permission", text
    assert "no permission to open %s" % pty_port in text and "group %s" % group in text, text
    assert "usermod -aG %s" % group in text


def test_key_must_go_somewhere(pty_port, capsys):
    assert main(base_args(pty_port, "0000002a", "--role", "alarm")) == 1
    assert "--key-out" in capsys.readouterr().err
    # The registry's word for the role is accepted, with a note saying the one to use.
    assert main(base_args(pty_port, "0000002a", "--role", "alarm_button")) == 1
    err = capsys.readouterr().err
    assert "say --role alarm" in err and "--key-out" in err


def test_bad_arguments_are_clear(pty_port, tmp_path, capsys):
    assert main(base_args(pty_port, "2a", "--role", "alarm", "--key-out", str(tmp_path / "k"))) == 1
    assert "--device-id" in capsys.readouterr().err
    assert main(base_args(pty_port, "0000002a", "--role", "checkin", "--key-out", str(tmp_path / "k"))) == 1
    assert "--checkpoint-id is required" in capsys.readouterr().err


class FakeRepl:
    """A device that is not a Fengqiao unit: a MicroPython REPL answering every line with a prompt."""

    def __init__(self, fd):
        self.fd = fd
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        import select

        os.write(self.fd, b"MicroPython v1.22.0 on 2024-01-01; ESP32 module with ESP32\r\n>>> ")
        while not self.stop:
            r, _, _ = select.select([self.fd], [], [], 0.05)
            if r:
                try:
                    data = os.read(self.fd, 4096)
                except OSError:
                    return
                for _ in range(data.count(b"\n")):
                    os.write(self.fd, b"\r\nSyntaxError: invalid syntax\r\n>>> ")


@pytest.mark.timeout(60)
def test_not_a_fengqiao_device_is_a_clear_error(tmp_path, capsys):
    with NullModem() as nm:
        repl = FakeRepl(nm.board_fd)
        try:
            rc = main(base_args(nm.port, "0000002a", "--role", "alarm", "--key-out", str(tmp_path / "k"),
                                "--timeout-s", "0.5"))
        finally:
            repl.stop = True
    assert rc == 1
    err = capsys.readouterr().err
    assert "no Fengqiao console answered on %s" % nm.port in err and "SyntaxError" in err
    assert not (tmp_path / "k").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))


@pytest.mark.timeout(90)
def test_gateway_config_registers_allows_on_broker_and_gives_tls_settings(unit, tmp_path, capsys):
    from gateway.registry import Registry

    gw = tmp_path / "gw"
    conf = tmp_path / "gateway.toml"
    conf.write_text('[gateway]\ndata_dir = "%s"\n[broker]\ntls_port = 28883\n' % gw)
    rc = main(["provision", "--port", unit.port, "--device-id", "000000c1", "--role", "checkin",
               "--checkpoint-id", "3", "--broker-host", "township.local", "--gateway-config", str(conf),
               "--no-reboot"])
    assert rc == 0, capsys.readouterr().err
    stored = read_identity(unit.flash_dir)
    ca = (gw / "broker" / "ca.pem").read_text()
    assert stored["tls"] is True and stored["ca_pem"].strip() == ca.strip() and stored["broker_port"] == 28883
    assert (gw / "broker" / "passwd").read_text().startswith("000000c1:")
    reg = Registry(str(gw / "gateway.db"), str(gw / "master.key"))
    try:
        assert reg.device_key(0xC1, 1).hex() == stored["key"]
        assert reg.device(0xC1).role == "checkpoint"
    finally:
        reg.close()


@pytest.mark.timeout(60)
def test_selftest_before_provisioning(tmp_path, capsys):
    # 96 KB: self-test (reader driver + simulated chip) and then the write side of the console
    # in one boot is more code than a 64 KB heap holds on the 64-bit Unix port, where bytecode
    # lives in the heap (on a board it is frozen into flash; see firmware/LINK.md "Memory").
    with NullModem() as nm:
        with HostBoard(tmp_path / "f", entry="boards/host_console_main.py", console=nm.board_fd, heap="96k") as hb:
            hb.card("deadbeef")
            rc = main(base_args(nm.port, "000000d1", "--role", "checkin", "--checkpoint-id", "1", "--selftest",
                                "--key-out", str(tmp_path / "k"), "--no-reboot"))
            assert rc == 0, capsys.readouterr().err
            out = capsys.readouterr().out
            assert "self-test: LED driven" in out and "reader ok (MFRC522 version 0x92, card deadbeef)" in out
            assert [v for _, v in hb.led_history()][:4] == [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1)]
            assert read_identity(hb.flash_dir)["device_id"] == 0xD1


@pytest.mark.timeout(60)
def test_selftest_failure_stops_provisioning(tmp_path, capsys):
    with NullModem() as nm:
        with HostBoard(tmp_path / "f", entry="boards/host_console_main.py", console=nm.board_fd, no_rfid=True) as hb:
            rc = main(base_args(nm.port, "000000d2", "--role", "checkin", "--checkpoint-id", "1", "--selftest",
                                "--key-out", str(tmp_path / "k")))
            assert rc == 1 and "self-test failed" in capsys.readouterr().err
            assert not os.path.exists(os.path.join(hb.flash_dir, "data", "identity.cfg"))


@pytest.mark.timeout(60)
def test_gateway_failure_rolls_the_unit_back(unit, tmp_path, capsys):
    db, mk = str(tmp_path / "gw.db"), str(tmp_path / "master.key")
    key_out = tmp_path / "k"
    rc = main(base_args(unit.port, "000000e1", "--role", "alarm", "--gateway-db", db, "--master-key", mk,
                        "--place", "no-such-place", "--key-out", str(key_out), "--no-reboot"))
    assert rc == 1
    err = capsys.readouterr().err
    assert "unknown place" in err and "reset to unprovisioned" in err
    assert not os.path.exists(os.path.join(unit.flash_dir, "data", "identity.cfg"))
    assert not key_out.exists()


@pytest.mark.timeout(60)
def test_read_back_mismatch_resets_the_unit(unit, tmp_path, capsys, monkeypatch):
    """A transfer that stored something else (simulated: the read-back is altered on the way)."""
    from tools import serialconsole

    real = serialconsole.SerialConsole.read_config

    def altered(self):
        cfg = real(self)
        cfg["broker_port"] += 1
        return cfg

    monkeypatch.setattr(serialconsole.SerialConsole, "read_config", altered)
    rc = main(base_args(unit.port, "000000e2", "--role", "alarm", "--key-out", str(tmp_path / "k"), "--no-reboot"))
    assert rc == 1 and "different broker_port" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(unit.flash_dir, "data", "identity.cfg"))
    assert not (tmp_path / "k").exists()
