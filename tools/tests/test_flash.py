"""`fengqiao flash`: what goes onto a board (no hardware needed for these), the compiled image,
and clear errors for a missing port or tool."""

import os
import types

import pytest

from tools import flash
from tools.cli import main
from tools.errors import CliError


def dests(board):
    return [rel for _src, rel in flash.image_files(board)]


def test_board_image_has_the_app_its_board_and_the_device_codec_only():
    import protocol

    files = dests("esp32")
    assert "main.py" in files and "console/__init__.py" in files and "identity/__init__.py" in files
    assert "console/admin.py" in files and "identity/write.py" in files
    assert "boards/esp32.py" in files and "boards/wiring_esp32.py" in files and "boards/mcu.py" in files
    assert "drivers/mfrc522.py" in files and "drivers/button.py" in files
    for name in protocol.DEVICE_FILES:
        assert "protocol/" + name in files
    # Not on an ESP32: the host board's simulation, the Pico W's board, tests, gateway-side protocol.
    for absent in ("boards/host.py", "boards/sim_mfrc522.py", "boards/picow.py", "boards/wiring_picow.py",
                   "protocol/strict.py", "protocol/gen_vectors.py"):
        assert absent not in files
    assert not any(f.startswith("tests/") for f in files)
    picow = dests("picow")
    assert "boards/picow.py" in picow and "boards/esp32.py" not in picow
    host = dests("host")
    assert "boards/host.py" in host and "boards/mcu.py" not in host


def test_list_shows_compiled_names(capsys):
    assert main(["flash", "--board", "picow", "--list"]) == 0
    out = capsys.readouterr().out.split()
    assert "main.py" in out  # entry point stays source: MicroPython runs main.py at reset
    assert "console/__init__.mpy" in out and "protocol/frame.mpy" in out and "boards/picow.mpy" in out
    assert not [f for f in out if f.endswith(".py") and f not in ("main.py", "boot.py")]


@pytest.mark.timeout(120)
def test_image_compiles_every_module():
    # build_image stages into build/images (cached across runs until a source file changes).
    image = flash.build_image("esp32")
    assert flash.build_image("esp32") == image
    for name in flash._image_names("esp32", True):
        path = os.path.join(image, name)
        assert os.path.isfile(path) and os.path.getsize(path) > 0, name
        if name.endswith(".mpy"):
            with open(path, "rb") as f:
                assert f.read(1) == b"M", name  # .mpy magic


def test_image_fingerprint_follows_the_sources(monkeypatch):
    before = flash._fingerprint("host", True)
    real_stat = os.stat

    def touched(path, *a, **kw):
        st = real_stat(path, *a, **kw)
        if str(path).endswith(os.path.join("firmware", "console", "__init__.py")):
            return types.SimpleNamespace(st_size=st.st_size + 1, st_mtime_ns=st.st_mtime_ns)
        return st

    monkeypatch.setattr(os, "stat", touched)
    assert flash._fingerprint("host", True) != before


def test_missing_port_is_a_clear_error(capsys):
    assert main(["flash", "--board", "esp32", "--port", "/dev/ttyUSB97"]) == 1
    err = capsys.readouterr().err
    assert "/dev/ttyUSB97 does not exist" in err and "plugged in" in err
    assert main(["flash", "--board", "esp32"]) == 1
    assert "no --port" in capsys.readouterr().err


def test_mpremote_command_line():
    argv = flash.mpremote_argv("/dev/ttyACM0", ["boards", "main.py"])
    assert argv[1:] == ["connect", "/dev/ttyACM0", "fs", "cp", "-r", "boards", "main.py", ":", "+", "reset"]


def test_unknown_board():
    with pytest.raises(CliError):
        flash.image_files("arduino")


def test_stale_twins_never_touch_data_and_cover_packages():
    twins = flash.stale_twins(["console/__init__.mpy", "console/admin.mpy", "main.py", "drivers/led.mpy"])
    assert "console.py" in twins and "console.mpy" in twins  # the module that became a package
    assert "console/__init__.py" in twins and "drivers/led.py" in twins and "main.mpy" in twins
    assert "drivers.py" in twins and not any(t.startswith("data") for t in twins)
    assert "main.py" not in twins and "drivers/led.mpy" not in twins
    code = flash.cleanup_code(twins)
    compile(code, "cleanup", "exec")  # valid Python (and MicroPython: only os.remove and try)
    argv = flash.mpremote_argv("/dev/ttyUSB0", ["console", "main.py"], twins=twins)
    assert argv[3] == "exec" and argv[5] == "+" and argv[6:9] == ["fs", "cp", "-r"]


