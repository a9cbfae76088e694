"""A pulled cable at every console step of `fengqiao deploy`, then a rerun: the board is never left
keyed without registration at the end, nor registered without its key; the rerun finishes it.

The cable is a NullModem whose pump stops forwarding (both ways) at a chosen point, as a pulled USB
cable does: after the board's k-th reply ("reply" cut: the k+1-th request never reaches the board)
or after the k+1-th request reached the board but before its reply left ("request" cut: the board
acted, the tool never hears it — the write that landed unseen)."""

import os
import select
import threading

import pytest

from tools.cli import main
from tools.hostboard import HostBoard, NullModem, board_heap
from tools.testing.deploy_rig import DeployRig

STEPS = ("identify", "selftest", "write_config", "read_config")   # the console requests of one board (--no-reboot)


class CutCable(NullModem):
    """A null modem that goes dead at a chosen point; `mend()` plugs it back."""

    def __init__(self):
        self.cut_at = None          # (mode, k) or None: no cut
        self.dead = threading.Event()
        self._replies = self._requests = 0
        super().__init__()

    def arm(self, mode, k):
        """reply, k: the cable dies after the board's k-th reply (k = 0: before the first request);
        request, k: the k+1-th request reaches the board, its reply is lost."""
        self._replies = self._requests = 0
        self.cut_at = (mode, k)
        self.dead.clear()
        if mode == "reply" and k == 0:
            self.dead.set()

    def mend(self):
        self.cut_at = None
        self.dead.clear()

    def _pump(self):
        while not self._stop:
            try:
                ready, _, _ = select.select([self._m1, self._m2], [], [], 0.05)
            except (OSError, ValueError):
                return
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                if self.dead.is_set():
                    continue            # the cable is out: bytes go nowhere
                from_board = fd == self._m1
                if self.cut_at is not None:
                    mode, k = self.cut_at
                    if from_board and mode == "request" and self._requests > k:
                        self.dead.set()     # the board acted on request k+1: its answer is lost
                        continue
                    if from_board:
                        self._replies += data.count(b"FQ1 ")
                    else:
                        self._requests += data.count(b"FQ1 ")
                    if mode == "reply" and self._replies >= k:
                        self.dead.set()     # this reply still gets through; nothing after it
                try:
                    os.write(self._m2 if from_board else self._m1, data)
                except OSError:
                    pass


@pytest.fixture
def bench(tmp_path):
    rig = DeployRig(tmp_path, boards=0)
    rig.rows = [dict(r, place="hh-r%02d" % i) for i, r in enumerate(DeployRig(tmp_path, 12).rows)]
    rig.start()
    cable = CutCable()
    hb = HostBoard(os.path.join(rig.work, "cutboard"), heap=board_heap(), console=cable.board_fd, hwid="hb-cut")
    hb.start()
    rig.modems, rig.boards, rig.n = [cable], [hb], 1
    yield rig, cable, hb
    rig.close()


def _board_state(rig, hb):
    import json

    from gateway.broker import ProjectBroker
    from gateway.registry import Registry

    path = os.path.join(hb.flash_dir, "data", "identity.cfg")
    board = None
    if os.path.exists(path):
        with open(path, "rb") as f:
            board = json.loads(f.read().split(b"\n")[0])
    reg = Registry(rig.db_path, rig.master_key)
    try:
        active = {d.device_id: reg.device_key(d.device_id, d.key_id).hex() for d in reg.devices() if d.status == "active"}
    finally:
        reg.close()
    on_broker = set(ProjectBroker(rig.broker.workdir).devices())
    return board, active, on_broker


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", [
    # the write that landed unseen is the hard case: in make test; the other one costs 14 s more
    pytest.param("reply", marks=pytest.mark.skipif(not os.environ.get("FENGQIAO_LONG_TESTS"),
                                                   reason="set FENGQIAO_LONG_TESTS=1 (14 s)")),
    "request"])
def test_cable_pulled_at_every_step_then_resume(bench, mode, capsys):
    rig, cable, hb = bench
    from tools.serialconsole import SerialConsole

    registered_before = set()
    long_run = bool(os.environ.get("FENGQIAO_LONG_TESTS"))
    for k, step in enumerate(STEPS):
        if step == "identify" and not long_run:
            continue   # nothing is written before identify answers; FENGQIAO_LONG_TESTS=1 cuts there too
        row = rig.rows[k]
        plan = rig.write_plan([row], "plan-%s-%d.csv" % (mode, k))
        rig.plug(0)
        cable.arm(mode, k)
        rc = main(rig.deploy_args(plan, "--no-reboot", "--timeout-s", "0.4",
                                       "--selftest-timeout-s", "1.5"))
        out = capsys.readouterr().out
        assert cable.dead.is_set(), "the cable was not cut at %s %s" % (mode, step)
        assert rc == 1 and "FAILED" in out, out          # reported and skipped, not a traceback
        board, active, on_broker = _board_state(rig, hb)
        new = set(active) - registered_before
        # never registered without its key: a new registration is the board's very key
        for dev in new:
            assert board is not None and board["device_id"] == dev and board["key"] == active[dev], (mode, step)
        # never keyed (and let on the broker) without registration
        if board is not None and board["device_id"] not in active:
            assert "%08x" % board["device_id"] not in on_broker, (mode, step)
        # plug it back: the rerun finishes the same row, on the same board
        cable.mend()
        rig.unplug(0)
        rig.plug(0)
        assert main(rig.deploy_args(plan, "--no-reboot", "--timeout-s", "2")) == 0
        out = capsys.readouterr().out
        assert "done" in out and "FAILED" not in out, out
        board, active, on_broker = _board_state(rig, hb)
        assert board["key"] == active[board["device_id"]] and "%08x" % board["device_id"] in on_broker, (mode, step)
        assert len(set(active) - registered_before) == 1, "provisioned twice at %s %s" % (mode, step)
        registered_before = set(active)
        rig.unplug(0)
        with SerialConsole(cable.port, timeout_s=2) as con:   # a fresh board for the next step
            con.factory_reset(con.identify()["hwid"])
