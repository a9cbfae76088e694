"""Flashing inside `fengqiao deploy`: a host board whose code directory holds other firmware (another
hash, a stale source twin) is flashed with this tool's image, every file verified by hash
read-back, reset, identified again, then deployed as usual; with --no-flash it is refused, naming
the command. Host boards on real ptys, a real gateway DB and Mosquitto (tools/testing/deploy_rig)."""

import os
import re
import shutil

import pytest

from tools import flash
from tools.cli import main
from tools.hostboard import HostBoard, NullModem
from tools.testing.deploy_rig import DeployRig, PowerOn, other_firmware


@pytest.fixture
def bench(tmp_path):
    rig = DeployRig(tmp_path, boards=0)
    rig.rows = [dict(r, place="hh-f%02d" % i) for i, r in enumerate(DeployRig(tmp_path, 2).rows)]
    rig.start()
    # "other firmware": the image with another hash and a stale source twin (selftest.py beside
    # selftest.mpy: MicroPython would import the source first)
    code = other_firmware(os.path.join(rig.work, "code"))
    shutil.copyfile(os.path.join(flash.FIRMWARE_DIR, "selftest.py"), os.path.join(code, "selftest.py"))
    modem = NullModem()
    hb = HostBoard(os.path.join(rig.work, "flashboard"), console=modem.board_fd, hwid="hb-flash", image=code)
    hb.start()
    rig.modems, rig.boards, rig.n = [modem], [hb], 1
    power = PowerOn(hb)
    yield rig, hb, code, power
    power.close()
    rig.close()


@pytest.mark.timeout(120)
def test_deploy_flashes_other_firmware_verifies_it_then_deploys(bench, capsys):
    rig, hb, code, power = bench
    plan = rig.write_plan(rig.rows[:1], "flash.csv")
    rig.plug(0)
    assert main(rig.deploy_args(plan, "--no-reboot", "--no-flash")) == 1
    out = capsys.readouterr().out
    assert "has firmware 0123456789abcdef" in out and "flash it first (`fengqiao flash --board host" in out, out
    assert flash.read_hash(code) == "0123456789abcdef"     # refused: nothing written

    rig.unplug(0)
    rig.plug(0)
    assert main(rig.deploy_args(plan, "--no-reboot")) == 0
    out = capsys.readouterr().out
    want = flash.read_hash(flash.build_image("host"))
    assert "board 1 of 1 — has firmware 0123456789abcdef, this tool's image is %s: flashing" % want in out, out
    assert "board 1 of 1 — flashing 100 %" in out and re.search(r"— flashing [1-9]\d %", out), out
    assert "flashed %s, every file verified by hash read-back" % want in out, out
    assert " done " in out and "FAILED" not in out, out
    assert power.resets == 1                                 # reset once, after the flash
    image = flash.build_image("host")
    assert flash.file_hashes(code) == flash.file_hashes(image) and flash.read_hash(code) == want
    assert not os.path.exists(os.path.join(code, "selftest.py"))   # the stale twin went
    assert os.path.exists(os.path.join(hb.flash_dir, "data", "identity.cfg"))   # then deployed as usual


def test_a_file_that_reads_back_wrong_is_named(tmp_path, monkeypatch):
    image = flash.build_image("host")
    real = shutil.copyfile

    def flaky(src, dst, *a, **kw):   # a flash cell that does not keep what was written
        out = real(src, dst, *a, **kw)
        if dst.endswith(os.path.join("protocol", "frame.mpy.tmp")):
            with open(dst, "r+b") as f:
                f.seek(10)
                f.write(b"\xff")
        return out

    monkeypatch.setattr(shutil, "copyfile", flaky)
    with pytest.raises(flash.FlashVerifyError, match="protocol/frame.mpy read back with SHA-256"):
        flash.flash_dir(image, str(tmp_path / "code"))
    assert flash.read_hash(str(tmp_path / "code")) is None   # no hash: the next deploy flashes it again


@pytest.mark.timeout(180)
def test_bench_deploy_with_flash_flashes_every_board_and_counts_it_per_board(capsys):
    import json

    assert main(["bench", "deploy", "--boards", "2", "--flash"]) == 0
    out = capsys.readouterr().out
    r = json.loads(out.strip().splitlines()[-1])
    assert r["flash"] is True
    two = r["deploy"]["2"]
    assert two["done"] == 2 and two["flashed"] == 2, out
    assert "flashing included" in out and 0 < two["per_board_s_max"] < 60, out