def test_frozen_manifest_lists_every_module_but_the_entry_point(tmp_path, capsys):
    out = tmp_path / "manifest.py"
    assert main(["flash", "--board", "picow", "--manifest", str(out)]) == 0
    text = out.read_text()
    compile(text, str(out), "exec")  # manifests are Python
    frozen = []

    def module(name, base_path):
        assert os.path.isfile(os.path.join(base_path, name))
        frozen.append(name)

    def package(top, files, base_path):
        for f in files:
            assert os.path.isfile(os.path.join(base_path, top, f)), (top, f)
            frozen.append("%s/%s" % (top, f))

    exec(text, {"include": lambda path: None, "module": module, "package": package})
    assert sorted(frozen) == sorted(d for d in dests("picow") if d != "main.py")
    assert "boards/host_wdt.py" not in frozen and "protocol/frame.py" in frozen


@pytest.mark.timeout(120)
@pytest.mark.parametrize("entry_only", [False, True])
def test_run_hands_mpremote_the_staged_image(monkeypatch, capsys, entry_only):
    """Up to the mpremote call (the board itself is the stubbed neighbour here): what is staged,
    what is cleaned up, what is copied."""
    import subprocess

    real_run = subprocess.run
    seen = {}

    def fake_run(argv, **kw):
        if os.path.basename(argv[0]) == "mpremote":
            seen["argv"] = argv
            seen["files"] = sorted(os.path.relpath(os.path.join(d, f), kw["cwd"])
                                   for d, _, fs in os.walk(kw["cwd"]) for f in fs)
            return subprocess.CompletedProcess(argv, 0, "", "")
        return real_run(argv, **kw)

    monkeypatch.setattr(flash.subprocess, "run", fake_run)
    master, slave = os.openpty()
    try:
        port = os.ttyname(slave)
        args = ["flash", "--board", "esp32", "--port", port] + (["--entry-only"] if entry_only else [])
        assert main(args) == 0, capsys.readouterr().err
    finally:
        os.close(master)
        os.close(slave)
    argv = seen["argv"]
    assert argv[1:3] == ["connect", port] and argv[3] == "exec" and argv[-2:] == ["+", "reset"]
    cp = argv.index("cp")
    items = argv[cp + 2: argv.index(":", cp)]
    cleanup = argv[4]
    if entry_only:
        assert items == ["main.py"] and "'/console/__init__.mpy'" in cleanup and "'/main.py'" not in cleanup
    else:
        assert "main.py" in items and "console" in items and "protocol" in items
        assert "console/__init__.mpy" in seen["files"] and "boards/esp32.mpy" in seen["files"]
        assert "'/console.py'" in cleanup and "'/main.mpy'" in cleanup
    assert "flashed" in capsys.readouterr().out


def test_romfs_image_holds_every_module_compiled(tmp_path, capsys):
    """The ROMFS image (mpremote's VfsRom format) has one .mpy per module, entry point included,
    each compiled with its board path (/rom/...) as source name; the host board runs from it."""
    out = tmp_path / "fw.romfs"
    assert main(["flash", "--board", "picow", "--romfs", str(out)]) == 0
    data = out.read_bytes()
    assert data.startswith(b"\xd2\xcd\x31")  # the ROMFS header
    for _src, rel in flash.image_files("picow"):
        name = rel.rsplit("/", 1)[-1][:-3] + ".mpy"
        assert name.encode() in data, name
        assert ("/rom/" + rel[:-3] + ".mpy").encode() in data, rel
    assert b"main.py" not in data  # compiled too: nothing is compiled from source on the board
    assert "mpremote connect PORT romfs deploy" in capsys.readouterr().out


def test_flash_host_needs_a_running_host_board(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FENGQIAO_HOSTBOARDS", str(tmp_path / "boards"))
    assert main(["flash", "--board", "host"]) == 1
    assert "no host board is running" in capsys.readouterr().err
    assert main(["flash", "--board", "host", "--hostboard", "li"]) == 1
    assert "no host board 'li' is running" in capsys.readouterr().err
    assert main(["flash", "--board", "esp32", "--hostboard", "li", "--port", "/dev/null"]) == 1
    assert "--hostboard goes with --board host" in capsys.readouterr().err
